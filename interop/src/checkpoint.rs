//! PyTorch's `torch.save` archive (a zip of `<name>/data.pkl` and one `<name>/data/<key>` entry per
//! storage) and the Ultralytics checkpoint inside it: the module tree of its `ema` (or `model`),
//! flattened to the state-dict names Ultralytics and the trainer share (`model.0.conv.weight`),
//! with its class names, `nc`, architecture and training image size.

use std::collections::HashMap;
use std::io::{Read, Seek};

use crate::pickle::{self, DType, Id, Node, Pickle, PickleError, TensorRef};

/// Largest `data.pkl` read (a yolov8x checkpoint's is about 1 MB).
const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Largest total of tensor bytes read from one checkpoint.
const MAX_TENSOR_BYTES: u64 = 4 << 30;
/// Deepest module nesting followed.
const MAX_DEPTH: usize = 64;
/// Most modules visited and tensors collected (a yolov8x has about 400 and 500): shared
/// references could otherwise make a small pickle's module tree exponentially large.
const MAX_MODULES: usize = 100_000;

/// Why a checkpoint was refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Not a zip, or a truncated or corrupt one.
    #[error("not a PyTorch zip archive (torch.save since 1.6): {0}")]
    Archive(String),
    /// The pickle was refused.
    #[error(transparent)]
    Pickle(#[from] PickleError),
    /// The archive is well formed but is not what it should be.
    #[error("{0}")]
    Invalid(String),
}

fn invalid<T>(m: impl Into<String>) -> Result<T, CheckpointError> {
    Err(CheckpointError::Invalid(m.into()))
}

/// A tensor read out of the archive, as float32.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: Vec<f32>,
}

/// An opened `torch.save` archive.
pub struct Archive<R> {
    zip: zip::ZipArchive<R>,
    prefix: String,
    /// The unpickled `data.pkl`.
    pub pickle: Pickle,
    storages: HashMap<String, (DType, Vec<u8>)>,
    read_bytes: u64,
    out_elements: u64,
}

impl<R: Read + Seek> Archive<R> {
    /// Opens the archive and parses its pickle (refusing disallowed names); reads no tensor yet.
    pub fn open(reader: R) -> Result<Archive<R>, CheckpointError> {
        let mut zip = zip::ZipArchive::new(reader).map_err(|e| {
            CheckpointError::Archive(format!(
                "{e}{}",
                if matches!(e, zip::result::ZipError::InvalidArchive(_)) { " (truncated or not a zip)" } else { "" }
            ))
        })?;
        let pkl: Vec<String> = zip.file_names().filter(|n| n.ends_with("data.pkl")).map(str::to_string).collect();
        let name = match pkl.as_slice() {
            [one] if one == "data.pkl" || one.matches('/').count() == 1 => one.clone(),
            [] => return invalid("the archive has no data.pkl: not a torch.save file"),
            _ => return invalid("the archive has more than one data.pkl"),
        };
        let prefix = name.trim_end_matches("data.pkl").to_string();
        let bytes = read_entry(&mut zip, &name, MAX_PICKLE_BYTES)?;
        let pickle = pickle::parse(&bytes)?;
        Ok(Archive { zip, prefix, pickle, storages: HashMap::new(), read_bytes: 0, out_elements: 0 })
    }

    /// Reads a tensor (any dtype, as float32), checking its view against its storage.
    pub fn tensor(&mut self, t: &TensorRef) -> Result<Tensor, CheckpointError> {
        let key = &t.storage.key;
        if !self.storages.contains_key(key) {
            let elem = t.storage.dtype.size() as u64;
            let want = t.storage.numel.checked_mul(elem).filter(|b| *b <= MAX_TENSOR_BYTES);
            let Some(want) = want else {
                return invalid(format!("storage {key} claims {} elements, past the limit", t.storage.numel));
            };
            if self.read_bytes + want > MAX_TENSOR_BYTES {
                return invalid(format!("the checkpoint's tensors exceed {MAX_TENSOR_BYTES} bytes"));
            }
            let name = format!("{}data/{key}", self.prefix);
            let bytes = read_entry(&mut self.zip, &name, want)?;
            if bytes.len() as u64 != want {
                return invalid(format!(
                    "storage {key} claims {} elements ({want} bytes) but the archive holds {} bytes",
                    t.storage.numel,
                    bytes.len()
                ));
            }
            self.read_bytes += want;
            self.storages.insert(key.clone(), (t.storage.dtype, bytes));
        }
        let (dtype, bytes) = &self.storages[key];
        // Two persistent ids may name one key: the bytes read for the first decide.
        if *dtype != t.storage.dtype || bytes.len() as u64 != t.storage.numel.saturating_mul(dtype.size() as u64) {
            return invalid(format!("storage {key} is named with two different types or sizes"));
        }
        let numel: u64 = t.size.iter().try_fold(1u64, |a, s| a.checked_mul(*s)).unwrap_or(u64::MAX);
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |a, (s, st)| a.checked_add(s.saturating_sub(1).checked_mul(*st)?))
            .unwrap_or(u64::MAX);
        if numel > 0 && last >= t.storage.numel {
            return invalid(format!("a tensor of shape {:?} reaches past its storage {key}", t.size));
        }
        // A zero stride repeats elements without storing them: bound what the view expands to.
        self.out_elements = self.out_elements.saturating_add(numel);
        if self.out_elements > MAX_TENSOR_BYTES / 4 {
            return invalid(format!(
                "a tensor of shape {:?} takes the checkpoint past {} elements",
                t.size,
                MAX_TENSOR_BYTES / 4
            ));
        }
        let mut data = Vec::with_capacity(numel as usize);
        let shape: Vec<usize> = t.size.iter().map(|s| *s as usize).collect();
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..numel {
            let off = t.offset as usize + idx.iter().zip(&t.stride).map(|(i, s)| i * *s as usize).sum::<usize>();
            data.push(element(*dtype, bytes, off));
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(Tensor { shape, data })
    }
}

fn element(dtype: DType, b: &[u8], i: usize) -> f32 {
    let at = |n: usize| &b[i * n..i * n + n];
    match dtype {
        DType::F32 => f32::from_le_bytes(at(4).try_into().expect("4")),
        DType::F16 => half::f16::from_le_bytes(at(2).try_into().expect("2")).to_f32(),
        DType::BF16 => half::bf16::from_le_bytes(at(2).try_into().expect("2")).to_f32(),
        DType::F64 => f64::from_le_bytes(at(8).try_into().expect("8")) as f32,
        DType::I64 => i64::from_le_bytes(at(8).try_into().expect("8")) as f32,
        DType::I32 => i32::from_le_bytes(at(4).try_into().expect("4")) as f32,
        DType::I16 => i16::from_le_bytes(at(2).try_into().expect("2")) as f32,
        DType::I8 => f32::from(b[i] as i8),
        DType::U8 | DType::Bool => f32::from(b[i]),
    }
}

/// Reads one entry whole, refusing more than `limit` bytes (a zip bomb stops there).
fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>, CheckpointError> {
    let entry = zip.by_name(name).map_err(|e| CheckpointError::Archive(format!("{name}: {e}")))?;
    if entry.size() > limit {
        return invalid(format!("{name} is {} bytes; the limit is {limit}", entry.size()));
    }
    let mut out = Vec::with_capacity(entry.size().min(64 << 20) as usize);
    entry
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| CheckpointError::Archive(format!("{name}: {e} (truncated or corrupt)")))?;
    if out.len() as u64 > limit {
        return invalid(format!("{name} is larger than {limit} bytes"));
    }
    Ok(out)
}

/// What an Ultralytics checkpoint holds.
#[derive(Debug, Clone)]
pub struct UltralyticsCheckpoint {
    /// The model's class, e.g. `ultralytics.nn.tasks.DetectionModel`.
    pub class: String,
    /// `detect`, `segment`, `classify`, `pose` or `obb`.
    pub task: String,
    /// Architecture name from the model's YAML, e.g. `yolov8n` or `yolov8n-cls` (the file stem
    /// with its scale letter), when the checkpoint records it.
    pub architecture: Option<String>,
    /// Class names, index = class id.
    pub names: Vec<String>,
    /// Training image size (`train_args.imgsz`), when recorded.
    pub imgsz: Option<u32>,
    /// The Ultralytics version that wrote it.
    pub version: Option<String>,
    /// The model's YAML, as JSON.
    pub yaml: serde_json::Value,
    /// Parameters and persistent buffers, by state-dict name, in module order.
    pub tensors: Vec<(String, Tensor)>,
}

/// Reads an Ultralytics checkpoint: the `ema` model when present, else `model`.
pub fn read_ultralytics<R: Read + Seek>(reader: R) -> Result<UltralyticsCheckpoint, CheckpointError> {
    let mut archive = Archive::open(reader)?;
    let p = &archive.pickle;
    let root = p.root;
    if !matches!(p.get(root), Node::Dict(_)) {
        return invalid("the checkpoint is not a dict: not an Ultralytics checkpoint (expected `model` or `ema`)");
    }
    let pick = |k: &str| p.dict_get(root, k).filter(|id| matches!(p.get(*id), Node::Object { .. }));
    let Some(model) = pick("ema").or_else(|| pick("model")) else {
        return invalid("the checkpoint holds no `ema` or `model` module: not an Ultralytics checkpoint");
    };
    let Node::Object { class, state, .. } = p.get(model) else { unreachable!("picked an object") };
    let class = class.to_string();
    let task = match class.rsplit('.').next().unwrap_or_default() {
        "DetectionModel" => "detect",
        "SegmentationModel" => "segment",
        "ClassificationModel" => "classify",
        "PoseModel" => "pose",
        "OBBModel" => "obb",
        other => {
            return invalid(format!(
                "the checkpoint's model is a {other}; Ocellus reads Ultralytics' YOLO task models"
            ));
        }
    }
    .to_string();
    let attrs = state.and_then(|s| module_dict(p, s));
    let Some(attrs) = attrs else { return invalid("the model has no state") };
    let yaml = p.dict_get(attrs, "yaml").map(|y| p.to_json(y, 16)).unwrap_or_default();
    let names = p
        .dict_get(attrs, "names")
        .map(|n| names(p, n))
        .transpose()?
        .or_else(|| {
            let nc = yaml.get("nc").and_then(serde_json::Value::as_u64)?;
            Some((0..nc).map(|i| format!("class{i}")).collect())
        })
        .unwrap_or_default();
    let train_args = p.dict_get(root, "train_args").map(|a| p.to_json(a, 4)).unwrap_or_default();
    let imgsz = train_args.get("imgsz").and_then(serde_json::Value::as_u64).and_then(|v| u32::try_from(v).ok());
    let version = p.dict_get(root, "version").and_then(|v| p.str(v)).map(str::to_string);
    let architecture = architecture(&yaml);

    let mut refs = vec![];
    collect(p, attrs, "", &mut refs, 0, &mut 0)?;
    let mut tensors = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        let t = archive.tensor(&t)?;
        tensors.push((name, t));
    }
    Ok(UltralyticsCheckpoint { class, task, architecture, names, imgsz, version, yaml, tensors })
}

/// A module's attribute dict: its `BUILD` state (or the dict of a `(dict, slots)` pair).
fn module_dict(p: &Pickle, state: Id) -> Option<Id> {
    match p.get(state) {
        Node::Dict(_) => Some(state),
        Node::Tuple(t) => t.iter().copied().find(|i| matches!(p.get(*i), Node::Dict(_))),
        _ => None,
    }
}

/// Class names from `{0: 'a', 1: 'b'}` (or a list), dense from 0.
fn names(p: &Pickle, id: Id) -> Result<Vec<String>, CheckpointError> {
    match p.get(id) {
        Node::List(v) | Node::Tuple(v) => v
            .iter()
            .map(|i| p.str(*i).map(str::to_string).ok_or(()))
            .collect::<Result<_, _>>()
            .or_else(|()| invalid("class names must be strings")),
        Node::Dict(items) => {
            let mut out = vec![None; items.len()];
            for (k, v) in items {
                let (Some(i), Some(n)) = (p.int(*k), p.str(*v)) else {
                    return invalid("class names must map integers to strings");
                };
                match usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
                    Some(slot) => *slot = Some(n.to_string()),
                    None => return invalid(format!("class ids must run from 0 to {}", items.len() - 1)),
                }
            }
            out.into_iter().collect::<Option<Vec<_>>>().map_or_else(|| invalid("class ids must be distinct"), Ok)
        }
        _ => invalid("class names must be a dict or a list"),
    }
}

/// `yolov8n` from a YAML whose `yaml_file` is `yolov8n.yaml`, or `yolov8.yaml` with `scale: n`.
fn architecture(yaml: &serde_json::Value) -> Option<String> {
    let file = yaml.get("yaml_file")?.as_str()?;
    let stem = file.rsplit('/').next()?.trim_end_matches(".yaml").trim_end_matches(".yml");
    let scale = yaml.get("scale").and_then(serde_json::Value::as_str);
    let (family, suffix) = match stem.split_once('-') {
        Some((f, s)) => (f, format!("-{s}")),
        None => (stem, String::new()),
    };
    let has_letter = family.chars().last().is_some_and(|c| c.is_ascii_alphabetic());
    Some(match (has_letter, scale) {
        (false, Some(s)) => format!("{family}{s}{suffix}"),
        _ => stem.to_string(),
    })
}

/// Walks `_parameters`, `_buffers` (less `_non_persistent_buffers_set`) and `_modules`, as
/// `Module.state_dict` does.
fn collect(
    p: &Pickle,
    attrs: Id,
    prefix: &str,
    out: &mut Vec<(String, TensorRef)>,
    depth: usize,
    visits: &mut usize,
) -> Result<(), CheckpointError> {
    if depth > MAX_DEPTH {
        return invalid("modules nest too deep (a cycle?)");
    }
    *visits += 1;
    if *visits > MAX_MODULES || out.len() > MAX_MODULES {
        return invalid(format!("more than {MAX_MODULES} modules or tensors (shared references?)"));
    }
    let skip: Vec<&str> = match p.dict_get(attrs, "_non_persistent_buffers_set").map(|s| p.get(s)) {
        Some(Node::Set(v)) => v.iter().filter_map(|i| p.str(*i)).collect(),
        _ => vec![],
    };
    for field in ["_parameters", "_buffers"] {
        let Some(Node::Dict(items)) = p.dict_get(attrs, field).map(|d| p.get(d)) else { continue };
        for (k, v) in items {
            let Some(name) = p.str(*k) else { return invalid(format!("a non-string key in {prefix}{field}")) };
            if field == "_buffers" && skip.contains(&name) {
                continue;
            }
            match p.get(*v) {
                Node::Tensor(t) => out.push((format!("{prefix}{name}"), t.clone())),
                Node::None => {}
                _ => return invalid(format!("{prefix}{name} is not a tensor")),
            }
        }
    }
    if let Some(Node::Dict(items)) = p.dict_get(attrs, "_modules").map(|d| p.get(d)) {
        for (k, v) in items {
            let Some(name) = p.str(*k) else { return invalid(format!("a non-string module name under {prefix}")) };
            match p.get(*v) {
                Node::Object { state: Some(s), .. } => {
                    let Some(child) = module_dict(p, *s) else {
                        return invalid(format!("module {prefix}{name} has no state"));
                    };
                    collect(p, child, &format!("{prefix}{name}."), out, depth + 1, visits)?;
                }
                Node::None => {}
                _ => return invalid(format!("{prefix}{name} is not a module")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    /// A torch.save-like archive of a pickle and storages.
    pub(crate) fn archive(pkl: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        w.start_file("m/data.pkl", opts).expect("zip");
        w.write_all(pkl).expect("zip");
        for (k, b) in storages {
            w.start_file(format!("m/data/{k}"), opts).expect("zip");
            w.write_all(b).expect("zip");
        }
        w.finish().expect("zip").into_inner()
    }

    /// `{'t': _rebuild_tensor_v2(('storage', torch.FloatStorage, '0', 'cpu', NUMEL), 0, (2, 2), (1, 2), False, OrderedDict())}`.
    fn tensor_pickle(numel: u8) -> Vec<u8> {
        let mut s = b"\x80\x02}X\x01\x00\x00\x00tctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK".to_vec();
        s.push(numel);
        s.extend_from_slice(b"tQK\x00K\x02K\x02\x86K\x01K\x02\x86\x89ccollections\nOrderedDict\n)RtRs.");
        s
    }

    #[test]
    fn reads_a_strided_tensor() {
        let data: Vec<u8> = [1f32, 2., 3., 4.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let zip = archive(&tensor_pickle(4), &[("0", &data)]);
        let mut a = Archive::open(Cursor::new(zip)).expect("open");
        let id = a.pickle.dict_get(a.pickle.root, "t").expect("t");
        let Node::Tensor(t) = a.pickle.get(id).clone() else { panic!("not a tensor") };
        // Stride (1, 2): the transpose of [[1, 2], [3, 4]].
        assert_eq!(a.tensor(&t).expect("tensor"), Tensor { shape: vec![2, 2], data: vec![1., 3., 2., 4.] });
    }

    #[test]
    fn refuses_storages_that_lie_about_their_size() {
        // Claims 200 floats; the entry holds 4.
        let data: Vec<u8> = [1f32, 2., 3., 4.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let zip = archive(&tensor_pickle(200), &[("0", &data)]);
        let mut a = Archive::open(Cursor::new(zip)).expect("open");
        let id = a.pickle.dict_get(a.pickle.root, "t").expect("t");
        let Node::Tensor(t) = a.pickle.get(id).clone() else { panic!("not a tensor") };
        let e = a.tensor(&t).expect_err("refused").to_string();
        assert!(e.contains("claims 200 elements"), "{e}");
        // Claims 2 floats, but the view needs 4.
        let zip = archive(&tensor_pickle(2), &[("0", &data[..8])]);
        let mut a = Archive::open(Cursor::new(zip)).expect("open");
        let e = a.tensor(&t_of(&a)).expect_err("refused").to_string();
        assert!(e.contains("reaches past its storage"), "{e}");
    }

    #[test]
    fn refuses_views_that_expand_past_the_limit() {
        // One stored float viewed as 2^40 elements through a zero stride.
        let data = 1f32.to_le_bytes();
        let zip = archive(&tensor_pickle(1), &[("0", &data)]);
        let mut a = Archive::open(Cursor::new(zip)).expect("open");
        let t = TensorRef { size: vec![1 << 20, 1 << 20], stride: vec![0, 0], ..t_of(&a) };
        let e = a.tensor(&t).expect_err("refused").to_string();
        assert!(e.contains("takes the checkpoint past"), "{e}");
    }

    fn t_of(a: &Archive<Cursor<Vec<u8>>>) -> TensorRef {
        let id = a.pickle.dict_get(a.pickle.root, "t").expect("t");
        match a.pickle.get(id) {
            Node::Tensor(t) => t.clone(),
            _ => panic!("not a tensor"),
        }
    }

    #[test]
    fn refuses_truncated_and_foreign_archives() {
        let data: Vec<u8> = [1f32, 2., 3., 4.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let zip = archive(&tensor_pickle(4), &[("0", &data)]);
        for cut in [10, zip.len() / 2, zip.len() - 10] {
            let e = Archive::open(Cursor::new(zip[..cut].to_vec())).err().expect("refused").to_string();
            assert!(e.contains("not a PyTorch zip archive"), "{e}");
        }
        let e = Archive::open(Cursor::new(b"\x80\x02}q\x00.".to_vec())).err().expect("refused").to_string();
        assert!(e.contains("not a PyTorch zip archive"), "{e}");
        let e = read_ultralytics(Cursor::new(zip)).expect_err("refused").to_string();
        assert!(e.contains("no `ema` or `model`"), "{e}");
    }

    #[test]
    fn architecture_from_yaml() {
        let a = |v| architecture(&v);
        assert_eq!(a(serde_json::json!({"yaml_file": "yolov8n.yaml"})), Some("yolov8n".into()));
        assert_eq!(a(serde_json::json!({"yaml_file": "yolov8.yaml", "scale": "s"})), Some("yolov8s".into()));
        assert_eq!(a(serde_json::json!({"yaml_file": "yolov8-cls.yaml", "scale": "n"})), Some("yolov8n-cls".into()));
        assert_eq!(a(serde_json::json!({"yaml_file": "yolo11m.yaml"})), Some("yolo11m".into()));
        assert_eq!(a(serde_json::json!({})), None);
    }
}
