//! INT8 export: the float ONNX graph runs in ONNX Runtime over calibration images with every
//! quantisable activation exposed as an output; an [`Observer`] per activation turns what it saw
//! into a clipping threshold; [`ocellus_vision::quant::rewrite`] turns the graph into a QDQ model.
//! ONNX Runtime (loaded from `ORT_DYLIB_PATH`, PyPI `onnxruntime`'s `libonnxruntime.so`) also
//! runs both models for the accuracy gate, so float and INT8 are measured by the same runtime.

use std::collections::HashMap;
use std::sync::OnceLock;

use ocellus_vision::model_info::INPUT_NAME;
use ocellus_vision::quant::{self, Method, Observer, Rewritten, Target};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::OnnxModel;
use crate::error::ExportError;

static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process's ONNX Runtime, loaded on first use.
fn environment() -> Result<Environment, ExportError> {
    ENV.get_or_init(|| {
        let path = std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| "libonnxruntime.so".into());
        let builder = ort::init_from(&path)
            .map_err(|e| format!("cannot load ONNX Runtime from {path:?} (set ORT_DYLIB_PATH): {e}"))?;
        builder.with_name("ocellus-trainer").build().map_err(|e| e.to_string())
    })
    .clone()
    .map_err(ExportError::OnnxRuntime)
}

/// An ONNX model loaded in ONNX Runtime (CPU).
pub struct Runner {
    session: Session,
    side: i64,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("side", &self.side).finish()
    }
}

impl Runner {
    /// Loads a serialised model whose input is `[N, 3, side, side]`.
    pub fn new(model: &[u8], side: u32) -> Result<Runner, ExportError> {
        let env = environment()?;
        let err = |e: ort::Error| ExportError::OnnxRuntime(e.to_string());
        let session = Session::builder(&env)
            .map_err(err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| err(e.into()))?
            .commit_from_memory(model)
            .map_err(err)?;
        Ok(Runner { session, side: i64::from(side) })
    }

    /// Runs `n` images (`pixels` is `[n, 3, side, side]`) and hands every output, by name, to `f`.
    pub fn run(&mut self, pixels: &[f32], n: usize, mut f: impl FnMut(&str, &[f32])) -> Result<(), ExportError> {
        let err = |e: ort::Error| ExportError::OnnxRuntime(e.to_string());
        let x = TensorRef::from_array_view(([n as i64, 3, self.side, self.side], pixels)).map_err(err)?;
        let outputs = self.session.run(ort::inputs![INPUT_NAME => x]).map_err(err)?;
        for (name, value) in outputs.iter() {
            let (_, y) = value.try_extract_tensor::<f32>().map_err(err)?;
            f(name, y);
        }
        Ok(())
    }

    /// Runs `n` images and returns the first output (the model's prediction).
    pub fn predict(&mut self, pixels: &[f32], n: usize) -> Result<Vec<f32>, ExportError> {
        let mut first = None;
        self.run(pixels, n, |_, y| {
            if first.is_none() {
                first = Some(y.to_vec());
            }
        })?;
        first.ok_or_else(|| ExportError::OnnxRuntime("the model has no output".into()))
    }
}

/// Collects activation statistics: `model` is the float model (dynamic batch), each item of
/// `images` one letterboxed `[3, side, side]` image. Returns an observer per quantisation target.
pub fn calibrate(
    model: &OnnxModel,
    side: u32,
    images: impl Iterator<Item = Result<Vec<f32>, ExportError>>,
) -> Result<HashMap<String, Observer>, ExportError> {
    let targets = quant::targets(&model.graph, INPUT_NAME);
    let mut probe = model.clone();
    probe.graph.extra_outputs = targets.iter().filter(|t| t.as_str() != INPUT_NAME).cloned().collect();
    let mut runner = Runner::new(&probe.bytes(), side)?;
    let mut observers: HashMap<String, Observer> = targets.into_iter().map(|t| (t, Observer::default())).collect();
    let mut seen = 0;
    for image in images {
        let image = image?;
        if let Some(o) = observers.get_mut(INPUT_NAME) {
            o.observe(&image);
        }
        runner.run(&image, 1, |name, y| {
            if let Some(o) = observers.get_mut(name) {
                o.observe(y);
            }
        })?;
        seen += 1;
    }
    if seen == 0 {
        return Err(ExportError::Quantization("no calibration images".into()));
    }
    Ok(observers)
}

/// The QDQ model of `model` for `target` with ranges from `observers` by `method`.
pub fn quantize(
    mut model: OnnxModel,
    observers: &HashMap<String, Observer>,
    method: Method,
    target: Target,
) -> Result<(OnnxModel, Rewritten), ExportError> {
    if model.graph.half {
        return Err(ExportError::Unsupported("INT8 and half precision are exclusive for ONNX".into()));
    }
    let ranges: HashMap<String, (f32, f32)> = observers.iter().map(|(k, o)| (k.clone(), o.range(method))).collect();
    let missing: Vec<String> =
        quant::targets(&model.graph, INPUT_NAME).into_iter().filter(|t| !ranges.contains_key(t)).collect();
    if !missing.is_empty() {
        return Err(ExportError::Quantization(format!(
            "no calibration statistics for {} activations (e.g. {})",
            missing.len(),
            missing[0]
        )));
    }
    let stats =
        quant::rewrite(&mut model.graph, &ranges, target).map_err(|e| ExportError::Quantization(e.to_string()))?;
    Ok((model, stats))
}
