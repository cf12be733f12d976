//! The metadata Ultralytics embeds in its exports, so that an export serves without an Ocellus
//! sidecar: ONNX `metadata_props` (values are Python literals, `str()` of each) and TorchScript's
//! `extra/config.txt` (JSON). Also the ONNX graph's declared output shapes, to check the
//! metadata against the model before serving it.

use std::io::{Read, Seek};

use serde_json::Value;

use crate::pylit;

/// What an Ultralytics export says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportMetadata {
    /// `detect`, `segment`, `classify`, `pose` or `obb`.
    pub task: String,
    /// Class names, index = class id.
    pub names: Vec<String>,
    /// Input height and width.
    pub imgsz: (u32, u32),
    /// Largest stride.
    pub stride: u32,
    /// Export batch size (fixed unless `dynamic`).
    pub batch: u32,
    /// Whether the batch (and image) dimensions are dynamic.
    pub dynamic: bool,
    /// Half-precision export.
    pub half: bool,
    /// NMS-free output `(batch, max_det, 6)`: `end2end` (YOLO26, YOLOv10) or exported with `nms=True`.
    pub end2end: bool,
    /// Rows of the end-to-end output (`args.max_det`, default 300).
    pub max_det: u32,
    /// Ultralytics version that exported it.
    pub version: String,
    /// Architecture from the description (`Ultralytics YOLOv8n model trained on …` → `yolov8n`).
    pub architecture: String,
}

/// Ultralytics' default `max_det`.
const DEFAULT_MAX_DET: u32 = 300;
/// Largest input side served.
const MAX_IMGSZ: u32 = 8192;
/// Most rows of an end-to-end output.
const MAX_ROWS: u32 = 10_000;
/// Most classes.
const MAX_CLASSES: usize = 100_000;

impl ExportMetadata {
    /// Reads the fields from ONNX `metadata_props` pairs (Python literals as strings).
    pub fn from_onnx_props(props: &[(String, String)]) -> Result<ExportMetadata, String> {
        let mut m = serde_json::Map::new();
        for (k, v) in props {
            let value = match k.as_str() {
                "imgsz" | "names" | "args" | "end2end" | "kpt_shape" | "stride" | "batch" | "channels" => {
                    pylit::parse(v).map_err(|e| format!("metadata {k:?} = {v:?}: {e}"))?
                }
                _ => Value::String(v.clone()),
            };
            m.insert(k.clone(), value);
        }
        Self::from_json(&Value::Object(m))
    }

    /// Reads the fields from Ultralytics' metadata as JSON (TorchScript's `config.txt`).
    pub fn from_json(v: &Value) -> Result<ExportMetadata, String> {
        if v.get("author").and_then(Value::as_str) != Some("Ultralytics") || v.get("names").is_none() {
            return Err("no Ultralytics metadata (author and names)".into());
        }
        let uint = |v: &Value| v.as_u64().and_then(|x| u32::try_from(x).ok());
        let field = |k: &str| v.get(k).ok_or_else(|| format!("the Ultralytics metadata lacks {k:?}"));
        let task = field("task")?.as_str().ok_or("metadata task is not a string")?.to_string();
        let names = match field("names")? {
            Value::Object(m) => {
                let mut out = vec![None; m.len()];
                for (k, n) in m {
                    let i: usize = k.parse().map_err(|_| format!("class id {k:?} is not an integer"))?;
                    let slot = out.get_mut(i).ok_or_else(|| format!("class ids must run from 0 to {}", m.len() - 1))?;
                    *slot = Some(n.as_str().ok_or_else(|| format!("class {i} has no string name"))?.to_string());
                }
                out.into_iter().collect::<Option<Vec<_>>>().ok_or("class ids must be distinct")?
            }
            Value::Array(a) => a
                .iter()
                .map(|n| n.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or("class names must be strings")?,
            _ => return Err("metadata names must be a dict or a list".into()),
        };
        let imgsz = match field("imgsz")? {
            Value::Array(a) if a.len() == 2 => match (uint(&a[0]), uint(&a[1])) {
                (Some(h), Some(w)) => (h, w),
                _ => return Err(format!("metadata imgsz {a:?} is not two sizes")),
            },
            n => uint(n).map(|s| (s, s)).ok_or_else(|| format!("metadata imgsz {n} is not a size"))?,
        };
        let args = v.get("args").cloned().unwrap_or(Value::Null);
        let flag = |v: Option<&Value>| v.and_then(Value::as_bool).unwrap_or(false);
        let end2end = flag(v.get("end2end")) || flag(args.get("nms"));
        let max_det = args.get("max_det").and_then(uint).unwrap_or(DEFAULT_MAX_DET);
        let description = v.get("description").and_then(Value::as_str).unwrap_or_default();
        let architecture = description
            .strip_prefix("Ultralytics ")
            .and_then(|d| d.split(" model").next())
            .filter(|a| !a.is_empty() && !a.contains(' '))
            .map_or_else(|| format!("ultralytics-{task}"), str::to_lowercase);
        Ok(ExportMetadata {
            task,
            names,
            imgsz,
            stride: v.get("stride").and_then(uint).unwrap_or(32),
            batch: v.get("batch").and_then(uint).unwrap_or(1),
            dynamic: flag(args.get("dynamic")),
            half: flag(args.get("half")),
            end2end,
            max_det,
            version: v.get("version").and_then(Value::as_str).unwrap_or_default().to_string(),
            architecture,
        })
    }

    /// The output shape per image the metadata implies: `[4 + nc, anchors]` (raw, NMS needed),
    /// `[max_det, 6]` (end-to-end) or `[nc]` (classifier); an error for what is not served.
    pub fn output_shape(&self) -> Result<Vec<i64>, String> {
        let nc = self.names.len() as i64;
        let (h, w) = self.imgsz;
        match self.task.as_str() {
            "detect" if self.end2end => Ok(vec![i64::from(self.max_det), 6]),
            "detect" => {
                let anchors: u64 = [8u64, 16, 32].iter().map(|s| (u64::from(h) / s) * (u64::from(w) / s)).sum();
                Ok(vec![4 + nc, anchors as i64])
            }
            "classify" => Ok(vec![nc]),
            other => Err(format!("{other} models are not served yet; Ocellus serves detect and classify exports")),
        }
    }

    /// Checks what the predictor relies on: a square input that is a multiple of the stride 32,
    /// class names, three input channels, and (when the graph declares it) the output shape.
    pub fn check(&self, declared_output: Option<&[Option<i64>]>) -> Result<(), String> {
        let (h, w) = self.imgsz;
        if self.names.is_empty() {
            return Err("the metadata has no class names".into());
        }
        if h > MAX_IMGSZ || w > MAX_IMGSZ || self.max_det > MAX_ROWS || self.names.len() > MAX_CLASSES {
            return Err(format!(
                "imgsz {h}x{w}, max_det {} or {} classes is past what is served ({MAX_IMGSZ} px, {MAX_ROWS} rows, {MAX_CLASSES} classes)",
                self.max_det,
                self.names.len()
            ));
        }
        if h != w || h == 0 || !h.is_multiple_of(32) {
            return Err(format!(
                "imgsz {h}x{w}: Ocellus serves square inputs whose side is a multiple of 32; re-export with imgsz={}",
                u64::from(h.max(w)).div_ceil(32) * 32
            ));
        }
        if self.task == "detect" && self.stride != 32 {
            return Err(format!("stride {}: Ocellus decodes the strides 8, 16 and 32 of YOLO detectors", self.stride));
        }
        let want = self.output_shape()?;
        if let Some(dims) = declared_output {
            // The graph's output is [batch, ...]; a dynamic dimension matches anything.
            let per_image = dims.get(1..).unwrap_or_default();
            let ok =
                per_image.len() == want.len() && per_image.iter().zip(&want).all(|(d, w)| d.is_none_or(|d| d == *w));
            if !ok {
                let shown: Vec<String> = dims.iter().map(|d| d.map_or("?".into(), |d| d.to_string())).collect();
                return Err(format!(
                    "the model's output is [{}] but its metadata ({} classes, imgsz {h}, end2end {}) implies [batch, {}]",
                    shown.join(", "),
                    self.names.len(),
                    self.end2end,
                    want.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// `metadata_props` as Ultralytics 8.4 writes them for a `yolov8n` detector, in its order, with
/// the given `imgsz`, `names` and `args` literals: a fixture for tests of what reads them.
#[doc(hidden)]
pub fn example_props(imgsz: &str, names: &str, args: &str) -> Vec<(String, String)> {
    [
        ("description", "Ultralytics YOLOv8n model trained on shapes.yaml"),
        ("author", "Ultralytics"),
        ("version", "8.4.190"),
        ("stride", "32"),
        ("task", "detect"),
        ("batch", "1"),
        ("imgsz", imgsz),
        ("names", names),
        ("args", args),
        ("channels", "3"),
        ("end2end", "False"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// What an ONNX model declares: `metadata_props` and its graph's inputs and outputs.
#[derive(Debug, Default, PartialEq)]
pub struct OnnxHeader {
    /// `metadata_props` key/value pairs.
    pub props: Vec<(String, String)>,
    /// Graph inputs (initializers listed as inputs by old exporters included).
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfo>,
}

/// A graph input or output.
#[derive(Debug, Default, PartialEq)]
pub struct ValueInfo {
    /// Name.
    pub name: String,
    /// ONNX element type (1 float32, 10 float16).
    pub elem_type: u64,
    /// Dimensions; `None` for a symbolic one.
    pub dims: Vec<Option<i64>>,
}

/// ONNX's float16 element type.
pub const FLOAT16: u64 = 10;

/// Reads an ONNX file's metadata and output shapes by walking its protobuf (weights skipped).
pub fn onnx_header(bytes: &[u8]) -> Result<OnnxHeader, String> {
    let mut h = OnnxHeader::default();
    for f in fields(bytes)? {
        match f {
            (14, Field::Bytes(entry)) => {
                let (mut k, mut v) = (String::new(), String::new());
                for g in fields(entry)? {
                    match g {
                        (1, Field::Bytes(b)) => k = String::from_utf8_lossy(b).into_owned(),
                        (2, Field::Bytes(b)) => v = String::from_utf8_lossy(b).into_owned(),
                        _ => {}
                    }
                }
                h.props.push((k, v));
            }
            (7, Field::Bytes(graph)) => {
                for g in fields(graph)? {
                    match g {
                        (11, Field::Bytes(vi)) => h.inputs.push(value_info(vi)?),
                        (12, Field::Bytes(vi)) => h.outputs.push(value_info(vi)?),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(h)
}

/// `ValueInfoProto`: name (1), type (2) → tensor_type (1) → elem_type (1), shape (2) → dim (1) →
/// value (1) | param (2).
fn value_info(b: &[u8]) -> Result<ValueInfo, String> {
    let mut vi = ValueInfo::default();
    fn sub(b: &[u8], n: u64) -> Result<Vec<&[u8]>, String> {
        Ok(fields(b)?
            .into_iter()
            .filter_map(|f| if let (k, Field::Bytes(x)) = f { (k == n).then_some(x) } else { None })
            .collect())
    }
    for f in fields(b)? {
        match f {
            (1, Field::Bytes(n)) => vi.name = String::from_utf8_lossy(n).into_owned(),
            (2, Field::Bytes(t)) => {
                for tensor in sub(t, 1)? {
                    for f in fields(tensor)? {
                        if let (1, Field::Varint(e)) = f {
                            vi.elem_type = e;
                        }
                    }
                    for shape in sub(tensor, 2)? {
                        for dim in sub(shape, 1)? {
                            let v = fields(dim)?.into_iter().find_map(|f| match f {
                                (1, Field::Varint(v)) => Some(v as i64),
                                _ => None,
                            });
                            vi.dims.push(v);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(vi)
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The top-level fields of one protobuf message.
fn fields(mut b: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    fn varint(b: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&x, rest) = b.split_first().ok_or("truncated protobuf")?;
            *b = rest;
            v |= u64::from(x & 0x7f) << (7 * i);
            if x & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("bad varint".into())
    }
    let mut out = vec![];
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let f = match key & 7 {
            0 => Field::Varint(varint(&mut b)?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                b = b.get(n..).ok_or("truncated protobuf")?;
                Field::Fixed
            }
            2 => {
                let n = usize::try_from(varint(&mut b)?).map_err(|e| e.to_string())?;
                let (x, rest) = (b.get(..n).ok_or("truncated protobuf")?, &b[n..]);
                b = rest;
                Field::Bytes(x)
            }
            w => return Err(format!("protobuf wire type {w}: not an ONNX model")),
        };
        out.push((key >> 3, f));
    }
    Ok(out)
}

/// TorchScript's `extra/config.txt` (Ultralytics' metadata as JSON), if the archive has one.
pub fn torchscript_config<R: Read + Seek>(reader: R) -> Result<Option<Value>, String> {
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| format!("not a TorchScript archive: {e}"))?;
    let Some(name) =
        zip.file_names().find(|n| n.ends_with("/extra/config.txt") && n.matches('/').count() == 2).map(str::to_string)
    else {
        return Ok(None);
    };
    let entry = zip.by_name(&name).map_err(|e| e.to_string())?;
    let mut text = String::new();
    entry.take(1 << 20).read_to_string(&mut text).map_err(|e| format!("{name}: {e}"))?;
    serde_json::from_str(&text).map(Some).map_err(|e| format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(nms: bool, imgsz: &str) -> Vec<(String, String)> {
        let args = if nms {
            "{'batch': 1, 'half': False, 'nms': True, 'max_det': 100}"
        } else {
            "{'batch': 1, 'half': False, 'dynamic': True}"
        };
        example_props(imgsz, "{0: 'circle', 1: \"it's\", 2: 'triangle'}", args)
    }

    #[test]
    fn reads_onnx_props() {
        let m = ExportMetadata::from_onnx_props(&props(false, "[320, 320]")).expect("metadata");
        assert_eq!(m.names, ["circle", "it's", "triangle"]);
        assert_eq!((m.imgsz, m.end2end, m.dynamic, m.architecture.as_str()), ((320, 320), false, true, "yolov8n"));
        assert_eq!(m.output_shape().expect("ok"), vec![7, 2100]);
        m.check(Some(&[None, Some(7), Some(2100)])).expect("consistent");
        let e = m.check(Some(&[Some(1), Some(84), Some(2100)])).expect_err("refused");
        assert!(e.contains("[1, 84, 2100]") && e.contains("[batch, 7, 2100]"), "{e}");

        let m = ExportMetadata::from_onnx_props(&props(true, "[320, 320]")).expect("metadata");
        assert!(m.end2end);
        assert_eq!(m.output_shape().expect("ok"), vec![100, 6]);
        m.check(Some(&[Some(1), Some(100), Some(6)])).expect("consistent");

        let m = ExportMetadata::from_onnx_props(&props(false, "[320, 256]")).expect("metadata");
        assert!(m.check(None).expect_err("refused").contains("square"));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let mut p = props(false, "[320, 320]");
        p.retain(|(k, _)| k != "task");
        assert!(ExportMetadata::from_onnx_props(&p).expect_err("refused").contains("task"));
        let mut p = props(false, "[320, 320]");
        p[7].1 = "{0: 'a', 5: 'b'}".into();
        assert!(ExportMetadata::from_onnx_props(&p).expect_err("refused").contains("class ids"));
        let mut p = props(false, "[320, 320]");
        p[6].1 = "__import__('os')".into();
        assert!(ExportMetadata::from_onnx_props(&p).expect_err("refused").contains("imgsz"));
        let mut p = props(false, "[320, 320]");
        p[4].1 = "pose".into();
        let m = ExportMetadata::from_onnx_props(&p).expect("parses");
        assert!(m.check(None).expect_err("refused").contains("pose models are not served yet"));
        assert!(
            ExportMetadata::from_json(&serde_json::json!({"names": {}}))
                .expect_err("refused")
                .contains("no Ultralytics metadata")
        );
    }

    #[test]
    fn walks_onnx_protobuf() {
        // ModelProto { ir_version: 8, graph { output { name: "output0", type { tensor_type { shape { dim { dim_param: "batch" } dim { dim_value: 7 } } } } } }, metadata_props { key: "task", value: "detect" } }
        fn ld(field: u8, body: &[u8]) -> Vec<u8> {
            let mut v = vec![(field << 3) | 2, body.len() as u8];
            v.extend_from_slice(body);
            v
        }
        let dims = [ld(1, &ld(2, b"batch")), ld(1, &[0x08, 7])].concat();
        let vi = [ld(1, b"output0"), ld(2, &ld(1, &[vec![0x08, 1], ld(2, &dims)].concat()))].concat();
        let model = [vec![0x08, 8], ld(7, &ld(12, &vi)), ld(14, &[ld(1, b"task"), ld(2, b"detect")].concat())].concat();
        let h = onnx_header(&model).expect("header");
        assert_eq!(h.props, vec![("task".to_string(), "detect".to_string())]);
        assert_eq!(h.outputs, vec![ValueInfo { name: "output0".into(), elem_type: 1, dims: vec![None, Some(7)] }]);
        assert!(onnx_header(&model[..model.len() - 3]).is_err());
        assert!(onnx_header(b"\x0fnot onnx").is_err());
    }
}
