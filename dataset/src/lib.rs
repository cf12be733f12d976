//! Dataset ingest for Ocellus: the checks at a Dataset's door.
//!
//! [`ingest::ingest`] fetches a source (S3 object or prefix, HTTPS URL, local path), extracts
//! archives safely ([`archive`]), detects the layout (YOLO, COCO, class folders: [`layout`]),
//! validates every image ([`image_check`]) and label ([`labels`], [`coco`]), assigns splits
//! ([`split`]), stores images content-addressed and writes the normalised NDJSON manifest
//! ([`manifest`]) and a summary with statistics ([`stats`]) to S3 (`ocellus-storage`).
//! [`version::freeze`] snapshots a manifest as an immutable version.

pub mod archive;
pub mod coco;
pub mod error;
pub mod fetch;
pub mod image_check;
pub mod ingest;
pub mod labels;
pub mod layout;
pub mod manifest;
pub mod split;
pub mod stats;
pub mod task;
pub mod version;

pub use error::{IngestError, ItemError, ItemErrorKind};
pub use task::Task;
