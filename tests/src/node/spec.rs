//! Pure translation of a container spec into a local process: image mapping, `$(VAR)`
//! expansion, argv, and the pod phase that follows from container states.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Maps image repositories to local binaries.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageMap {
    /// Mappings, matched on the image repository (tag and digest ignored).
    #[serde(default)]
    pub images: Vec<ImageMapping>,
}

/// One image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageMapping {
    /// Repository, e.g. `ghcr.io/ocellus-dev/ocellus-predictor` or `busybox`.
    pub image: String,
    /// The image's entrypoint. When unset, the container's `command[0]` is looked up on PATH
    /// (like a base image whose commands are the host's).
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// The image's own environment (a Dockerfile's `ENV`), under the container's `env`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl ImageMap {
    /// Reads a YAML mapping file.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<ImageMap> {
        Ok(serde_yaml::from_str(&std::fs::read_to_string(path)?)?)
    }

    /// The mapping for `image`, if any.
    pub fn resolve(&self, image: &str) -> Option<&ImageMapping> {
        let repo = repository(image);
        self.images.iter().find(|m| m.image == repo)
    }
}

/// The repository part of an image reference (`reg:5000/a/b:tag@sha256:..` → `reg:5000/a/b`).
pub fn repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rfind(':') {
        // A colon after the last slash is a tag; before it, a registry port.
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

/// Kubernetes `$(VAR)` expansion: defined variables are replaced, `$$` escapes, anything else
/// is left as written.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if bytes[i + 1] == b'('
                && let Some(end) = input[i + 2..].find(')')
            {
                let name = &input[i + 2..i + 2 + end];
                if let Some(v) = vars.get(name) {
                    out.push_str(v);
                    i += 2 + end + 1;
                    continue;
                }
            }
        }
        let ch = input[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Why a container cannot be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    /// Kubelet-style waiting reason (`ErrImagePull`, `CreateContainerError`, ...).
    pub reason: &'static str,
    /// Message.
    pub message: String,
}

/// A listen address for "every address" (`0.0.0.0:<port>`) made the pod's own: in a real pod
/// it binds the pod's network namespace only; here pods share the host's, and it would take the
/// port on every loopback address, other pods' included.
pub fn pod_local(value: &str, pod_ip: &str) -> String {
    const ANY: &str = "0.0.0.0:";
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find(ANY) {
        // Only a whole address: not the tail of `10.0.0.0:`.
        let whole = !rest[..at].ends_with(|c: char| c.is_ascii_digit() || c == '.');
        out.push_str(&rest[..at]);
        out.push_str(if whole { pod_ip } else { "0.0.0.0" });
        out.push(':');
        rest = &rest[at + ANY.len()..];
    }
    out.push_str(rest);
    out
}

/// The argv of a container: the image's entrypoint unless `command` overrides it, then `args`,
/// all expanded against `vars`.
pub fn argv(
    images: &ImageMap,
    image: &str,
    command: &[String],
    args: &[String],
    vars: &BTreeMap<String, String>,
) -> Result<Vec<String>, StartError> {
    let Some(mapping) = images.resolve(image) else {
        return Err(StartError {
            reason: "ErrImagePull",
            message: format!("image {image:?} is not mapped to a local binary in the node's image map"),
        });
    };
    let mut argv: Vec<String> = if !command.is_empty() {
        command.iter().map(|c| expand(c, vars)).collect()
    } else if let Some(bin) = &mapping.binary {
        vec![bin.display().to_string()]
    } else {
        return Err(StartError {
            reason: "CreateContainerError",
            message: format!("image {image:?} has no entrypoint: set the container's command"),
        });
    };
    argv.extend(args.iter().map(|a| expand(a, vars)));
    Ok(argv)
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerOutcome {
    /// Not finished (waiting, running, or to be restarted).
    Active,
    /// Exited with this code and will not be restarted.
    Done(i32),
}

/// Pod phase from the container outcomes (`restartPolicy` already applied to them).
pub fn pod_phase(started: bool, outcomes: &[ContainerOutcome]) -> &'static str {
    if !started {
        return "Pending";
    }
    if outcomes.contains(&ContainerOutcome::Active) {
        return "Running";
    }
    if outcomes.iter().all(|o| *o == ContainerOutcome::Done(0)) { "Succeeded" } else { "Failed" }
}

/// Whether a container that exited with `code` is restarted under `policy`.
pub fn should_restart(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

/// Kubelet's crash-loop back-off: 10 s doubling to 5 min (`restarts` ≥ 1).
pub fn backoff(restarts: i32) -> std::time::Duration {
    let secs = 10u64.saturating_mul(1u64 << restarts.clamp(1, 6).saturating_sub(1));
    std::time::Duration::from_secs(secs.min(300))
}

/// The end of a log as the kubelet takes it for a termination message: the last `lines` lines,
/// then at most the last `bytes` bytes of those (cut on a character boundary), without the
/// trailing newline.
pub fn log_tail(log: &[u8], lines: usize, bytes: usize) -> String {
    let text = String::from_utf8_lossy(log);
    let trimmed = text.trim_end_matches('\n');
    let start =
        trimmed.char_indices().filter(|&(_, c)| c == '\n').map(|(i, _)| i + 1).rev().nth(lines - 1).unwrap_or(0);
    let tail = &trimmed[start..];
    let mut cut = tail.len().saturating_sub(bytes);
    while !tail.is_char_boundary(cut) {
        cut += 1;
    }
    tail[cut..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [("POD_IP".to_string(), "127.0.3.4".to_string()), ("PORT".to_string(), "8080".to_string())].into()
    }

    #[test]
    fn repository_strips_tag_and_digest_not_port() {
        assert_eq!(repository("busybox"), "busybox");
        assert_eq!(repository("busybox:1.36"), "busybox");
        assert_eq!(repository("ghcr.io/o/p:0.1.0"), "ghcr.io/o/p");
        assert_eq!(repository("reg:5000/o/p"), "reg:5000/o/p");
        assert_eq!(repository("reg:5000/o/p:v1@sha256:abc"), "reg:5000/o/p");
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        assert_eq!(expand("--listen=$(POD_IP):$(PORT)", &vars()), "--listen=127.0.3.4:8080");
        assert_eq!(pod_local("0.0.0.0:8080", "127.0.3.4"), "127.0.3.4:8080", "a pod binds its own address");
        assert_eq!(pod_local("--metrics=0.0.0.0:9090", "127.0.3.4"), "--metrics=127.0.3.4:9090");
        assert_eq!(pod_local("10.0.0.0:80", "127.0.3.4"), "10.0.0.0:80");
        assert_eq!(expand("$(UNDEFINED) stays", &vars()), "$(UNDEFINED) stays");
        assert_eq!(expand("$$(POD_IP) is escaped", &vars()), "$(POD_IP) is escaped");
        assert_eq!(expand("a $ b $(", &vars()), "a $ b $(");
        assert_eq!(expand("ünïcode $(PORT)", &vars()), "ünïcode 8080");
    }

    #[test]
    fn argv_uses_entrypoint_unless_command_is_set() {
        let map = ImageMap {
            images: vec![
                ImageMapping { image: "srv".into(), binary: Some("/bin/srv".into()), env: Default::default() },
                ImageMapping { image: "busybox".into(), binary: None, env: Default::default() },
            ],
        };
        let a = argv(&map, "srv:1", &[], &["--port=$(PORT)".into()], &vars()).expect("argv");
        assert_eq!(a, ["/bin/srv", "--port=8080"]);
        let a = argv(&map, "busybox", &["sh".into(), "-c".into()], &["exit 3".into()], &vars()).expect("argv");
        assert_eq!(a, ["sh", "-c", "exit 3"]);
        assert_eq!(argv(&map, "busybox", &[], &[], &vars()).expect_err("no entrypoint").reason, "CreateContainerError");
        assert_eq!(argv(&map, "nginx:1.27", &[], &[], &vars()).expect_err("unmapped").reason, "ErrImagePull");
    }

    #[test]
    fn phases_and_restarts() {
        use ContainerOutcome::*;
        assert_eq!(pod_phase(false, &[Active]), "Pending");
        assert_eq!(pod_phase(true, &[Active, Done(0)]), "Running");
        assert_eq!(pod_phase(true, &[Done(0), Done(0)]), "Succeeded");
        assert_eq!(pod_phase(true, &[Done(0), Done(3)]), "Failed");
        assert!(should_restart("Always", 0) && should_restart("OnFailure", 1));
        assert!(!should_restart("OnFailure", 0) && !should_restart("Never", 1));
        assert_eq!(backoff(1).as_secs(), 10);
        assert_eq!(backoff(2).as_secs(), 20);
        assert_eq!(backoff(20).as_secs(), 300);
    }

    #[test]
    fn log_tail_keeps_the_last_lines_and_bytes() {
        assert_eq!(log_tail(b"a\nb\nc\n", 2, 2048), "b\nc");
        assert_eq!(log_tail(b"a\nb\nc", 80, 2048), "a\nb\nc");
        assert_eq!(log_tail(b"abcdef\n", 80, 3), "def");
        assert_eq!(log_tail("xé".as_bytes(), 80, 1), "");
        assert_eq!(log_tail(b"", 80, 2048), "");
    }
}
