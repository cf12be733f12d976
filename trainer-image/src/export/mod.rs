//! Export of trained weights to deployable artifacts:
//! - TorchScript: the eval-mode model traced by libtorch (frozen weights, dynamic batch), loadable
//!   by `torch::jit::load` / Python `torch.jit.load`;
//! - ONNX: written by [`onnx`] from the model code itself (batch norm folded, anchors for the
//!   export size precomputed), with Ultralytics-compatible metadata so `YOLO("model.onnx")` reads
//!   its names, stride and size;
//! - INT8: a QDQ ONNX model calibrated on dataset images and gated on validation mAP (see
//!   [`int8`]), which TensorRT also builds INT8 engines from;
//! - TensorRT engine: built from the ONNX by TensorRT's builder (see [`tensorrt`]).
//!
//! Every artifact gets a [`ModelInfo`] sidecar (`<artifact>.json`) carrying its SHA-256.

#[cfg(feature = "torch")]
pub use ocellus_vision::onnx;
#[cfg(feature = "torch")]
pub mod int8;
pub mod tensorrt;

#[cfg(feature = "torch")]
pub use model_export::*;

#[cfg(feature = "torch")]
mod model_export {
    use std::path::Path;

    use ocellus_vision::ModelInfo;
    use ocellus_vision::model_info::{INPUT_NAME, OUTPUT_NAME};
    use tch::nn::VarStore;
    use tch::{Device, Kind, Tensor};

    use super::onnx::{Dim, Graph};
    use crate::error::{ExportError, ParseError};
    use crate::model::{Architecture, Classifier, Detector, ModelKind};

    /// ONNX opsets this exporter writes (its ops are stable from 13 on).
    pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;
    /// Default ONNX opset.
    pub const DEFAULT_OPSET: i64 = 17;

    /// A model with its weights, ready to export.
    #[derive(Debug)]
    #[allow(clippy::large_enum_variant, reason = "one per process")]
    pub enum Loaded {
        /// A detector.
        Detect(VarStore, Detector),
        /// A classifier.
        Classify(VarStore, Classifier),
    }

    impl Loaded {
        /// Builds the model of `info` on `device` and loads `weights` (safetensors, Ultralytics'
        /// names, as `train` writes them).
        pub fn load(info: &ModelInfo, weights: &Path, device: Device) -> Result<Loaded, ExportError> {
            let arch: Architecture =
                info.architecture.parse().map_err(|e: ParseError| ExportError::InvalidModel(e.0))?;
            let nc = info.names.len() as i64;
            if nc == 0 {
                return Err(ExportError::InvalidModel("the model has no class names".into()));
            }
            let mut vs = VarStore::new(device);
            let loaded = match arch.kind {
                ModelKind::Detect => {
                    let m = Detector::new(&(vs.root() / "model"), &arch, nc);
                    vs.load(weights).map_err(|e| ExportError::InvalidModel(format!("loading weights: {e}")))?;
                    vs.freeze();
                    Loaded::Detect(vs, m)
                }
                ModelKind::Classify => {
                    let m = Classifier::new(&(vs.root() / "model"), &arch, nc);
                    vs.load(weights).map_err(|e| ExportError::InvalidModel(format!("loading weights: {e}")))?;
                    vs.freeze();
                    Loaded::Classify(vs, m)
                }
            };
            Ok(loaded)
        }

        /// Inference output: detector `[B, 4 + nc, anchors]`, classifier `[B, nc]` probabilities.
        pub fn forward(&self, xs: &Tensor) -> Tensor {
            tch::no_grad(|| match self {
                Loaded::Detect(_, m) => m.predict(xs),
                Loaded::Classify(_, m) => m.probabilities(xs),
            })
        }

        fn var_store_mut(&mut self) -> &mut VarStore {
            match self {
                Loaded::Detect(vs, _) | Loaded::Classify(vs, _) => vs,
            }
        }

        /// Converts the weights to half precision (GPU inference).
        pub fn half(&mut self) {
            self.var_store_mut().half();
        }
    }

    /// Options shared by the formats.
    #[derive(Debug, Clone)]
    pub struct Options {
        /// Square input size (multiple of 32).
        pub imgsz: u32,
        /// Batch size of the example input (the fixed batch when not dynamic).
        pub batch: u32,
        /// Dynamic batch dimension.
        pub dynamic: bool,
        /// Half precision.
        pub half: bool,
        /// ONNX opset.
        pub opset: i64,
        /// INT8 (QDQ) quantisation follows (recorded in the Ultralytics metadata's `args`).
        pub int8: bool,
    }

    /// Traces the model and saves TorchScript to `path`.
    pub fn torchscript(model: &Loaded, opts: &Options, device: Device, path: &Path) -> Result<(), ExportError> {
        let kind = if opts.half { Kind::Half } else { Kind::Float };
        let s = i64::from(opts.imgsz);
        let example = Tensor::zeros([i64::from(opts.batch.max(1)), 3, s, s], (kind, device));
        let mut f = |inputs: &[Tensor]| vec![model.forward(&inputs[0])];
        let module = tch::CModule::create_by_tracing("Model", "forward", &[example], &mut f)?;
        Ok(module.save(path)?)
    }

    /// Ultralytics' ONNX metadata (Python literals), plus ours as JSON under `ocellus`.
    fn metadata(info: &ModelInfo, opts: &Options) -> Vec<(String, String)> {
        let quote = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
        let names: Vec<String> = info.names.iter().enumerate().map(|(i, n)| format!("{i}: {}", quote(n))).collect();
        let py_bool = |b: bool| if b { "True" } else { "False" };
        vec![
            ("description".into(), format!("Ocellus {} ({})", info.architecture, info.task)),
            ("author".into(), "Ocellus".into()),
            ("version".into(), env!("CARGO_PKG_VERSION").into()),
            ("license".into(), "Apache-2.0".into()),
            ("stride".into(), "32".into()),
            ("task".into(), info.task.clone()),
            ("batch".into(), opts.batch.to_string()),
            ("imgsz".into(), format!("[{0}, {0}]", opts.imgsz)),
            ("names".into(), format!("{{{}}}", names.join(", "))),
            (
                "args".into(),
                format!(
                    "{{'batch': {}, 'half': {}, 'int8': {}, 'dynamic': {}}}",
                    opts.batch,
                    py_bool(opts.half),
                    py_bool(opts.int8),
                    py_bool(opts.dynamic)
                ),
            ),
            ("channels".into(), "3".into()),
            ("ocellus".into(), serde_json::to_string(info).unwrap_or_default()),
        ]
    }

    /// An ONNX model before serialisation: its graph (which the INT8 pass rewrites), typed input
    /// and output, opset and metadata.
    #[derive(Debug, Clone)]
    pub struct OnnxModel {
        /// The graph.
        pub graph: Graph,
        input_dims: Vec<Dim>,
        output_dims: Vec<Dim>,
        opset: i64,
        metadata: Vec<(String, String)>,
    }

    impl OnnxModel {
        /// The serialised `ModelProto`.
        pub fn bytes(self) -> Vec<u8> {
            self.graph.into_model(
                (INPUT_NAME, &self.input_dims),
                (OUTPUT_NAME, &self.output_dims),
                self.opset,
                &self.metadata,
            )
        }
    }

    /// Writes the model as ONNX.
    pub fn onnx(model: &Loaded, info: &ModelInfo, opts: &Options) -> Result<Vec<u8>, ExportError> {
        Ok(onnx_model(model, info, opts)?.bytes())
    }

    /// The model as an ONNX graph, not yet serialised.
    pub fn onnx_model(model: &Loaded, info: &ModelInfo, opts: &Options) -> Result<OnnxModel, ExportError> {
        if !OPSETS.contains(&opts.opset) {
            return Err(ExportError::Unsupported(format!(
                "ONNX opset {} is not supported: use {} to {}",
                opts.opset,
                OPSETS.start(),
                OPSETS.end()
            )));
        }
        let mut g = Graph::default();
        g.half = opts.half;
        let s = i64::from(opts.imgsz);
        let batch = if opts.dynamic { Dim::Param("batch") } else { Dim::Fixed(i64::from(opts.batch.max(1))) };
        let (out, out_dims) = match model {
            Loaded::Detect(_, m) => {
                let anchors: i64 = [8, 16, 32].iter().map(|st| (s / st) * (s / st)).sum();
                (m.onnx(&mut g, INPUT_NAME, s), vec![batch.clone(), Dim::Fixed(4 + m.nc), Dim::Fixed(anchors)])
            }
            Loaded::Classify(_, m) => {
                (m.onnx(&mut g, INPUT_NAME), vec![batch.clone(), Dim::Fixed(info.names.len() as i64)])
            }
        };
        g.output_as(&out, OUTPUT_NAME);
        Ok(OnnxModel {
            graph: g,
            input_dims: vec![batch, Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)],
            output_dims: out_dims,
            opset: opts.opset,
            metadata: metadata(info, opts),
        })
    }
}
