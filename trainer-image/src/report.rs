//! How every subcommand ends: one JSON line on stdout and an exit code, the contract the
//! operator reads from a Job's pod (`ocellus_core::exit`).
//!
//! A subcommand returns `Result<Done, Failure>`; [`finish`] prints the last line, removes the
//! scratch directory, and maps the outcome to 0 (done), 2 (invalid input: retrying will not
//! help), 3 (transient) or 4 (paused).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use ocellus_core::{ErrorKind, exit};
use serde_json::json;

/// Prints one JSON line to stdout (progress, epoch, done, paused or error).
pub fn emit(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Why a subcommand failed: a CamelCase reason (the operator copies it into a condition), a
/// message for people, and whether retrying can help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Failure {
    /// Permanent (exit 2) or transient (exit 3).
    pub kind: ErrorKind,
    /// CamelCase reason, e.g. `ManifestNotFound`, `UnsupportedTask`, `StorageError`.
    pub reason: &'static str,
    /// What went wrong, naming the input.
    pub message: String,
}

#[cfg_attr(not(feature = "torch"), allow(dead_code, reason = "the libtorch subcommands use these"))]
impl Failure {
    /// Invalid input: retrying the same command gives the same answer.
    pub fn invalid(reason: &'static str, message: impl Into<String>) -> Failure {
        Failure { kind: ErrorKind::Permanent, reason, message: message.into() }
    }

    /// A failure of the environment (storage, network, scratch disk) that may pass.
    pub fn transient(message: impl Into<String>) -> Failure {
        Failure { kind: ErrorKind::Transient, reason: "StorageError", message: message.into() }
    }

    /// The same failure with a more specific reason when it is permanent (e.g. a missing object
    /// that is the manifest: `ManifestNotFound`).
    pub fn or_reason(self, reason: &'static str) -> Failure {
        match self.kind {
            ErrorKind::Permanent => Failure { reason, ..self },
            ErrorKind::Transient => self,
        }
    }
}

impl From<ocellus_storage::StorageError> for Failure {
    fn from(e: ocellus_storage::StorageError) -> Failure {
        Failure { kind: e.kind, reason: e.reason, message: e.message }
    }
}

impl From<ocellus_dataset::IngestError> for Failure {
    fn from(e: ocellus_dataset::IngestError) -> Failure {
        let kind = if e.is_transient() { ErrorKind::Transient } else { ErrorKind::Permanent };
        Failure { kind, reason: e.reason(), message: e.to_string() }
    }
}

/// How a subcommand that did not fail ended.
#[derive(Debug)]
pub enum Done {
    /// Finished: the `done` line's fields (without `event`).
    Finished(serde_json::Value),
    /// Stopped on SIGTERM after saving its state: the `paused` line's fields.
    #[cfg_attr(not(feature = "torch"), allow(dead_code, reason = "only `train` pauses"))]
    Paused(serde_json::Value),
}

/// The line and exit code of an outcome (pure, so the mapping is tested without a process).
pub fn outcome(result: &Result<Done, Failure>) -> (serde_json::Value, u8) {
    let with_event = |event: &str, fields: &serde_json::Value| {
        let mut line = json!({ "event": event });
        if let (Some(line), Some(fields)) = (line.as_object_mut(), fields.as_object()) {
            line.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        line
    };
    match result {
        Ok(Done::Finished(fields)) => (with_event("done", fields), exit::SUCCESS),
        Ok(Done::Paused(fields)) => (with_event("paused", fields), exit::PAUSED),
        Err(f) => (json!({"event": "error", "reason": f.reason, "message": f.message}), f.kind.exit_code()),
    }
}

/// Ends a subcommand: prints its last line, removes the scratch directory unless the run is
/// paused (a resume on the same machine reuses the fetched images), and returns the exit code.
pub fn finish(result: Result<Done, Failure>, work_dir: Option<&Path>) -> ExitCode {
    let (line, code) = outcome(&result);
    emit(line);
    if let (Some(dir), false) = (work_dir, matches!(result, Ok(Done::Paused(_)))) {
        let _ = std::fs::remove_dir_all(dir);
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_the_documented_lines_and_codes() {
        let done = outcome(&Ok(Done::Finished(json!({"epochs": 3}))));
        assert_eq!(done, (json!({"event": "done", "epochs": 3}), 0));
        let paused = outcome(&Ok(Done::Paused(json!({"epoch": 2}))));
        assert_eq!(paused, (json!({"event": "paused", "epoch": 2}), 4));
        let invalid = outcome(&Err(Failure::invalid("UnsupportedTask", "pose datasets are not supported")));
        assert_eq!(
            invalid,
            (json!({"event": "error", "reason": "UnsupportedTask", "message": "pose datasets are not supported"}), 2)
        );
        let transient = outcome(&Err(Failure::transient("connection reset")));
        assert_eq!(transient.1, 3);
        assert_eq!(transient.0["reason"], "StorageError");
    }

    #[test]
    fn storage_errors_keep_their_kind_and_only_permanent_ones_take_a_specific_reason() {
        let missing = ocellus_storage::StorageError {
            kind: ErrorKind::Permanent,
            reason: "NotFound",
            message: "s3://b/m.ndjson: no such object".into(),
        };
        let f = Failure::from(missing).or_reason("ManifestNotFound");
        assert_eq!((f.kind, f.reason), (ErrorKind::Permanent, "ManifestNotFound"));
        let down = Failure::transient("timed out").or_reason("ManifestNotFound");
        assert_eq!((down.kind, down.reason), (ErrorKind::Transient, "StorageError"));
    }
}
