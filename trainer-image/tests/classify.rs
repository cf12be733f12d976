//! The classifier learns: yolov8n-cls on synthetic shapes, 64 px, on CPU, to near Ultralytics'
//! top-1 with the same recipe on the same images.
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
    // Ultralytics 8.4.190 with the same recipe on the same images (`ocellus-fixtures --layout
    // folders --images 300 --size 64 --seed 11`; `YOLO("yolov8n-cls.yaml").train(epochs=15,
    // imgsz=64, batch=16, nbs=16, warmup_epochs=0, lr0=0.002, optimizer="AdamW", seed=0)`) reaches
    // 0.733 top-1 (0.746 after 30 epochs); ours, initialised as Ultralytics, 0.717; chance is
    // 0.33. (With tch's default initialisation ours reached 0.9 here, but trained detectors to
    // half Ultralytics' mAP: see `fresh_weights_are_initialised_as_pytorch_and_ultralytics`.)
    assert!(last.top1 >= 0.65, "top-1 {} < 0.65", last.top1);
}
