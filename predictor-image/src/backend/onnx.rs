//! ONNX Runtime, loaded at run time from `ORT_DYLIB_PATH` (the `libonnxruntime.so` of PyPI's
//! `onnxruntime`, or its GPU build). CPU by default; CUDA when the device is CUDA; TensorRT
//! through [`super::tensorrt`].

use std::sync::OnceLock;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, TensorRef};

use super::{Backend, BackendError, Device, ModelSpec, check_len};

static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process's ONNX Runtime environment (one per process), loading the library on first use.
pub fn environment() -> Result<Environment, BackendError> {
    ENV.get_or_init(|| {
        let path = std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| "libonnxruntime.so".into());
        let builder = ort::init_from(&path)
            .map_err(|e| format!("cannot load ONNX Runtime from {path:?} (set ORT_DYLIB_PATH): {e}"))?;
        builder.with_name("ocellus-predictor").build().map_err(|e| e.to_string())
    })
    .clone()
    .map_err(BackendError::Unavailable)
}

/// A model in ONNX Runtime.
pub struct OnnxBackend {
    session: Session,
    input: String,
    output: String,
    per_image: usize,
    side: i64,
    half: bool,
    name: &'static str,
}

impl OnnxBackend {
    /// Loads `spec.path` (an ONNX model, or an EP-context wrapper for TensorRT).
    pub fn load(spec: &ModelSpec, tensorrt: bool) -> Result<OnnxBackend, BackendError> {
        let env = environment()?;
        let load = |e: ort::Error| BackendError::Load(e.to_string());
        let mut builder = Session::builder(&env)
            .map_err(load)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load(e.into()))?;
        if spec.threads > 0 {
            builder = builder.with_intra_threads(spec.threads).map_err(|e| load(e.into()))?;
        }
        if !spec.spin {
            builder = builder.with_intra_op_spinning(false).map_err(|e| load(e.into()))?;
        }
        if tensorrt {
            let Device::Cuda(id) = spec.device else {
                return Err(BackendError::Unavailable("TensorRT needs a CUDA device (--device cuda)".into()));
            };
            if !ep::TensorRT::is_available().unwrap_or(false) {
                return Err(BackendError::Unavailable(
                    "this ONNX Runtime has no TensorRT execution provider (use onnxruntime-gpu with TensorRT installed); serve the ONNX export with --backend onnx instead".into(),
                ));
            }
            let cache = std::env::temp_dir().join("ocellus-trt-cache");
            let trt = ep::TensorRT::default()
                .with_device_id(id)
                .with_fp16(spec.info.half)
                .with_engine_cache(true)
                .with_engine_cache_path(cache.display());
            trt.register(&mut builder)
                .map_err(|e| BackendError::Unavailable(format!("TensorRT execution provider: {e}")))?;
        }
        if let Device::Cuda(id) = spec.device {
            if !ep::CUDA::is_available().unwrap_or(false) {
                return Err(BackendError::Unavailable(
                    "this ONNX Runtime has no CUDA execution provider (install onnxruntime-gpu) ; use --device cpu"
                        .into(),
                ));
            }
            ep::CUDA::default()
                .with_device_id(id)
                .register(&mut builder)
                .map_err(|e| BackendError::Unavailable(format!("CUDA execution provider: {e}")))?;
        }
        let session = builder.commit_from_file(&spec.path).map_err(load)?;
        let input = session
            .inputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| BackendError::Load("the model has no input".into()))?;
        let output = session
            .outputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| BackendError::Load("the model has no output".into()))?;
        Ok(OnnxBackend {
            session,
            input,
            output,
            per_image: spec.output_len(),
            side: i64::from(spec.info.imgsz),
            half: spec.info.half,
            name: if tensorrt { "tensorrt" } else { "onnxruntime" },
        })
    }
}

impl Backend for OnnxBackend {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
        let err = |e: ort::Error| BackendError::Run(e.to_string());
        let side = self.side;
        let shape = [n as i64, 3, side, side];
        let out = if self.half {
            let x: Vec<half::f16> = input.iter().map(|v| half::f16::from_f32(*v)).collect();
            let t = Tensor::from_array((shape, x)).map_err(err)?;
            let outputs = self.session.run(ort::inputs![self.input.as_str() => t]).map_err(err)?;
            let (_, y) = outputs[self.output.as_str()].try_extract_tensor::<half::f16>().map_err(err)?;
            y.iter().map(|v| v.to_f32()).collect()
        } else {
            let t = TensorRef::from_array_view((shape, input)).map_err(err)?;
            let outputs = self.session.run(ort::inputs![self.input.as_str() => t]).map_err(err)?;
            let (_, y) = outputs[self.output.as_str()].try_extract_tensor::<f32>().map_err(err)?;
            y.to_vec()
        };
        check_len(out, n, self.per_image)
    }
}
