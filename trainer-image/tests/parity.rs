//! Numerical parity with Ultralytics' yolov8n: the same deterministic weights and input give the
//! same decoded output. The reference was produced by `bench/parity_reference.py` (Ultralytics
//! with torch 2.11.0) and is stored in `tests/data/`, so this runs without Ultralytics.
#![cfg(feature = "torch")]

use ocellus_trainer::loss::{LossConfig, Target, detection_loss};
use ocellus_trainer::model::{Architecture, Detector};
use tch::{Device, Kind, Tensor, nn};

/// The formula `bench/parity_reference.py` uses for every state-dict entry.
fn fill(key: &str, t: &Tensor) -> Tensor {
    let n = t.numel() as i64;
    let i = Tensor::arange(n, (Kind::Double, Device::Cpu));
    let s = (i * 1.7 + 0.3 * key.len() as f64).sin();
    let shape = t.size();
    let v = if key.ends_with("running_var") {
        s.abs() * 0.2 + 1.0
    } else if key.ends_with("running_mean") || key.ends_with("bias") {
        s * 0.05
    } else if shape.len() >= 2 {
        s / ((n / shape[0]) as f64).sqrt()
    } else {
        s * 0.1 + 1.0
    };
    v.reshape(&shape).to_kind(t.kind())
}

/// yolov8n with 3 classes and the reference's deterministic weights.
fn reference_model() -> (nn::VarStore, Detector) {
    let vs = nn::VarStore::new(Device::Cpu);
    let arch: Architecture = "yolov8n".parse().expect("arch");
    let model = Detector::new(&(vs.root() / "model"), &arch, 3);
    tch::no_grad(|| {
        for (key, t) in vs.variables() {
            if key.contains("dfl") {
                continue;
            }
            t.shallow_clone().copy_(&fill(&key, &t));
        }
    });
    (vs, model)
}

/// The reference's input pattern, `[3, 160, 160]`.
fn pattern() -> Tensor {
    let c = Tensor::arange(3, (Kind::Int64, Device::Cpu)).view([3, 1, 1]);
    let h = Tensor::arange(160, (Kind::Int64, Device::Cpu)).view([1, 160, 1]);
    let w = Tensor::arange(160, (Kind::Int64, Device::Cpu)).view([1, 1, 160]);
    (((c * 7 + h * 3 + w).to_kind(Kind::Double) * 0.1).sin() * 0.5 + 0.5).to_kind(Kind::Float)
}

#[test]
fn yolov8n_output_matches_ultralytics() {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("data/yolov8n_nc3_parity.json")).expect("reference json");
    let (_vs, model) = reference_model();
    let x = pattern().unsqueeze(0);
    let y = tch::no_grad(|| model.predict(&x)).get(0);
    assert_eq!(y.size(), vec![7, 525]);
    let flat = y.flatten(0, -1);
    let sum = y.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
    let want_sum = reference["sum"].as_f64().expect("sum");
    assert!((sum - want_sum).abs() / want_sum.abs() < 1e-4, "sum {sum} vs {want_sum}");
    let mut worst = 0.0f64;
    for s in reference["samples"].as_array().expect("samples") {
        let i = s[0].as_i64().expect("index");
        let want = s[1].as_f64().expect("value");
        let got = flat.double_value(&[i]);
        let err = (got - want).abs() / (1.0 + want.abs());
        worst = worst.max(err);
        assert!(err < 1e-3, "index {i}: ours {got} vs Ultralytics {want}");
    }
    eprintln!("worst relative error {worst:.2e}");
}

#[test]
fn detection_loss_matches_ultralytics() {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("data/yolov8n_nc3_loss.json")).expect("reference json");
    let (vs, model) = reference_model();
    let p = pattern();
    let x = Tensor::stack(&[p.shallow_clone(), p.neg() + 1.0], 0);
    let t = |class, xywh| Target { class, xywh };
    let targets = vec![
        vec![t(0, [0.3, 0.3, 0.2, 0.25]), t(1, [0.7, 0.6, 0.3, 0.2]), t(2, [0.5, 0.85, 0.05, 0.06])],
        vec![t(1, [0.5, 0.5, 0.6, 0.5])],
    ];
    let levels = model.forward_levels(&x, true);
    let loss = detection_loss(&LossConfig::default(), 3, &levels, &targets);
    let got: Vec<f64> = (0..3).map(|i| loss.double_value(&[i])).collect();
    let want: Vec<f64> = reference["loss"].as_array().expect("loss").iter().map(|v| v.as_f64().expect("f64")).collect();
    for (name, (g, w)) in ["box", "cls", "dfl"].iter().zip(got.iter().zip(&want)) {
        assert!((g - w).abs() / w.abs() < 1e-4, "{name} loss: ours {g} vs Ultralytics {w}");
    }
    // The loss trains: gradients reach the weights.
    loss.sum(Kind::Float).backward();
    let grads: f64 = vs.trainable_variables().iter().map(|v| v.grad().abs().sum(Kind::Double).double_value(&[])).sum();
    assert!(grads > 0.0 && grads.is_finite());
    eprintln!("loss ours {got:?} vs Ultralytics {want:?}");
}
