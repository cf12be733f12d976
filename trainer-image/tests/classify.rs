//! The classifier learns: yolov8n-cls on synthetic shapes reaches >= 90% top-1 on CPU.
#![cfg(feature = "torch")]

use ocellus_tests::fixtures::{self, SHAPES};
use ocellus_trainer::model::Architecture;
use ocellus_trainer::train::TrainConfig;
use ocellus_trainer::train::classify::{sample, train};
use ocellus_trainer::train::data::{Augment, Sample};

#[test]
fn yolov8n_cls_learns_shapes_on_cpu() {
    let dir = std::env::temp_dir().join(format!("ocellus-cls-{}", std::process::id()));
    fixtures::write_folders(&dir, 11, 300, 64);
    let load = |split: &str| -> Vec<Sample> {
        let mut out = vec![];
        for (c, name) in SHAPES.iter().enumerate() {
            let d = dir.join(split).join(name);
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                out.push(sample(e.path(), c));
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    };
    let (tr, va) = (load("train"), load("val"));
    assert_eq!(tr.len() + va.len(), 300);
    let epochs: usize = std::env::var("OCELLUS_TRAIN_EPOCHS").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    // Ultralytics' defaults (`TrainConfig::default()`) but for these.
    let cfg = TrainConfig {
        epochs,
        imgsz: 64,
        nbs: 16,
        warmup_epochs: 0.0,
        augment: Some(Augment::default()),
        ..Default::default()
    };
    let arch: Architecture = "yolov8n-cls".parse().expect("arch");
    let (_, _, reports) =
        train(&arch, 3, tr, va, &cfg, &mut |r| eprintln!("{}", serde_json::to_string(r).expect("json")))
            .expect("train");
    let _ = std::fs::remove_dir_all(dir);
    let last = reports.last().expect("epochs");
    assert!(reports[0].loss > last.loss, "loss did not fall");
    assert!(last.top1 >= 0.9, "top-1 {} < 0.9", last.top1);
}
