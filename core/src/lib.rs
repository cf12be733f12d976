//! Plain types shared by every Ocellus layer: the API types in `ocellus-crds`, the workloads
//! (trainer, predictor) and the pure libraries (`dataset`, `vision`, `storage`).
//!
//! This crate has no Kubernetes or HTTP dependency, so a workload can use the API's own
//! vocabulary without linking the control plane; `ocellus-crds` re-exports these types.

pub mod error;
pub mod exit;
mod types;

pub use error::ErrorKind;
pub use types::{CheckpointKind, ExportFormat, Task};
