//! The vision task: the API's own type (from `ocellus-core`, which the CRDs re-export), so the
//! API and the ingest agree on it without the ingest linking Kubernetes.

pub use ocellus_core::Task;
