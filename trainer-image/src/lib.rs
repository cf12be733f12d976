//! The trainer image's library: the libtorch model code, training and export (`torch` feature),
//! and the ONNX writer.

pub mod export;
#[cfg(feature = "torch")]
pub mod loss;
#[cfg(feature = "torch")]
pub mod model;
#[cfg(feature = "torch")]
pub mod train;
