//! Layout detection: Ultralytics YOLO (`data.yaml`, `images/`, `labels/`), COCO JSON, or
//! classification folders (`[split/]class/image`). Produces the items to validate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::coco;
use crate::error::{IngestError, ItemError, ItemErrorKind};
use crate::image_check::is_image_path;
use crate::labels::Annotation;
use crate::split::Split;
use crate::task::Task;

/// Requested format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatRequest {
    /// Detect.
    Auto,
    /// Ultralytics YOLO.
    Yolo,
    /// COCO JSON.
    Coco,
    /// Classification folders.
    Folders,
}

/// Detected format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Ultralytics YOLO.
    Yolo,
    /// COCO JSON.
    Coco,
    /// Classification folders.
    Folders,
}

impl Format {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Yolo => "yolo",
            Format::Coco => "coco",
            Format::Folders => "folders",
        }
    }
}

/// Where an item's labels come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    /// A YOLO label file (none: a background image).
    YoloFile(Option<PathBuf>),
    /// Already converted (COCO), with the size the annotation file declared.
    Parsed { anns: Vec<Annotation>, declared: (f64, f64) },
    /// Class index (folders).
    Class(usize),
}

/// One image to validate.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Path relative to the dataset root, for reports.
    pub rel: String,
    /// Absolute path.
    pub path: PathBuf,
    /// Split from the source, if it has one.
    pub split: Option<Split>,
    /// Labels.
    pub labels: Labels,
}

/// The detected dataset.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Format.
    pub format: Format,
    /// Class names in index order.
    pub class_names: Vec<String>,
    /// Keypoint shape (pose).
    pub kpt_shape: Option<(usize, usize)>,
    /// Items.
    pub items: Vec<Item>,
    /// Problems found while reading the layout (e.g. labels without images).
    pub errors: Vec<ItemError>,
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "__MACOSX" {
                continue;
            }
            // symlink_metadata: links are never followed.
            match e.path().symlink_metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) if m.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).to_string_lossy().replace('\\', "/")
}

/// Descends through single-directory wrappers (`dataset.zip` containing `dataset/`).
pub fn dataset_root(dir: &Path) -> PathBuf {
    let mut root = dir.to_path_buf();
    loop {
        let entries: Vec<_> = std::fs::read_dir(&root)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.') && e.file_name() != "__MACOSX")
                    .collect()
            })
            .unwrap_or_default();
        if entries.len() == 1 && entries[0].path().symlink_metadata().is_ok_and(|m| m.is_dir()) {
            root = entries[0].path();
        } else {
            return root;
        }
    }
}

fn split_of(rel_path: &str) -> Option<Split> {
    rel_path.split('/').find_map(Split::from_name)
}

/// What a data.yaml gives: class names and the keypoint shape.
type DataYaml = (Vec<String>, Option<(usize, usize)>);

/// Reads `names` (list or index map) and `kpt_shape` from a data.yaml.
fn read_data_yaml(path: &Path) -> Result<DataYaml, IngestError> {
    let text = std::fs::read_to_string(path)?;
    let v: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| IngestError::Layout(format!("{}: {e}", path.display())))?;
    let names = match v.get("names") {
        Some(serde_yaml::Value::Sequence(s)) => {
            s.iter().map(|n| n.as_str().map(String::from).unwrap_or_else(|| format!("{n:?}"))).collect()
        }
        Some(serde_yaml::Value::Mapping(m)) => {
            let mut pairs: Vec<(u64, String)> = Vec::new();
            for (k, n) in m {
                let idx = k
                    .as_u64()
                    .or_else(|| k.as_str()?.parse().ok())
                    .ok_or_else(|| IngestError::Layout(format!("data.yaml names key {k:?} is not an index")))?;
                pairs.push((idx, n.as_str().unwrap_or_default().to_string()));
            }
            pairs.sort();
            if pairs.iter().enumerate().any(|(i, (k, _))| *k != i as u64) {
                return Err(IngestError::Layout("data.yaml names must be indexed 0..n without gaps".into()));
            }
            pairs.into_iter().map(|(_, n)| n).collect()
        }
        _ => return Err(IngestError::Layout(format!("{} has no `names`", path.display()))),
    };
    let kpt = v
        .get("kpt_shape")
        .and_then(|k| k.as_sequence())
        .and_then(|s| Some((s.first()?.as_u64()? as usize, s.get(1)?.as_u64()? as usize)));
    Ok((names, kpt))
}

/// Detects the layout of the dataset at `dir`.
pub fn detect(dir: &Path, request: FormatRequest, task: Task) -> Result<Layout, IngestError> {
    let root = dataset_root(dir);
    let files = walk(&root);
    // The first YAML with class names is the dataset's data.yaml; it is parsed once.
    let yaml = files
        .iter()
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
            n.ends_with(".yaml") || n.ends_with(".yml")
        })
        .find_map(|p| read_data_yaml(p).ok());
    let coco_files: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| {
            std::fs::read(p).ok().is_some_and(|b| {
                let head = String::from_utf8_lossy(&b[..b.len().min(1 << 20)]).into_owned();
                head.contains("\"images\"") && head.contains("\"categories\"")
            })
        })
        .collect();
    let has_labels_dir = files.iter().any(|p| rel(&root, p).split('/').any(|c| c == "labels"));
    let format = match request {
        FormatRequest::Yolo => Format::Yolo,
        FormatRequest::Coco => Format::Coco,
        FormatRequest::Folders => Format::Folders,
        FormatRequest::Auto if task == Task::Classify => Format::Folders,
        FormatRequest::Auto if yaml.is_some() || has_labels_dir => Format::Yolo,
        FormatRequest::Auto if !coco_files.is_empty() => Format::Coco,
        FormatRequest::Auto => {
            return Err(IngestError::Layout(
                "found neither a YOLO layout (data.yaml, images/, labels/), COCO JSON, nor class folders for a classify dataset".into(),
            ));
        }
    };
    match format {
        Format::Yolo => yolo(&root, &files, yaml),
        Format::Coco => coco_layout(&root, &files, &coco_files, task),
        Format::Folders => folders(&root, &files),
    }
}

fn yolo(root: &Path, files: &[PathBuf], data_yaml: Option<DataYaml>) -> Result<Layout, IngestError> {
    let (class_names, kpt_shape) = data_yaml.unwrap_or_default();
    let label_files: BTreeSet<PathBuf> =
        files.iter().filter(|p| p.extension().is_some_and(|e| e == "txt")).cloned().collect();
    let mut used = BTreeSet::new();
    let mut items = Vec::new();
    for p in files.iter().filter(|p| is_image_path(p)) {
        let r = rel(root, p);
        // Ultralytics: the label of .../images/x.jpg is .../labels/x.txt.
        let comps: Vec<&str> = r.split('/').collect();
        let label = comps.iter().rposition(|c| *c == "images").map(|i| {
            let mut c: Vec<String> = comps.iter().map(|s| s.to_string()).collect();
            c[i] = "labels".into();
            let last = c.len() - 1;
            let stem = Path::new(&c[last]).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            c[last] = format!("{stem}.txt");
            root.join(c.join("/"))
        });
        let label = label.filter(|l| label_files.contains(l));
        if let Some(l) = &label {
            used.insert(l.clone());
        }
        items.push(Item { rel: r.clone(), path: p.clone(), split: split_of(&r), labels: Labels::YoloFile(label) });
    }
    let errors = label_files
        .iter()
        .filter(|l| !used.contains(*l) && rel(root, l).split('/').any(|c| c == "labels"))
        .map(|l| ItemError {
            file: rel(root, l),
            kind: ItemErrorKind::MissingImage,
            detail: "label file has no matching image".into(),
        })
        .collect();
    if items.is_empty() {
        return Err(IngestError::Layout("YOLO layout without images".into()));
    }
    Ok(Layout { format: Format::Yolo, class_names, kpt_shape, items, errors })
}

fn coco_layout(root: &Path, files: &[PathBuf], coco_files: &[&PathBuf], task: Task) -> Result<Layout, IngestError> {
    if coco_files.is_empty() {
        return Err(IngestError::Layout("no COCO annotation file (JSON with images, annotations, categories)".into()));
    }
    let by_name: BTreeMap<String, Vec<&PathBuf>> =
        files.iter().filter(|p| is_image_path(p)).fold(BTreeMap::new(), |mut m, p| {
            m.entry(p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()).or_default().push(p);
            m
        });
    let mut class_names: Option<Vec<String>> = None;
    let mut items = Vec::new();
    let mut errors = Vec::new();
    for jf in coco_files {
        let file: coco::CocoFile = serde_json::from_slice(&std::fs::read(jf)?)
            .map_err(|e| IngestError::Layout(format!("{}: {e}", rel(root, jf))))?;
        let names = coco::class_names(&file);
        match &class_names {
            None => class_names = Some(names.clone()),
            Some(existing) if *existing != names => {
                return Err(IngestError::Layout(format!(
                    "COCO files disagree on categories: {existing:?} vs {names:?}"
                )));
            }
            _ => {}
        }
        let split = split_of(&rel(root, jf)).or_else(|| {
            let stem = jf.file_stem()?.to_string_lossy().to_lowercase();
            ["train", "val", "test"].iter().find(|s| stem.contains(*s)).and_then(|s| Split::from_name(s))
        });
        let conv = coco::convert(&file, task, &names);
        errors.extend(conv.errors);
        let json_dir = jf.parent().unwrap_or(root);
        for (file_name, (w, h, anns)) in conv.images {
            // file_name is relative to an images folder we must find.
            let candidates = [
                json_dir.join(&file_name),
                json_dir.join("images").join(&file_name),
                root.join("images").join(&file_name),
                root.join(&file_name),
            ];
            let found = candidates.iter().find(|c| c.is_file() && c.starts_with(root)).cloned().or_else(|| {
                let base = Path::new(&file_name).file_name()?.to_string_lossy().into_owned();
                let list = by_name.get(&base)?;
                (list.len() == 1).then(|| list[0].clone())
            });
            match found {
                Some(path) => {
                    let r = rel(root, &path);
                    items.push(Item {
                        rel: r.clone(),
                        path,
                        split: split.or_else(|| split_of(&r)),
                        labels: Labels::Parsed { anns, declared: (w, h) },
                    })
                }
                None => errors.push(ItemError {
                    file: file_name,
                    kind: ItemErrorKind::MissingImage,
                    detail: format!("listed in {} but not found", rel(root, jf)),
                }),
            }
        }
    }
    Ok(Layout { format: Format::Coco, class_names: class_names.unwrap_or_default(), kpt_shape: None, items, errors })
}

fn folders(root: &Path, files: &[PathBuf]) -> Result<Layout, IngestError> {
    // [split/]class/image: the class is the image's parent directory.
    let images: Vec<&PathBuf> = files.iter().filter(|p| is_image_path(p)).collect();
    let mut classes = BTreeSet::new();
    for p in &images {
        let r = rel(root, p);
        let comps: Vec<&str> = r.split('/').collect();
        if comps.len() < 2 {
            return Err(IngestError::Layout(format!("classification image {r} is not inside a class folder")));
        }
        classes.insert(comps[comps.len() - 2].to_string());
    }
    // Ultralytics sorts class folders alphabetically.
    let class_names: Vec<String> = classes.into_iter().collect();
    let items = images
        .into_iter()
        .map(|p| {
            let r = rel(root, p);
            let comps: Vec<&str> = r.split('/').collect();
            let class = class_names.iter().position(|c| c == comps[comps.len() - 2]).unwrap_or(0);
            let split = if comps.len() >= 3 { Split::from_name(comps[comps.len() - 3]) } else { None };
            Item { rel: r.clone(), path: p.clone(), split, labels: Labels::Class(class) }
        })
        .collect::<Vec<_>>();
    if items.is_empty() {
        return Err(IngestError::Layout("no images in class folders".into()));
    }
    Ok(Layout { format: Format::Folders, class_names, kpt_shape: None, items, errors: vec![] })
}
