//! Export round trips: TorchScript reloaded by libtorch (and by Python `torch.jit.load` where a
//! full PyTorch is installed), ONNX run by the real onnxruntime (PyPI), both against the libtorch
//! model on the same input, with a dynamic batch.
#![cfg(feature = "torch")]

use std::path::Path;
use std::process::Command;

use ocellus_trainer::export::{self, Loaded, Options};
use ocellus_vision::ModelInfo;
use tch::{Device, Kind, Tensor, nn};

/// A model with non-trivial batch-norm statistics (so folding is exercised), saved like `train`.
fn saved_model(dir: &Path, architecture: &str, names: &[&str]) -> (ModelInfo, std::path::PathBuf) {
    tch::manual_seed(7);
    let task = if architecture.ends_with("-cls") { "classify" } else { "detect" };
    let info = ModelInfo::weights(architecture, task, names.iter().map(|s| s.to_string()).collect(), 96);
    let vs = nn::VarStore::new(Device::Cpu);
    let arch = architecture.parse().expect("arch");
    let nc = names.len() as i64;
    if info.task == "detect" {
        let _m = ocellus_trainer::model::Detector::new(&(vs.root() / "model"), &arch, nc);
    } else {
        let _m = ocellus_trainer::model::Classifier::new(&(vs.root() / "model"), &arch, nc);
    }
    tch::no_grad(|| {
        for (k, t) in vs.variables() {
            if k.ends_with("running_mean") {
                t.shallow_clone().copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
            } else if k.ends_with("running_var") || (k.contains(".bn.") && k.ends_with("weight")) {
                t.shallow_clone().copy_(&(Tensor::rand(t.size(), (Kind::Float, Device::Cpu)) + 0.5));
            }
        }
    });
    let path = dir.join(format!("{architecture}.safetensors"));
    vs.save(&path).expect("save");
    (info, path)
}

fn input(batch: i64) -> Tensor {
    tch::manual_seed(11);
    Tensor::rand([batch, 3, 96, 96], (Kind::Float, Device::Cpu))
}

/// Largest difference relative to max(1, |want|): absolute for probabilities, relative for box
/// coordinates in pixels (hundreds, after some twenty layers of float32 arithmetic).
fn max_abs_diff(a: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(a.size(), want.size());
    ((a - want).abs() / want.abs().clamp_min(1.0)).max().double_value(&[])
}

/// libtorch's RNG is global and these tests seed it: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn python() -> std::path::PathBuf {
    ocellus_tests::require_tool("ocellus-python")
}

/// Runs `model.onnx` in onnxruntime (Python, CPU provider) on `x`; returns the output.
fn onnxruntime(model: &Path, x: &Tensor, dir: &Path) -> Tensor {
    let raw: Vec<f32> = Vec::try_from(x.flatten(0, -1)).expect("f32");
    let inp = dir.join("in.f32");
    let out = dir.join("out.f32");
    std::fs::write(&inp, raw.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).expect("write");
    let shape: Vec<String> = x.size().iter().map(i64::to_string).collect();
    let script = r#"
import sys, json, numpy as np, onnxruntime as ort
model, inp, shape, out = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(',')], sys.argv[4]
s = ort.InferenceSession(model, providers=['CPUExecutionProvider'])
x = np.fromfile(inp, dtype=np.float32).reshape(shape)
(y,) = s.run(None, {'images': x})
y.astype(np.float32).tofile(out)
meta = s.get_modelmeta().custom_metadata_map
print(json.dumps({'shape': list(y.shape), 'names': meta['names'], 'imgsz': meta['imgsz'], 'task': meta['task'],
                  'inputs': [[i.name, i.shape] for i in s.get_inputs()]}))
"#;
    let o = Command::new(python())
        .args(["-c", script])
        .arg(model)
        .arg(&inp)
        .arg(shape.join(","))
        .arg(&out)
        .output()
        .expect("python");
    assert!(o.status.success(), "onnxruntime failed: {}", String::from_utf8_lossy(&o.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let dims: Vec<i64> = meta["shape"].as_array().expect("shape").iter().map(|d| d.as_i64().expect("dim")).collect();
    let bytes = std::fs::read(&out).expect("out");
    let vals: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(meta["inputs"][0][1][0], "batch", "dynamic batch axis: {meta}");
    Tensor::from_slice(&vals).view(dims.as_slice())
}

fn round_trip(architecture: &str, names: &[&str]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("ocellus-export-{architecture}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (info, weights) = saved_model(&dir, architecture, names);
    let model = Loaded::load(&info, &weights, Device::Cpu).expect("load");
    let x = input(3);
    let want = model.forward(&x);

    // TorchScript, traced at batch 1, run at batch 3.
    let opts = Options { imgsz: 96, batch: 1, dynamic: true, half: false, opset: export::DEFAULT_OPSET, int8: false };
    let ts = dir.join("model.torchscript");
    export::torchscript(&model, &opts, Device::Cpu, &ts).expect("torchscript");
    let m = tch::CModule::load(&ts).expect("libtorch loads the TorchScript");
    let got = tch::no_grad(|| m.forward_ts(&[&x])).expect("forward");
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-4, "{architecture}: TorchScript differs from libtorch by {d}");

    // ONNX, run by onnxruntime at batch 3; outputs within 1e-3 of libtorch.
    let bytes = export::onnx(&model, &info, &opts).expect("onnx");
    let path = dir.join("model.onnx");
    std::fs::write(&path, bytes).expect("write");
    let got = onnxruntime(&path, &x, &dir);
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-3, "{architecture}: ONNX differs from libtorch by {d}");

    // Refused options are clear errors.
    let bad = Options { opset: 9, ..opts };
    assert!(export::onnx(&model, &info, &bad).expect_err("opset 9").to_string().contains("opset 9 is not supported"));

    // Python's torch.jit.load, where a full PyTorch exists (the lean CI venv cannot import torch).
    if let Some(py) = full_torch_python() {
        let o = Command::new(py)
            .args(["-c", "import sys, torch; m = torch.jit.load(sys.argv[1]); y = m(torch.zeros(2, 3, 96, 96)); print(list(y.shape))"])
            .arg(&ts)
            .output()
            .expect("python");
        assert!(o.status.success(), "torch.jit.load: {}", String::from_utf8_lossy(&o.stderr));
        eprintln!("torch.jit.load: output shape {}", String::from_utf8_lossy(&o.stdout).trim());
    } else {
        eprintln!(
            "no full PyTorch (OCELLUS_TORCH_PYTHON or bench/setup-peer.sh's venv): Python torch.jit.load not checked"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A Python with a complete PyTorch: `OCELLUS_TORCH_PYTHON`, or the benchmark peer's venv.
fn full_torch_python() -> Option<std::path::PathBuf> {
    let p = std::env::var_os("OCELLUS_TORCH_PYTHON")
        .map(std::path::PathBuf::from)
        .or_else(|| Some(ocellus_tests::cache_dir().join("bench-venv/bin/python")))?;
    p.exists().then_some(p)
}

#[test]
fn detector_exports_to_torchscript_and_onnx() {
    round_trip("yolov8n", &["circle", "square", "it's a \"triangle\""]);
}

#[test]
fn classifier_exports_to_torchscript_and_onnx() {
    round_trip("yolov8n-cls", &["red", "green", "blue"]);
}
