//! TensorRT through ONNX Runtime's TensorRT execution provider: an ONNX model is compiled to an
//! engine by the provider (cached), and a prebuilt engine (`ocellus-trainer export --format
//! engine`) is loaded through an EP-context wrapper model (an `EPContext` node that points at the
//! engine file). Both need onnxruntime-gpu with TensorRT; elsewhere loading fails with a clear
//! [`BackendError::Unavailable`].

use std::path::Path;

use ocellus_vision::ModelInfo;
use ocellus_vision::model_info::{INPUT_NAME, OUTPUT_NAME};
use ocellus_vision::onnx::{Attr, Dim, Graph};

use super::onnx::OnnxBackend;
use super::{Backend, BackendError, ModelSpec};

/// Loads an ONNX model or a serialized engine on the TensorRT provider.
pub fn load(spec: &ModelSpec) -> Result<Box<dyn Backend>, BackendError> {
    if spec.path.extension().is_some_and(|e| e == "onnx") {
        return Ok(Box::new(OnnxBackend::load(spec, true)?));
    }
    let wrapper = spec.path.with_extension("ctx.onnx");
    std::fs::write(&wrapper, ep_context_model(&spec.path, &spec.info))
        .map_err(|e| BackendError::Load(e.to_string()))?;
    let spec = ModelSpec { path: wrapper, ..spec.clone() };
    Ok(Box::new(OnnxBackend::load(&spec, true)?))
}

/// An ONNX model with one `EPContext` node (domain `com.microsoft`) referring to `engine`
/// (`embed_mode` 0: the engine stays a separate file next to the wrapper).
pub fn ep_context_model(engine: &Path, info: &ModelInfo) -> Vec<u8> {
    let mut g = Graph::default();
    g.half = info.half;
    g.domains = vec![("com.microsoft".into(), 1)];
    let file = engine.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    g.custom_node(
        "EPContext",
        "com.microsoft",
        &[INPUT_NAME],
        &[OUTPUT_NAME],
        &[
            Attr::Int("main_context", 1),
            Attr::Int("embed_mode", 0),
            Attr::Text("ep_cache_context", file),
            Attr::Str("source", "TensorrtExecutionProvider"),
        ],
    );
    let s = i64::from(info.imgsz);
    let batch = if info.dynamic { Dim::Param("batch") } else { Dim::Fixed(i64::from(info.batch.max(1))) };
    let mut out = vec![batch.clone()];
    out.extend(info.output_shape().iter().map(|d| Dim::Fixed(*d as i64)));
    g.into_model((INPUT_NAME, &[batch, Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)]), (OUTPUT_NAME, &out), 17, &[])
}
