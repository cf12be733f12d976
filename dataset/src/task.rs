//! The vision task: the CRDs' own type, so the API and the ingest agree on it.

pub use ocellus_crds::Task;
