//! Inference backends behind one trait. Each runs a batch of letterboxed CHW images and returns
//! the model's raw output (detector `[N, 4 + nc, anchors]`, classifier `[N, nc]` probabilities),
//! row-major. A backend lives on its model thread (see [`crate::batcher`]); it is created there.

pub mod onnx;
pub mod tensorrt;
#[cfg(feature = "torch")]
pub mod torch;

use std::path::PathBuf;

use ocellus_vision::ModelInfo;

/// Backend errors.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The artifact cannot be loaded (corrupt, wrong format): permanent.
    #[error("cannot load the model: {0}")]
    Load(String),
    /// The runtime this backend needs is not present here (e.g. TensorRT on a CPU image).
    #[error("{0}")]
    Unavailable(String),
    /// A batch failed.
    #[error("inference failed: {0}")]
    Run(String),
}

/// Which runtime runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// ONNX Runtime (CPU, or CUDA when the device is CUDA).
    Onnx,
    /// libtorch (TorchScript).
    Torch,
    /// TensorRT: an ONNX model through ONNX Runtime's TensorRT execution provider, or a prebuilt
    /// engine wrapped as an EP-context model.
    TensorRt,
}

impl Kind {
    /// Parses `onnx`, `torch`/`torchscript`, `tensorrt`/`engine`, or picks by the file extension
    /// for `auto`.
    pub fn parse(s: &str, path: &std::path::Path) -> Result<Kind, String> {
        match s {
            "onnx" => Ok(Kind::Onnx),
            "torch" | "torchscript" => Ok(Kind::Torch),
            "tensorrt" | "engine" => Ok(Kind::TensorRt),
            "auto" => match path.extension().and_then(|e| e.to_str()) {
                Some("onnx") => Ok(Kind::Onnx),
                Some("torchscript" | "pt") => Ok(Kind::Torch),
                Some("engine" | "plan") => Ok(Kind::TensorRt),
                other => Err(format!(
                    "cannot tell the backend from the extension {other:?}; set --backend onnx, torch or tensorrt"
                )),
            },
            other => Err(format!("unknown backend {other:?}: auto, onnx, torch or tensorrt")),
        }
    }
}

/// Where and how to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// CPU.
    Cpu,
    /// CUDA device N.
    Cuda(i32),
}

impl Device {
    /// `cpu`, `cuda`, `cuda:N`.
    pub fn parse(s: &str) -> Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device {other:?}: cpu, cuda or cuda:N")),
        }
    }
}

/// What to load.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Local path of the artifact.
    pub path: PathBuf,
    /// What it is.
    pub info: ModelInfo,
    /// Runtime.
    pub kind: Kind,
    /// Device.
    pub device: Device,
    /// Intra-op threads (0: the runtime's default).
    pub threads: usize,
    /// Whether idle intra-op threads may spin (lower latency for a copy that has the cores to
    /// itself; copies sharing cores must not).
    pub spin: bool,
}

impl ModelSpec {
    /// Floats per image in the model's input.
    pub fn input_len(&self) -> usize {
        3 * (self.info.imgsz as usize).pow(2)
    }

    /// Floats per image in the model's output.
    pub fn output_len(&self) -> usize {
        self.info.output_shape().iter().product()
    }
}

/// A loaded model.
pub trait Backend {
    /// Runtime name, for logs and metadata.
    fn name(&self) -> &'static str;
    /// Runs `n` images (`input` is `[n, 3, S, S]`); returns `n` outputs, concatenated.
    fn run(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>, BackendError>;
}

/// Loads the model of `spec`.
pub fn load(spec: &ModelSpec) -> Result<Box<dyn Backend>, BackendError> {
    match spec.kind {
        Kind::Onnx => Ok(Box::new(onnx::OnnxBackend::load(spec, false)?)),
        Kind::TensorRt => tensorrt::load(spec),
        #[cfg(feature = "torch")]
        Kind::Torch => Ok(Box::new(torch::TorchBackend::load(spec)?)),
        #[cfg(not(feature = "torch"))]
        Kind::Torch => Err(BackendError::Unavailable(
            "this predictor was built without libtorch (the `torch` feature); serve an ONNX export instead".into(),
        )),
    }
}

/// Checks an output's length.
pub(crate) fn check_len(out: Vec<f32>, n: usize, per_image: usize) -> Result<Vec<f32>, BackendError> {
    if out.len() != n * per_image {
        return Err(BackendError::Run(format!(
            "the model returned {} values for {n} images; expected {} per image (does the sidecar match the artifact?)",
            out.len(),
            per_image
        )));
    }
    Ok(out)
}
