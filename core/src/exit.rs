//! Exit codes of the workload processes (`ocellus-trainer` subcommands), the contract between a
//! Job's container and the operator that reads its termination state.

/// Finished successfully.
pub const SUCCESS: u8 = 0;
/// The input is invalid: retrying will not help (a permanent failure).
pub const INVALID: u8 = 2;
/// A transient failure (storage, network): retry with back-off.
pub const TRANSIENT: u8 = 3;
/// Stopped on SIGTERM after saving a checkpoint: a pause, not a failure.
pub const PAUSED: u8 = 4;
