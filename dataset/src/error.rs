//! Errors: fatal ingest errors, and per-item problems that are reported (and, by policy,
//! excluded) rather than silently dropped.

use serde::{Deserialize, Serialize};

use crate::archive::ArchiveError;

/// Why an ingest failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The source could not be fetched.
    #[error("fetching the source failed: {0}")]
    Fetch(String),
    /// The archive is unsafe or corrupt.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// No supported layout was found.
    #[error("unrecognised dataset layout: {0}")]
    Layout(String),
    /// The source's classes differ from the Dataset's `classNames`.
    #[error("class names in the source {found:?} do not match the Dataset's classNames {expected:?}")]
    ClassMismatch {
        /// From the Dataset spec.
        expected: Vec<String>,
        /// From the source.
        found: Vec<String>,
    },
    /// The task is not one the source's labels can express.
    #[error("{0}")]
    Task(String),
    /// `onInvalid: Fail` and an item was invalid, or too many items were invalid.
    #[error("{invalid} of {total} items are invalid (limit {limit}); first: {first}")]
    TooManyInvalid {
        /// Invalid items.
        invalid: usize,
        /// All items.
        total: usize,
        /// The allowed number.
        limit: usize,
        /// The first error, `file: reason`.
        first: String,
    },
    /// No valid image was found.
    #[error("the dataset has no valid images")]
    Empty,
    /// Object storage failed.
    #[error("object storage: {0}")]
    Storage(String),
    /// A version exists with different content.
    #[error("version {0} already exists with different content; versions are immutable")]
    VersionExists(String),
    /// Local I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl IngestError {
    /// A stable CamelCase reason for status conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::Fetch(_) => "FetchFailed",
            IngestError::Archive(_) => "UnsafeArchive",
            IngestError::Layout(_) => "UnknownLayout",
            IngestError::ClassMismatch { .. } => "ClassMismatch",
            IngestError::Task(_) => "TaskMismatch",
            IngestError::TooManyInvalid { .. } => "TooManyInvalidItems",
            IngestError::Empty => "NoValidImages",
            IngestError::Storage(_) => "StorageError",
            IngestError::VersionExists(_) => "VersionExists",
            IngestError::Io(_) => "IoError",
        }
    }

    /// Whether retrying the same input could succeed (network and storage errors).
    pub fn is_transient(&self) -> bool {
        matches!(self, IngestError::Fetch(_) | IngestError::Storage(_) | IngestError::Io(_))
    }
}

/// Kinds of per-item problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ItemErrorKind {
    /// The image does not decode.
    CorruptImage,
    /// Not JPEG, PNG, WebP or BMP.
    UnsupportedImageFormat,
    /// Over the byte or pixel cap.
    ImageTooLarge,
    /// A class index outside `0..classes`.
    ClassOutOfRange,
    /// NaN or infinite coordinate.
    NonFiniteCoordinate,
    /// A normalised coordinate outside `[0, 1]`, or a non-positive size.
    CoordinateOutOfRange,
    /// A row with the wrong number of values for the task.
    BadLabelRow,
    /// A polygon with fewer than 3 points or an odd number of values.
    BadPolygon,
    /// A label file or annotation without its image.
    MissingImage,
    /// The same image content appears more than once.
    Duplicate,
    /// An annotation the task cannot use (e.g. RLE masks).
    UnsupportedAnnotation,
}

impl ItemErrorKind {
    /// The CamelCase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemErrorKind::CorruptImage => "CorruptImage",
            ItemErrorKind::UnsupportedImageFormat => "UnsupportedImageFormat",
            ItemErrorKind::ImageTooLarge => "ImageTooLarge",
            ItemErrorKind::ClassOutOfRange => "ClassOutOfRange",
            ItemErrorKind::NonFiniteCoordinate => "NonFiniteCoordinate",
            ItemErrorKind::CoordinateOutOfRange => "CoordinateOutOfRange",
            ItemErrorKind::BadLabelRow => "BadLabelRow",
            ItemErrorKind::BadPolygon => "BadPolygon",
            ItemErrorKind::MissingImage => "MissingImage",
            ItemErrorKind::Duplicate => "Duplicate",
            ItemErrorKind::UnsupportedAnnotation => "UnsupportedAnnotation",
        }
    }
}

/// One invalid item: which file, what kind, and the detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemError {
    /// Path inside the dataset (archive-relative).
    pub file: String,
    /// Kind.
    pub kind: ItemErrorKind,
    /// Detail, e.g. `line 3: class 7 is out of range 0..3`.
    pub detail: String,
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.file, self.detail, self.kind.as_str())
    }
}
