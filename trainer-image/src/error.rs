//! Typed errors of the trainer's libraries. The binary maps each to a reason and an exit code
//! (`report::Failure`); the libraries never decide how a process ends.

use std::path::PathBuf;

/// A malformed architecture, optimiser or similar name (shown by clap as the flag's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// Why training or validation stopped.
#[cfg(feature = "torch")]
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A libtorch call failed (shape mismatch, out of memory, a CUDA error).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// An image could not be read or decoded.
    #[error("image {}: {message}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// The data loader failed outside any one image.
    #[error("data loader: {0}")]
    DataLoader(String),
    /// The loss became NaN or infinite: the run diverged.
    #[error("loss became non-finite at epoch {epoch} batch {batch}")]
    NonFinite {
        /// 1-based epoch.
        epoch: usize,
        /// 0-based batch within the epoch.
        batch: usize,
    },
    /// A checkpoint does not belong to this run (architecture, classes, missing tensors).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The starting weights of a fine-tune fit nothing in the model.
    #[error("starting weights: {0}")]
    StartWeights(String),
    /// The model cannot do what was asked of it (e.g. a detector API on a classifier).
    #[error("{0}")]
    Unsupported(String),
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A libtorch call failed while loading, tracing or saving.
    #[cfg(feature = "torch")]
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The weights or their model info do not describe a model Ocellus can build.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// An option the format does not support (opset, precision).
    #[error("{0}")]
    Unsupported(String),
    /// TensorRT is not installed where the export runs.
    #[error("{0}")]
    TensorRtUnavailable(String),
    /// TensorRT's builder refused the network.
    #[error("TensorRT build failed: {0}")]
    TensorRt(String),
    /// ONNX Runtime (calibration, accuracy gate) could not be loaded or failed.
    #[error("ONNX Runtime: {0}")]
    OnnxRuntime(String),
    /// INT8 calibration or the QDQ rewrite failed.
    #[error("INT8 quantisation: {0}")]
    Quantization(String),
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
