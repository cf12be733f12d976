//! TensorRT engines, built from our ONNX by TensorRT's own builder (`trt.Builder`,
//! `OnnxParser`, FP16/INT8 flags) through its Python API. INT8 engines are built from the QDQ
//! model of [`super::int8`] (explicit precision: TensorRT takes the calibrated scales from its
//! `QuantizeLinear`/`DequantizeLinear` nodes, so no TensorRT calibrator runs), which the GPU trainer image installs with TensorRT. Where TensorRT is
//! absent (CPU images, CI) [`available`] says so plainly and the export fails with that reason.

use std::path::Path;
use std::process::Command;

use crate::error::ExportError;

/// The builder script (TensorRT's Python API).
const BUILD_ENGINE: &str = include_str!("build_engine.py");

/// The Python that has TensorRT: `OCELLUS_TENSORRT_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("OCELLUS_TENSORRT_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `Ok(version)` when TensorRT can be used here.
pub fn available() -> Result<String, ExportError> {
    let out =
        Command::new(python()).args(["-c", "import tensorrt; print(tensorrt.__version__)"]).output().map_err(|e| {
            ExportError::TensorRtUnavailable(format!("TensorRT is not available: cannot run {}: {e}", python()))
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim();
        return Err(ExportError::TensorRtUnavailable(format!(
            "TensorRT is not available in this image ({last}); engines are built on a GPU node with TensorRT installed \
             (set OCELLUS_TENSORRT_PYTHON to its Python), or export ONNX and serve it with ONNX Runtime"
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What to build.
#[derive(Debug)]
pub struct BuildRequest<'a> {
    /// ONNX input.
    pub onnx: &'a Path,
    /// Engine output.
    pub engine: &'a Path,
    /// FP16 kernels.
    pub fp16: bool,
    /// INT8 kernels: `onnx` is a QDQ model.
    pub int8: bool,
    /// Input size.
    pub imgsz: u32,
    /// (Maximum) batch.
    pub batch: u32,
    /// Dynamic batch (an optimisation profile from 1 to `batch`).
    pub dynamic: bool,
}

/// Builds the engine.
pub fn build(req: &BuildRequest<'_>) -> Result<(), ExportError> {
    let args = serde_json::json!({
        "onnx": req.onnx, "engine": req.engine, "fp16": req.fp16, "int8": req.int8,
        "imgsz": req.imgsz, "batch": req.batch, "dynamic": req.dynamic,
    });
    let out = Command::new(python())
        .args(["-c", BUILD_ENGINE])
        .arg(args.to_string())
        .output()
        .map_err(|e| ExportError::TensorRt(format!("cannot run {}: {e}", python())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last: serde_json::Value = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or_default();
    if out.status.success() && last["ok"] == true {
        return Ok(());
    }
    Err(ExportError::TensorRt(
        last["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().into()),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_tensorrt_is_a_clear_error() {
        // CI and this machine have no TensorRT: the check must say so, not fail obscurely.
        if let Err(e) = super::available() {
            let e = e.to_string();
            assert!(e.contains("TensorRT is not available"), "{e}");
        }
    }
}
