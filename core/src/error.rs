//! The one distinction every layer makes about a failure: will retrying help?

/// Whether a failure is worth retrying.
///
/// Workloads turn it into their exit code ([`crate::exit`]); the operator turns the exit code
/// back into a permanent failure (wait for a spec change) or a retry with back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input is wrong (missing object, corrupt file, invalid value): retrying the same
    /// request gives the same answer.
    Permanent,
    /// The environment failed (storage unreachable, timeout): the same request may succeed later.
    Transient,
}

impl ErrorKind {
    /// The process exit code that reports a failure of this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Permanent => crate::exit::INVALID,
            ErrorKind::Transient => crate::exit::TRANSIENT,
        }
    }
}

/// Implemented by error types that know whether retrying can help.
pub trait Classify {
    /// The kind of this failure.
    fn kind(&self) -> ErrorKind;
}
