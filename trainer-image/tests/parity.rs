//! Numerical parity with Ultralytics' yolov8n: the same deterministic weights and input give the
//! same decoded output. The reference was produced by `bench/parity_reference.py` (Ultralytics
//! with torch 2.11.0) and is stored in `tests/data/`, so this runs without Ultralytics.
#![cfg(feature = "torch")]

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

#[test]
fn yolov8n_output_matches_ultralytics() {
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("data/yolov8n_nc3_parity.json")).expect("reference json");
    let vs = nn::VarStore::new(Device::Cpu);
    let arch: Architecture = "yolov8n".parse().expect("arch");
    let model = Detector::new(&(vs.root() / "model"), &arch, 3);
    tch::no_grad(|| {
        for (key, t) in vs.variables() {
            if key.contains("dfl") {
                continue;
            }
            let _ = t.shallow_clone().copy_(&fill(&key, &t));
        }
    });
    let c = Tensor::arange(3, (Kind::Int64, Device::Cpu)).view([3, 1, 1]);
    let h = Tensor::arange(160, (Kind::Int64, Device::Cpu)).view([1, 160, 1]);
    let w = Tensor::arange(160, (Kind::Int64, Device::Cpu)).view([1, 1, 160]);
    let x = ((c * 7 + h * 3 + w).to_kind(Kind::Double) * 0.1).sin() * 0.5 + 0.5;
    let x = x.to_kind(Kind::Float).unsqueeze(0);
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
