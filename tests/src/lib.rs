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
        panic!("{name} is not installed under {}; run `hack/setup.sh tools` (the README test command does)", cache_dir().display())
    })
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub mod manifests;
