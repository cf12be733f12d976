//! Object storage for Ocellus workloads: an S3-compatible client ([`s3`]) and locations that are
//! either an `s3://` URI or a local path ([`location`]), with errors that say whether retrying
//! can help ([`ocellus_core::ErrorKind`]).
//!
//! No Kubernetes dependency: the trainer, the predictor and the dataset library use it; the
//! control plane passes the settings to them as environment variables.

pub mod location;
pub mod s3;

pub use location::{FetchOptions, Location, Storage, StorageError};
pub use s3::{S3Config, S3Uri, Store, StoreCause, StoreError};
