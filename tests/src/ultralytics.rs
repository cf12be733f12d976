//! The bring-your-own-model fixture that `hack/setup.sh ultralytics` makes with the pinned
//! Ultralytics (`bench/byo_reference.py`): a yolov8n trained on a synthetic shapes set, its `.pt`,
//! its ONNX (raw and `nms=True`) and TorchScript exports, and Ultralytics' own answers on them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

/// The fixture directory and its JSON files.
#[derive(Debug)]
pub struct Fixture {
    /// The directory.
    pub dir: PathBuf,
    /// `{format: {image file: [{class, name, confidence, box: [x1, y1, x2, y2]}]}}`.
    pub predictions: Value,
    /// Ultralytics' `val` of `best.pt`: `map50`, `map50_95`, `ultralytics`, `torch`, `imgsz`.
    pub val: Value,
}

/// One labelled image of the fixture's dataset: class and normalised `cx, cy, w, h` per box.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// Image path.
    pub path: PathBuf,
    /// File name.
    pub file: String,
    /// Boxes.
    pub boxes: Vec<(usize, [f32; 4])>,
}

/// The fixture (read once); panics with the command that makes it when it is missing: a missing
/// fixture is a broken setup, never a reason to skip.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = crate::cache_dir().join("ultralytics-fixture");
        let read = |name: &str| -> Value {
            let p = dir.join(name);
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
                panic!("{}: {e}; run `hack/setup.sh ultralytics` (the README test command does)", p.display())
            });
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        Fixture { predictions: read("predictions.json"), val: read("val.json"), dir }
    })
}

impl Fixture {
    /// A file of the fixture.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Images of a split (`train` or `val`) with their labels, sorted by name.
    pub fn split(&self, split: &str) -> Vec<Labelled> {
        let images = self.dir.join("data/images").join(split);
        let mut out: Vec<Labelled> = std::fs::read_dir(&images)
            .unwrap_or_else(|e| panic!("{}: {e}", images.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
            .map(|path| {
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
                let labels = self.dir.join("data/labels").join(split).join(format!("{stem}.txt"));
                Labelled { file: format!("{stem}.jpg"), boxes: read_labels(&labels), path }
            })
            .collect();
        out.sort_by(|a, b| a.file.cmp(&b.file));
        out
    }

    /// Ultralytics' predictions with one format (`pt`, `onnx`, `onnx-nms`, `torchscript`) on an image.
    pub fn predictions(&self, format: &str, file: &str) -> &[Value] {
        self.predictions[format][file].as_array().map(Vec::as_slice).unwrap_or_default()
    }
}

fn read_labels(path: &Path) -> Vec<(usize, [f32; 4])> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let v: Vec<f32> = l.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            (v.len() == 5).then(|| (v[0] as usize, [v[1], v[2], v[3], v[4]]))
        })
        .collect()
}
