//! Training learns: yolov8n on the synthetic shapes dataset reaches mAP50 >= 0.6 on CPU.
#![cfg(feature = "torch")]

use ocellus_tests::fixtures;
use ocellus_trainer::loss::Target;
use ocellus_trainer::model::Architecture;
use ocellus_trainer::train::data::{Augment, Sample};
use ocellus_trainer::train::{TrainConfig, train};

fn samples(dir: &std::path::Path, set: &[fixtures::Sample], size: u32, split: &str) -> Vec<Sample> {
    set.iter()
        .filter(|s| s.split == split)
        .map(|s| {
            let path = dir.join(format!("{}.jpg", s.stem));
            std::fs::write(&path, &s.jpeg).expect("write");
            let f = size as f32;
            let targets = s
                .shapes
                .iter()
                .map(|b| Target {
                    class: b.class as i64,
                    xywh: [
                        (b.x0 + b.x1) as f32 / 2.0 / f,
                        (b.y0 + b.y1) as f32 / 2.0 / f,
                        (b.x1 - b.x0) as f32 / f,
                        (b.y1 - b.y0) as f32 / f,
                    ],
                })
                .collect();
            Sample { path, targets }
        })
        .collect()
}

#[test]
fn yolov8n_learns_shapes_on_cpu() {
    let size = 160;
    let n: usize = std::env::var("OCELLUS_TRAIN_IMAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let epochs: usize = std::env::var("OCELLUS_TRAIN_EPOCHS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let set = fixtures::samples(42, n, size);
    let dir = std::env::temp_dir().join(format!("ocellus-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (tr, va) = (samples(&dir, &set, size, "train"), samples(&dir, &set, size, "val"));
    // Ultralytics' defaults (`TrainConfig::default()`) but for these.
    let cfg = TrainConfig {
        epochs,
        imgsz: size,
        nbs: 16,
        warmup_epochs: 1.0,
        augment: Some(Augment::default()),
        ..Default::default()
    };
    let arch: Architecture = "yolov8n".parse().expect("arch");
    let (_, _, reports) =
        train(&arch, 3, tr, va, &cfg, &mut |r| eprintln!("{}", serde_json::to_string(r).expect("json")))
            .expect("train");
    let _ = std::fs::remove_dir_all(dir);
    let last = reports.last().expect("epochs");
    assert!(reports.first().expect("first").box_loss > last.box_loss, "box loss did not fall");
    assert!(last.map50 >= 0.6, "mAP50 {} < 0.6", last.map50);
}
