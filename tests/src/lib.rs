//! Test support: locating the tools the setup step installs under `~/.cache/ocellus`.

use std::path::PathBuf;

/// Root of the tool cache (`$OCELLUS_CACHE`, else `~/.cache/ocellus`).
pub fn cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("OCELLUS_CACHE") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/ocellus")
}

/// Path of a cached tool binary (`helm`, `kubectl`, ...), if the setup step installed it.
pub fn tool(name: &str) -> Option<PathBuf> {
    let p = cache_dir().join("bin").join(name);
    p.exists().then_some(p)
}

/// Like [`tool`], but panics with the command that installs it. Tests use this: a missing tool is
/// a broken setup, never a reason to skip.
pub fn require_tool(name: &str) -> PathBuf {
    tool(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed under {}; run `hack/setup.sh tools` (the README test command does)",
            cache_dir().display()
        )
    })
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[cfg(feature = "cluster")]
pub mod cluster;
#[cfg(feature = "cluster")]
pub mod manifests;
#[cfg(feature = "cluster")]
pub mod node;
pub mod proc;
#[cfg(feature = "cluster")]
pub mod status;

/// Polls `f` every 100 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Path of a workspace binary built by `cargo build` (the test command builds them first).
pub fn workspace_binary(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| repo_root().join("target"));
    let p = target.join("debug").join(name);
    assert!(p.exists(), "{} is missing: run `cargo build` first (hack/test.sh does)", p.display());
    p
}
/// Runs one of our JSON-lines CLIs (e.g. `ocellus-trainer train ...`) against `s3` with the
/// `platform` bucket; returns the exit code, the JSON lines of its stdout, and its stderr.
pub fn run_json_cli(bin: &std::path::Path, args: &[&str], s3: &s3::S3Server) -> (i32, Vec<serde_json::Value>, String) {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args).envs(s3.env()).env("OCELLUS_S3_BUCKET", "platform");
    // The ONNX Runtime that `hack/setup.sh` installs (INT8 calibration and its accuracy gate).
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        cmd.env("ORT_DYLIB_PATH", cache_dir().join("lib/libonnxruntime.so"));
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let lines = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (out.status.code().unwrap_or(-1), lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

pub mod fixtures;
pub mod s3;
pub mod ultralytics;

/// Waits for Ctrl-C or SIGTERM (how the foreground tools are stopped).
pub async fn stop_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
