//! The trainer image's library: the libtorch model code, training and export (`torch` feature),
//! and the ONNX writer. Errors are typed ([`error`]); the binary decides exit codes.

pub mod checkpoint;
pub mod error;
pub mod export;
#[cfg(feature = "torch")]
pub mod import;
#[cfg(feature = "torch")]
pub mod loss;
#[cfg(feature = "torch")]
pub mod model;
#[cfg(feature = "torch")]
pub mod train;
