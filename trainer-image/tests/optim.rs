//! Optimiser options and starting points: SGD trains, dynamic loss scaling (mixed precision) is
//! exact, fine-tuning re-initialises only the class layers when the class count changes.
#![cfg(feature = "torch")]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use ocellus_tests::fixtures;
use ocellus_trainer::loss::Target;
use ocellus_trainer::train::data::Sample;
use ocellus_trainer::train::session::Session;
use ocellus_trainer::train::{EpochReport, Optimizer, TrainConfig};

/// libtorch's RNG is global: these tests seed it, so they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn data(tag: &str) -> (Arc<Vec<Sample>>, Arc<Vec<Sample>>) {
    let size = 64;
    let dir = std::env::temp_dir().join(format!("ocellus-optim-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (mut tr, mut va) = (Vec::new(), Vec::new());
    for s in fixtures::samples(3, 40, size) {
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
        if s.split == "val" { va.push(Sample { path, targets }) } else { tr.push(Sample { path, targets }) }
    }
    (Arc::new(tr), Arc::new(va))
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig { epochs, imgsz: 64, batch: 8, nbs: 8, warmup_epochs: 0.0, workers: 1, ..Default::default() }
}

fn run(cfg: &TrainConfig, tag: &str) -> Vec<EpochReport> {
    let (tr, va) = data(tag);
    let mut s = Session::new(&"yolov8n".parse().expect("arch"), 3, cfg).expect("session");
    s.run(tr, va, cfg, &AtomicBool::new(false), &mut |_, _| {}).expect("train");
    s.progress.reports.clone()
}

#[test]
fn sgd_trains() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = TrainConfig { optimizer: Optimizer::Sgd, lr0: 0.01, ..cfg(3) };
    let r = run(&c, "sgd");
    assert!(r.iter().all(|e| e.box_loss.is_finite() && e.cls_loss.is_finite()));
    assert!(r[2].cls_loss < r[0].cls_loss, "SGD lowers the loss: {r:?}");
    assert_ne!(run(&cfg(3), "adamw")[2].cls_loss, r[2].cls_loss, "SGD is not AdamW");
}

#[test]
fn loss_scaling_is_exact() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // On CPU `amp` only scales the loss (autocast is CUDA-only): gradients are scaled by a power
    // of two and unscaled before the step, so training is bit-for-bit the same.
    let plain = run(&cfg(1), "plain");
    let scaled = run(&TrainConfig { amp: true, ..cfg(1) }, "scaled");
    assert_eq!(
        (plain[0].box_loss, plain[0].cls_loss, plain[0].dfl_loss),
        (scaled[0].box_loss, scaled[0].cls_loss, scaled[0].dfl_loss)
    );
    assert_eq!(plain[0].map50_95, scaled[0].map50_95);
}

#[test]
fn fine_tuning_reinitialises_only_the_class_layers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("ocellus-finetune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let arch = "yolov8n".parse().expect("arch");
    tch::manual_seed(1);
    let three = Session::new(&arch, 3, &cfg(1)).expect("session");
    let path = dir.join("w.safetensors");
    three.ema_var_store().save(&path).expect("save");
    let total = three.ema_var_store().variables().len();

    let mut five = Session::new(&arch, 5, &TrainConfig { seed: 9, ..cfg(1) }).expect("session");
    let report = five.init_from(&path).expect("init");
    let mut want: Vec<String> =
        (0..3).flat_map(|i| [format!("model.22.cv3.{i}.2.bias"), format!("model.22.cv3.{i}.2.weight")]).collect();
    want.sort();
    assert_eq!(report.reinitialized, want);
    assert_eq!(report.loaded, total - 6);
    let (a, b) = (three.ema_var_store().variables(), five.ema_var_store().variables());
    let k = "model.0.conv.weight";
    assert!(a[k].equal(&b[k]), "backbone copied into the EMA too");
    // Same class count: everything is loaded.
    let mut again = Session::new(&arch, 3, &cfg(1)).expect("session");
    assert!(again.init_from(&path).expect("init").reinitialized.is_empty());
    // Weights of another architecture are refused.
    let other = dir.join("other.safetensors");
    tch::Tensor::write_safetensors(
        &[("x.weight", tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu)))],
        &other,
    )
    .expect("write");
    assert!(again.init_from(&other).expect_err("foreign").to_string().contains("share no variable"));
}
