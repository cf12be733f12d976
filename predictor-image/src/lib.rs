//! The predictor: one exported model served over HTTP.
//!
//! - [`source`] fetches the artifact and its model info (S3 or a local path, SHA-256 checked);
//! - [`backend`] runs it (ONNX Runtime, libtorch, TensorRT) on model threads fed by
//!   [`batcher`]'s bounded queue with dynamic batching;
//! - [`pipeline`] is the pure pre/post-processing (decode, letterbox, NMS, box mapping);
//! - [`api`] speaks Ultralytics predict, Open Inference Protocol v2, Roboflow's inference server
//!   and the Label Studio ML
//!   backend protocol; [`metrics`] exports Prometheus metrics.

pub mod api;
pub mod backend;
pub mod batcher;
pub mod cpu;
pub mod metrics;
pub mod pipeline;
pub mod source;

pub use api::{AppState, app};
