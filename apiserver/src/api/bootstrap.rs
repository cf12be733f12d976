//! The bootstrap admin key: the first key of an installation, made by the Helm chart.
//!
//! The chart generates a plaintext key once (kept across upgrades), stores it in its own Secret,
//! prints the command that reads it in the `helm install` NOTES, and mounts it into the
//! apiserver as a file (`--bootstrap-api-key-file`). At start the apiserver reads the file,
//! and [`ensure`] makes the key Secret of its hash exist (`ocellus-api-key-<id>`, role `admin`,
//! bound to `--bootstrap-api-key-namespace`, label `ocellus.dev/api-key-bootstrap=true`). The
//! key itself is never logged; its public prefix is.
//!
//! The chart owns this key: the API refuses to revoke it (409), a changed key in the chart
//! replaces the old record (rotation), and a chart without one removes it (disabling it).

use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::keys::{KeyId, KeyIndex, KeyRecord, Keys, PlaintextKey, Role, is_namespace_name};
use super::secrets::{SecretWriter, WriteError};

/// The name the bootstrap key's record carries.
pub const BOOTSTRAP_KEY_NAME: &str = "bootstrap (Helm chart)";

/// Why the bootstrap key could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The file could not be read.
    #[error("reading the bootstrap API key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a `ul_` key (its content is not repeated here).
    #[error("the bootstrap API key file {path} does not hold 'ul_' followed by 40 lowercase hex characters")]
    Malformed {
        /// The file.
        path: String,
    },
    /// `--bootstrap-api-key-namespace` is not a namespace name.
    #[error("the bootstrap API key namespace {0:?} is not a Kubernetes namespace name")]
    Namespace(String),
    /// A key that is not the bootstrap key has the same id; the chart's key must be rotated.
    #[error(
        "another API key has the bootstrap key's id {0}; generate a new bootstrap key in the chart (apiKeys.bootstrap)"
    )]
    IdTaken(KeyId),
    /// The Kubernetes API failed.
    #[error("writing the bootstrap API key Secret: {0}")]
    Write(#[from] WriteError),
}

/// Reads the bootstrap key from `path` (surrounding whitespace, such as a final newline, is
/// ignored).
pub fn read_key_file(path: &Path) -> Result<PlaintextKey, BootstrapError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| BootstrapError::Read { path: shown.clone(), source })?;
    PlaintextKey::parse(text.trim()).map_err(|_| BootstrapError::Malformed { path: shown })
}

/// What [`ensure`] changes.
#[derive(Debug, Default)]
pub struct BootstrapPlan {
    /// Key records to delete first (stale bootstrap keys, or the key's own record when it must
    /// be rewritten).
    pub delete: Vec<KeyId>,
    /// The record to create, when the current one is missing or differs.
    pub create: Option<KeyRecord>,
}

/// Plans the bootstrap from the existing records: the record of `key` (admin of `namespace`,
/// bootstrap-labelled) must exist, and no other bootstrap record may. With `key` `None`, every
/// bootstrap record goes.
pub fn plan(
    existing: &KeyIndex,
    key: Option<&PlaintextKey>,
    namespace: &str,
    now: DateTime<Utc>,
) -> Result<BootstrapPlan, BootstrapError> {
    if !is_namespace_name(namespace) {
        return Err(BootstrapError::Namespace(namespace.to_string()));
    }
    let mut plan = BootstrapPlan::default();
    let current = key.map(|k| (k, k.id()));
    for r in existing.records() {
        let is_ours = current.as_ref().is_some_and(|(_, id)| *id == r.id);
        if r.bootstrap && !is_ours {
            plan.delete.push(r.id.clone());
        }
    }
    if let Some((k, id)) = current {
        match existing.get(&id) {
            Some(r) if !r.matches(k) && !r.bootstrap => return Err(BootstrapError::IdTaken(id)),
            Some(r) if r.matches(k) && r.bootstrap && r.role == Role::Admin && r.namespace == namespace => {}
            other => {
                if other.is_some() {
                    plan.delete.push(id);
                }
                let mut record = KeyRecord::new(k, namespace, Role::Admin, BOOTSTRAP_KEY_NAME, now);
                record.bootstrap = true;
                plan.create = Some(record);
            }
        }
    }
    plan.delete.sort();
    Ok(plan)
}

/// Makes the bootstrap key's record exist (and stale ones not), reading the current records
/// from the API server through `writer`, and tells `keys` at once.
pub async fn ensure(
    writer: &dyn SecretWriter,
    keys: &Keys,
    release_namespace: &str,
    key: Option<&PlaintextKey>,
    namespace: &str,
) -> Result<BootstrapPlan, BootstrapError> {
    let existing = KeyIndex::from_secrets(writer.list().await?);
    let plan = plan(&existing, key, namespace, Utc::now())?;
    for id in &plan.delete {
        match writer.delete(&id.secret_name()).await {
            Ok(()) | Err(WriteError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        keys.revoked(id);
        tracing::info!(key = %id.prefix(), "removed a bootstrap API key record the chart no longer provides");
    }
    if let Some(record) = &plan.create {
        writer.create(record.to_secret(release_namespace)).await?;
        keys.created(record.clone(), Instant::now());
        tracing::info!(key = %record.id.prefix(), namespace = %record.namespace, "registered the bootstrap admin API key");
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::secrets::MemorySecrets;

    fn key(n: u8) -> PlaintextKey {
        PlaintextKey::from_bytes([n; 20])
    }

    #[tokio::test]
    async fn creates_once_then_leaves_it_alone() {
        let m = MemorySecrets::new();
        let keys = Keys::new();
        let k = key(1);
        let p = ensure(&m, &keys, "rel", Some(&k), "default").await.expect("ensure");
        assert!(p.create.is_some() && p.delete.is_empty());
        let secrets = m.secrets();
        assert_eq!(secrets.len(), 1);
        let r = KeyRecord::from_secret(&secrets[0]).expect("record");
        assert!(r.matches(&k) && r.bootstrap && r.role == Role::Admin && r.namespace == "default");
        assert_eq!(secrets[0].metadata.namespace.as_deref(), Some("rel"));
        assert!(keys.authenticate(&k).is_some(), "usable before the watch lists it");
        let p = ensure(&m, &keys, "rel", Some(&k), "default").await.expect("again");
        assert!(p.create.is_none() && p.delete.is_empty(), "{p:?}");
    }

    #[tokio::test]
    async fn a_rotated_key_replaces_the_old_one_and_none_removes_it() {
        let m = MemorySecrets::new();
        let keys = Keys::new();
        ensure(&m, &keys, "rel", Some(&key(1)), "default").await.expect("first");
        let p = ensure(&m, &keys, "rel", Some(&key(2)), "default").await.expect("rotate");
        assert_eq!(p.delete, vec![key(1).id()]);
        let index = KeyIndex::from_secrets(m.secrets());
        assert!(index.authenticate(&key(1)).is_none(), "the old bootstrap key is gone");
        assert!(index.authenticate(&key(2)).is_some());
        assert!(keys.authenticate(&key(1)).is_none());
        // Moved to another namespace: rewritten.
        let p = ensure(&m, &keys, "rel", Some(&key(2)), "team-a").await.expect("move");
        assert_eq!(p.delete, vec![key(2).id()]);
        assert_eq!(KeyIndex::from_secrets(m.secrets()).authenticate(&key(2)).expect("k").namespace, "team-a");
        // Disabled in the chart: removed.
        ensure(&m, &keys, "rel", None, "default").await.expect("disable");
        assert!(m.secrets().is_empty());
    }

    #[tokio::test]
    async fn other_keys_are_kept_and_an_id_collision_is_refused() {
        let m = MemorySecrets::new();
        let keys = Keys::new();
        let user = KeyRecord::new(&key(3), "team-a", Role::Editor, "ci", Utc::now());
        m.create(user.to_secret("rel")).await.expect("user key");
        ensure(&m, &keys, "rel", Some(&key(1)), "default").await.expect("bootstrap");
        ensure(&m, &keys, "rel", None, "default").await.expect("disable");
        assert_eq!(m.secrets().len(), 1, "a user's key is not the bootstrap's to remove");
        // Same id as the user's key, different secret part.
        let mut s = key(3).expose().to_string();
        s.replace_range(42..43, "f");
        let colliding = PlaintextKey::parse(&s).expect("format");
        let e = ensure(&m, &keys, "rel", Some(&colliding), "default").await.expect_err("collision");
        assert!(matches!(e, BootstrapError::IdTaken(_)), "{e}");
        assert!(!e.to_string().contains(&s[3..]), "{e}");
    }

    #[test]
    fn the_namespace_is_checked() {
        let e = plan(&KeyIndex::default(), Some(&key(1)), "Not_A_Namespace", Utc::now()).expect_err("ns");
        assert!(matches!(e, BootstrapError::Namespace(_)));
    }

    #[test]
    fn the_key_file_is_read_trimmed_and_its_content_never_repeated() {
        let dir = std::env::temp_dir().join(format!("ocellus-bootstrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good");
        std::fs::write(&good, format!("{}\n", key(4).expose())).expect("write");
        assert_eq!(read_key_file(&good).expect("read"), key(4));
        let bad = dir.join("bad");
        std::fs::write(&bad, "ul_not-a-key-but-secret-stuff").expect("write");
        let e = read_key_file(&bad).expect_err("malformed");
        assert!(!e.to_string().contains("secret-stuff"), "{e}");
        assert!(matches!(read_key_file(&dir.join("absent")), Err(BootstrapError::Read { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }
}
