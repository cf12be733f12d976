//! API keys: the key format, the stored record, its Kubernetes Secret, roles, and the in-memory
//! index every request is authenticated against.
//!
//! A key is `ul_` followed by 40 lowercase hex characters (160 bits from the operating system's
//! CSPRNG), the Ultralytics Platform format. The first 8 hex characters are the key's **id**:
//! public, shown in lists (as the prefix `ul_<id>`), used to revoke it and to find its record;
//! the remaining 128 bits are what the hash protects. Only the SHA-256 of the whole key is ever
//! stored, and presented keys are checked by comparing hashes in constant time
//! ([`KeyHash::ct_eq`]; [`KeyHash`] has no `==` on purpose).
//!
//! # The Secret
//!
//! One Secret per key in the release namespace (the apiserver's own), named
//! `ocellus-api-key-<id>`, of type `ocellus.dev/api-key`:
//!
//! | where | key | value |
//! | --- | --- | --- |
//! | label | `ocellus.dev/api-key` | `"true"` (what the apiserver's watch selects) |
//! | label | `ocellus.dev/api-key-namespace` | the namespace (workspace) the key acts in |
//! | label | `ocellus.dev/api-key-role` | `viewer`, `editor` or `admin` |
//! | label | `ocellus.dev/api-key-bootstrap` | `"true"` on the chart's bootstrap key only |
//! | label | `app.kubernetes.io/managed-by` | `ocellus-apiserver` |
//! | annotation | `ocellus.dev/api-key-name` | the name given at creation (free text) |
//! | annotation | `ocellus.dev/api-key-created` | creation time, RFC 3339 UTC |
//! | data | `sha256` | the lowercase hex SHA-256 of the whole key |
//!
//! Namespace and role are labels so that `kubectl get secrets -l
//! ocellus.dev/api-key-namespace=team-a` lists a workspace's keys; each fact is stored once.
//! Revoking a key deletes its Secret: the watch drops it, and the replica that revoked it
//! refuses it at once ([`Keys::revoked`]).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every key starts with (the Ultralytics Platform format).
pub const KEY_PREFIX: &str = "ul_";
/// Hex characters after [`KEY_PREFIX`].
pub const KEY_HEX_LEN: usize = 40;
/// Hex characters of the id (the start of the hex part).
pub const KEY_ID_LEN: usize = 8;
/// Name of a key's Secret: this, then the id.
pub const SECRET_NAME_PREFIX: &str = "ocellus-api-key-";
/// `type` of key Secrets.
pub const SECRET_TYPE: &str = "ocellus.dev/api-key";
/// Label marking key Secrets (value `"true"`).
pub const KEY_LABEL: &str = "ocellus.dev/api-key";
/// The label selector of key Secrets, for the watch and lists.
pub const KEY_SELECTOR: &str = "ocellus.dev/api-key=true";
/// Label: the namespace (workspace) the key acts in.
pub const NAMESPACE_LABEL: &str = "ocellus.dev/api-key-namespace";
/// Label: the key's role.
pub const ROLE_LABEL: &str = "ocellus.dev/api-key-role";
/// Label: `"true"` on the bootstrap key, which the chart (not the API) manages.
pub const BOOTSTRAP_LABEL: &str = "ocellus.dev/api-key-bootstrap";
/// Annotation: the key's name.
pub const NAME_ANNOTATION: &str = "ocellus.dev/api-key-name";
/// Annotation: when the key was created (RFC 3339).
pub const CREATED_ANNOTATION: &str = "ocellus.dev/api-key-created";
/// `data` entry holding the hex SHA-256.
pub const HASH_DATA_KEY: &str = "sha256";
/// Field manager of the apiserver's writes.
pub const FIELD_MANAGER: &str = "ocellus-apiserver";

/// A plaintext key. Exists in memory only while a key is created (returned once) or presented;
/// its `Debug` shows the prefix alone so that it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct PlaintextKey(String);

/// The operating system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(getrandom::Error);

/// A presented string that is not `ul_` + 40 lowercase hex characters. Carries nothing of
/// the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an API key: expected 'ul_' followed by 40 lowercase hex characters")]
pub struct MalformedKey;

impl PlaintextKey {
    /// A new key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, RandomError> {
        let mut bytes = [0u8; KEY_HEX_LEN / 2];
        getrandom::fill(&mut bytes).map_err(RandomError)?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key for 20 given random bytes (tests, and [`PlaintextKey::generate`]).
    pub fn from_bytes(bytes: [u8; KEY_HEX_LEN / 2]) -> Self {
        PlaintextKey(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
    }

    /// Checks the format: `ul_` and exactly 40 lowercase hex characters.
    pub fn parse(s: &str) -> Result<Self, MalformedKey> {
        let hex = s.strip_prefix(KEY_PREFIX).ok_or(MalformedKey)?;
        if hex.len() == KEY_HEX_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(PlaintextKey(s.to_string()))
        } else {
            Err(MalformedKey)
        }
    }

    /// The key itself: to return to its creator once, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The public id (8 hex characters after `ul_`).
    pub fn id(&self) -> KeyId {
        KeyId(self.0[KEY_PREFIX.len()..KEY_PREFIX.len() + KEY_ID_LEN].to_string())
    }

    /// SHA-256 of the whole key.
    pub fn hash(&self) -> KeyHash {
        KeyHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for PlaintextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlaintextKey({}…)", self.id().prefix())
    }
}

/// A key's public id: the first 8 hex characters after `ul_`. Names its Secret and appears in
/// lists, logs and revocations; reveals 32 of the key's 160 bits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// Parses an id (8 lowercase hex characters), as sent to revoke a key.
    pub fn parse(s: &str) -> Option<KeyId> {
        (s.len() == KEY_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| KeyId(s.to_string()))
    }

    /// The id of the Secret named `name`, if it is a key Secret's name.
    pub fn from_secret_name(name: &str) -> Option<KeyId> {
        KeyId::parse(name.strip_prefix(SECRET_NAME_PREFIX)?)
    }

    /// The Secret holding this key's record.
    pub fn secret_name(&self) -> String {
        format!("{SECRET_NAME_PREFIX}{}", self.0)
    }

    /// What lists show: `ul_` and the id.
    pub fn prefix(&self) -> String {
        format!("{KEY_PREFIX}{}", self.0)
    }

    /// The 8 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of a key. Deliberately without `PartialEq`: the only comparison is
/// [`KeyHash::ct_eq`], in constant time.
#[derive(Clone, Copy)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Parses 64 hex characters (either case).
    pub fn from_hex(s: &str) -> Option<KeyHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).ok()?;
        Some(KeyHash(out))
    }

    /// 64 lowercase hex characters (what the Secret stores).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Equality in time independent of where the hashes differ (`subtle`).
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

/// What a key may do, within its own namespace. Ordered: each role can do all that the ones
/// below it can.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads only.
    Viewer,
    /// Reads and writes resources.
    Editor,
    /// Also creates, lists and revokes the namespace's API keys.
    Admin,
}

/// A kind of operation, checked against a [`Role`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `GET` of resources.
    Read,
    /// Creating, changing and deleting resources (training, exports, deployments, uploads).
    Write,
    /// Creating, listing and revoking API keys.
    ManageKeys,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Editor, Role::Admin];

    /// Whether this role allows `action`.
    pub fn allows(self, action: Action) -> bool {
        match action {
            Action::Read => true,
            Action::Write => self >= Role::Editor,
            Action::ManageKeys => self == Role::Admin,
        }
    }

    /// `viewer`, `editor` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    /// Parses [`Role::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stored record of one key: everything but the key.
#[derive(Clone, Debug)]
pub struct KeyRecord {
    /// The public id.
    pub id: KeyId,
    /// SHA-256 of the key.
    pub hash: KeyHash,
    /// The namespace (workspace) the key acts in: its "owner".
    pub namespace: String,
    /// What it may do there.
    pub role: Role,
    /// The name given at creation.
    pub name: String,
    /// When it was created.
    pub created: DateTime<Utc>,
    /// Whether it is the chart's bootstrap key (managed by the chart, not revocable by the API).
    pub bootstrap: bool,
}

/// Why a labelled Secret is not a valid key record (it is then ignored, with a warning).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKeySecret {
    /// The name is not `ocellus-api-key-<8 hex>`.
    #[error("name is not ocellus-api-key-<8 hex characters>")]
    Name,
    /// `data.sha256` is missing or not 64 hex characters.
    #[error("data.sha256 is missing or not a hex SHA-256")]
    Hash,
    /// The namespace label is missing or not a DNS label.
    #[error("label {NAMESPACE_LABEL} is missing or not a namespace name")]
    Namespace,
    /// The role label is missing or unknown.
    #[error("label {ROLE_LABEL} is missing or not viewer, editor or admin")]
    Role,
    /// The creation annotation is not RFC 3339.
    #[error("annotation {CREATED_ANNOTATION} is not an RFC 3339 time")]
    Created,
}

/// Whether `s` is a Kubernetes namespace name (an RFC 1123 DNS label: at most 63 characters of
/// lowercase letters, digits and `-`, starting and ending with a letter or digit).
pub fn is_namespace_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

impl KeyRecord {
    /// The record of `key`, bound to `namespace` with `role`.
    pub fn new(key: &PlaintextKey, namespace: &str, role: Role, name: &str, created: DateTime<Utc>) -> KeyRecord {
        KeyRecord {
            id: key.id(),
            hash: key.hash(),
            namespace: namespace.to_string(),
            role,
            name: name.to_string(),
            created,
            bootstrap: false,
        }
    }

    /// Whether `key` is this record's key: same id, and the hashes compared in constant time.
    pub fn matches(&self, key: &PlaintextKey) -> bool {
        // The id is public and part of the key: comparing it first leaks nothing.
        self.id == key.id() && self.hash.ct_eq(&key.hash())
    }

    /// The Secret for this record in `release_namespace` (see the module docs for the layout).
    pub fn to_secret(&self, release_namespace: &str) -> Secret {
        let mut labels = BTreeMap::from([
            (KEY_LABEL.to_string(), "true".to_string()),
            (NAMESPACE_LABEL.to_string(), self.namespace.clone()),
            (ROLE_LABEL.to_string(), self.role.as_str().to_string()),
            ("app.kubernetes.io/managed-by".to_string(), FIELD_MANAGER.to_string()),
        ]);
        if self.bootstrap {
            labels.insert(BOOTSTRAP_LABEL.to_string(), "true".to_string());
        }
        let annotations = BTreeMap::from([
            (NAME_ANNOTATION.to_string(), self.name.clone()),
            (CREATED_ANNOTATION.to_string(), self.created.to_rfc3339_opts(SecondsFormat::Secs, true)),
        ]);
        Secret {
            metadata: ObjectMeta {
                name: Some(self.id.secret_name()),
                namespace: Some(release_namespace.to_string()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            type_: Some(SECRET_TYPE.to_string()),
            data: Some(BTreeMap::from([(HASH_DATA_KEY.to_string(), ByteString(self.hash.to_hex().into_bytes()))])),
            ..Secret::default()
        }
    }

    /// Reads a record back from its Secret. The creation time falls back to the Secret's
    /// `creationTimestamp` when the annotation is absent (a Secret made by hand).
    pub fn from_secret(secret: &Secret) -> Result<KeyRecord, InvalidKeySecret> {
        let meta = &secret.metadata;
        let id = meta.name.as_deref().and_then(KeyId::from_secret_name).ok_or(InvalidKeySecret::Name)?;
        let hash = secret
            .data
            .as_ref()
            .and_then(|d| d.get(HASH_DATA_KEY))
            .and_then(|b| std::str::from_utf8(&b.0).ok())
            .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(HASH_DATA_KEY)).map(String::as_str))
            .and_then(KeyHash::from_hex)
            .ok_or(InvalidKeySecret::Hash)?;
        let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str);
        let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k)).map(String::as_str);
        let namespace = label(NAMESPACE_LABEL).filter(|n| is_namespace_name(n)).ok_or(InvalidKeySecret::Namespace)?;
        let role = label(ROLE_LABEL).and_then(Role::parse).ok_or(InvalidKeySecret::Role)?;
        let created = match annotation(CREATED_ANNOTATION) {
            Some(t) => DateTime::parse_from_rfc3339(t).map_err(|_| InvalidKeySecret::Created)?.with_timezone(&Utc),
            None => meta
                .creation_timestamp
                .as_ref()
                .and_then(|t| DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32))
                .unwrap_or(DateTime::UNIX_EPOCH),
        };
        Ok(KeyRecord {
            id,
            hash,
            namespace: namespace.to_string(),
            role,
            name: annotation(NAME_ANNOTATION).unwrap_or_default().to_string(),
            created,
            bootstrap: label(BOOTSTRAP_LABEL) == Some("true"),
        })
    }
}

/// The key records of one listing of key Secrets, by id. Pure: built from whatever list of
/// Secrets it is given (a reflector `Store::state()` in the binary, a literal list in tests).
#[derive(Clone, Debug, Default)]
pub struct KeyIndex {
    by_id: HashMap<KeyId, KeyRecord>,
}

impl KeyIndex {
    /// The index of `secrets`; Secrets that are not valid records are skipped with a warning
    /// (naming the Secret, never its data).
    pub fn from_secrets<S: Borrow<Secret>>(secrets: impl IntoIterator<Item = S>) -> KeyIndex {
        let mut by_id = HashMap::new();
        for s in secrets {
            let s = s.borrow();
            match KeyRecord::from_secret(s) {
                Ok(r) => {
                    by_id.insert(r.id.clone(), r);
                }
                Err(e) => {
                    tracing::warn!(secret = s.metadata.name.as_deref().unwrap_or(""), error = %e, "ignoring API key Secret")
                }
            }
        }
        KeyIndex { by_id }
    }

    /// An index of the given records (tests, and the bootstrap's plan).
    pub fn from_records(records: impl IntoIterator<Item = KeyRecord>) -> KeyIndex {
        KeyIndex { by_id: records.into_iter().map(|r| (r.id.clone(), r)).collect() }
    }

    /// The record of `key`, if `key` is a live key: found by its public id, then its hash
    /// compared in constant time.
    pub fn authenticate(&self, key: &PlaintextKey) -> Option<&KeyRecord> {
        self.by_id.get(&key.id()).filter(|r| r.matches(key))
    }

    /// The record with id `id`.
    pub fn get(&self, id: &KeyId) -> Option<&KeyRecord> {
        self.by_id.get(id)
    }

    /// The records of `namespace`, oldest first.
    pub fn in_namespace(&self, namespace: &str) -> Vec<&KeyRecord> {
        let mut v: Vec<&KeyRecord> = self.by_id.values().filter(|r| r.namespace == namespace).collect();
        v.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        v
    }

    /// Every record.
    pub fn records(&self) -> impl Iterator<Item = &KeyRecord> {
        self.by_id.values()
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// How long a key this replica created counts as live while the watch has not shown its
/// Secret yet. After that the watch's view wins (the Secret was deleted before it was seen).
pub const PENDING_CREATE_TTL: Duration = Duration::from_secs(300);

/// A write of this replica the watch has not reflected yet.
#[derive(Clone, Debug)]
enum Pending {
    /// Created here at the instant; live until the watch lists it or [`PENDING_CREATE_TTL`].
    Created(KeyRecord, Instant),
    /// Revoked here; refused until the watch no longer lists it (no time limit: a revoked
    /// key must stay revoked even while the watch is stuck).
    Revoked,
}

#[derive(Debug, Default)]
struct KeysInner {
    index: KeyIndex,
    pending: HashMap<KeyId, Pending>,
    synced: bool,
}

/// The live key set of the process: the latest [`KeyIndex`] from the watch, plus this
/// replica's own creations and revocations until the watch reflects them, so that a created
/// key works and a revoked one is refused from the next request on. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    inner: Arc<RwLock<KeysInner>>,
}

impl Keys {
    /// An empty key set, not yet synced (requests get 503 until [`Keys::replace`]).
    pub fn new() -> Keys {
        Keys::default()
    }

    /// A synced key set holding `index` (tests; a binary without a cluster).
    pub fn from_index(index: KeyIndex) -> Keys {
        let keys = Keys::new();
        keys.replace(index, Instant::now());
        keys
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeysInner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KeysInner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs a new listing from the watch and marks the set synced. Pending creations the
    /// listing shows (or that are older than [`PENDING_CREATE_TTL`]) and pending revocations it
    /// no longer shows are dropped.
    pub fn replace(&self, index: KeyIndex, now: Instant) {
        let mut inner = self.write();
        inner.pending.retain(|id, p| match p {
            Pending::Created(_, at) => {
                index.get(id).is_none() && now.saturating_duration_since(*at) < PENDING_CREATE_TTL
            }
            Pending::Revoked => index.get(id).is_some(),
        });
        inner.index = index;
        inner.synced = true;
    }

    /// Whether the watch has listed the keys at least once.
    pub fn is_synced(&self) -> bool {
        self.read().synced
    }

    /// Records a key this replica just created (its Secret was written).
    pub fn created(&self, record: KeyRecord, now: Instant) {
        self.write().pending.insert(record.id.clone(), Pending::Created(record, now));
    }

    /// Records a key this replica just revoked (its Secret was deleted).
    pub fn revoked(&self, id: &KeyId) {
        self.write().pending.insert(id.clone(), Pending::Revoked);
    }

    /// The live record with id `id`.
    pub fn get(&self, id: &KeyId) -> Option<KeyRecord> {
        let inner = self.read();
        match inner.pending.get(id) {
            Some(Pending::Created(r, _)) => Some(r.clone()),
            Some(Pending::Revoked) => None,
            None => inner.index.get(id).cloned(),
        }
    }

    /// The live record of `key`, compared as [`KeyRecord::matches`] does.
    pub fn authenticate(&self, key: &PlaintextKey) -> Option<KeyRecord> {
        self.get(&key.id()).filter(|r| r.matches(key))
    }

    /// The live records of `namespace`, oldest first.
    pub fn in_namespace(&self, namespace: &str) -> Vec<KeyRecord> {
        let inner = self.read();
        let mut out: Vec<KeyRecord> = inner
            .index
            .in_namespace(namespace)
            .into_iter()
            .filter(|r| !inner.pending.contains_key(&r.id))
            .cloned()
            .collect();
        out.extend(inner.pending.values().filter_map(|p| match p {
            Pending::Created(r, _) if r.namespace == namespace => Some(r.clone()),
            _ => None,
        }));
        out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PlaintextKey {
        PlaintextKey::from_bytes([n; 20])
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-02-21T12:34:56Z").expect("time").with_timezone(&Utc)
    }

    fn record(k: &PlaintextKey, ns: &str, role: Role) -> KeyRecord {
        KeyRecord::new(k, ns, role, "ci", t0())
    }

    #[test]
    fn generated_keys_have_the_ultralytics_format_and_differ() {
        let a = PlaintextKey::generate().expect("random");
        let b = PlaintextKey::generate().expect("random");
        for k in [&a, &b] {
            let s = k.expose();
            assert_eq!(s.len(), 43, "{}", s.len());
            assert!(s.starts_with("ul_"));
            assert!(s[3..].bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "lowercase hex");
            assert_eq!(PlaintextKey::parse(s).expect("own format parses"), *k);
        }
        assert_ne!(a, b);
        assert_ne!(a.id(), b.id(), "32 random bits; equal ids here would mean a broken generator");
    }

    #[test]
    fn parse_refuses_anything_but_ul_and_40_lowercase_hex() {
        let good = format!("ul_{}", "0123456789abcdef".repeat(3).get(..40).expect("40"));
        assert!(PlaintextKey::parse(&good).is_ok());
        for bad in [
            String::new(),
            "ul_".into(),
            good.to_uppercase(),
            good.replace("ul_", "UL_"),
            good.replace("ul_", "ux_"),
            format!("{good}0"),
            good[..42].to_string(),
            good.replacen('a', "g", 1),
            format!(" {good}"),
        ] {
            assert_eq!(PlaintextKey::parse(&bad), Err(MalformedKey), "{bad:?}");
        }
    }

    #[test]
    fn id_prefix_and_secret_name_come_from_the_first_8_hex() {
        let k = PlaintextKey::parse("ul_a1b2c3d4e5f60718293a4b5c6d7e8f9001122334").expect("key");
        assert_eq!(k.id().as_str(), "a1b2c3d4");
        assert_eq!(k.id().prefix(), "ul_a1b2c3d4");
        assert_eq!(k.id().secret_name(), "ocellus-api-key-a1b2c3d4");
        assert_eq!(KeyId::from_secret_name("ocellus-api-key-a1b2c3d4"), Some(k.id()));
        assert_eq!(KeyId::from_secret_name("ocellus-api-key-a1b2c3d"), None);
        assert_eq!(KeyId::from_secret_name("other-a1b2c3d4"), None);
        assert_eq!(KeyId::parse("A1B2C3D4"), None);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let k = key(0xab);
        let d = format!("{k:?}");
        assert!(!d.contains(k.expose()), "{d}");
        assert!(d.contains("ul_abababab"), "{d}");
    }

    #[test]
    fn the_hash_is_sha256_of_the_whole_key_and_not_the_key() {
        let k = key(7);
        let h = k.hash().to_hex();
        assert_eq!(h.len(), 64);
        assert_ne!(h, k.expose());
        assert!(!h.contains(&k.expose()[3..]));
        // Known answer: SHA-256("ul_" + "07" * 20).
        let expected = hex::encode(Sha256::digest(format!("ul_{}", "07".repeat(20)).as_bytes()));
        assert_eq!(h, expected);
        assert!(KeyHash::from_hex(&h).expect("hex").ct_eq(&k.hash()));
    }

    #[test]
    fn constant_time_compare_tells_equal_from_different_at_any_position() {
        let h = key(1).hash();
        assert!(h.ct_eq(&KeyHash::from_hex(&h.to_hex()).expect("hex")));
        for pos in [0, 15, 31] {
            let mut other = h.0;
            other[pos] ^= 1;
            assert!(!h.ct_eq(&KeyHash(other)), "differs at {pos}");
        }
    }

    #[test]
    fn roles_matrix() {
        let table = [
            (Role::Viewer, [true, false, false]),
            (Role::Editor, [true, true, false]),
            (Role::Admin, [true, true, true]),
        ];
        for (role, allowed) in table {
            for (action, want) in [Action::Read, Action::Write, Action::ManageKeys].into_iter().zip(allowed) {
                assert_eq!(role.allows(action), want, "{role} {action:?}");
            }
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn secret_round_trip_keeps_every_field_and_no_plaintext() {
        let k = key(9);
        let mut r = KeyRecord::new(&k, "team-a", Role::Editor, "training server #1", t0());
        r.bootstrap = true;
        let s = r.to_secret("ocellus-system");
        assert_eq!(s.metadata.name.as_deref(), Some("ocellus-api-key-09090909"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("ocellus-system"));
        assert_eq!(s.type_.as_deref(), Some(SECRET_TYPE));
        let labels = s.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels[KEY_LABEL], "true");
        assert_eq!(labels[NAMESPACE_LABEL], "team-a");
        assert_eq!(labels[ROLE_LABEL], "editor");
        assert_eq!(labels[BOOTSTRAP_LABEL], "true");
        let data = s.data.as_ref().expect("data");
        assert_eq!(data.len(), 1);
        assert_eq!(data[HASH_DATA_KEY].0, k.hash().to_hex().into_bytes());
        let meta = serde_json::to_string(&s.metadata).expect("json");
        assert!(!meta.contains(&k.expose()[3..]), "the key's hex must not be stored: {meta}");
        let back = KeyRecord::from_secret(&s).expect("parse");
        assert_eq!(back.id, r.id);
        assert!(back.hash.ct_eq(&r.hash));
        assert_eq!(back.namespace, "team-a");
        assert_eq!(back.role, Role::Editor);
        assert_eq!(back.name, "training server #1");
        assert_eq!(back.created, t0());
        assert!(back.bootstrap);
        assert!(back.matches(&k));
        assert!(!back.matches(&key(10)));
    }

    #[test]
    fn from_secret_refuses_broken_records() {
        let good = record(&key(3), "team-a", Role::Viewer).to_secret("rel");
        let mut s = good.clone();
        s.metadata.name = Some("ocellus-api-key-zz".into());
        assert_eq!(KeyRecord::from_secret(&s).expect_err("name"), InvalidKeySecret::Name);
        let mut s = good.clone();
        s.data = None;
        assert_eq!(KeyRecord::from_secret(&s).expect_err("hash"), InvalidKeySecret::Hash);
        let mut s = good.clone();
        s.metadata.labels.as_mut().expect("labels").insert(ROLE_LABEL.into(), "root".into());
        assert_eq!(KeyRecord::from_secret(&s).expect_err("role"), InvalidKeySecret::Role);
        let mut s = good.clone();
        s.metadata.labels.as_mut().expect("labels").insert(NAMESPACE_LABEL.into(), "Team_A".into());
        assert_eq!(KeyRecord::from_secret(&s).expect_err("ns"), InvalidKeySecret::Namespace);
        let mut s = good.clone();
        s.metadata.annotations.as_mut().expect("annotations").insert(CREATED_ANNOTATION.into(), "yesterday".into());
        assert_eq!(KeyRecord::from_secret(&s).expect_err("created"), InvalidKeySecret::Created);
        // A hand-made Secret with stringData and no annotations is accepted.
        let mut s = good;
        let hash = record(&key(3), "team-a", Role::Viewer).hash.to_hex();
        s.data = None;
        s.string_data = Some(BTreeMap::from([(HASH_DATA_KEY.to_string(), hash)]));
        s.metadata.annotations = None;
        let r = KeyRecord::from_secret(&s).expect("stringData");
        assert!(r.matches(&key(3)));
        assert_eq!(r.name, "");
    }

    #[test]
    fn namespace_names() {
        for ok in ["a", "team-a", "x1", &"a".repeat(63)] {
            assert!(is_namespace_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_namespace_name(bad), "{bad}");
        }
    }

    #[test]
    fn index_from_secrets_authenticates_by_id_and_hash() {
        let (a, b) = (key(1), key(2));
        let mut junk = record(&key(4), "x", Role::Admin).to_secret("rel");
        junk.metadata.labels.as_mut().expect("labels").remove(ROLE_LABEL);
        let secrets = vec![
            record(&a, "team-a", Role::Admin).to_secret("rel"),
            record(&b, "team-b", Role::Viewer).to_secret("rel"),
            junk,
        ];
        let index = KeyIndex::from_secrets(&secrets);
        assert_eq!(index.len(), 2, "the broken Secret is skipped");
        assert_eq!(index.authenticate(&a).expect("a").namespace, "team-a");
        assert_eq!(index.authenticate(&b).expect("b").role, Role::Viewer);
        assert!(index.authenticate(&key(4)).is_none());
        // Same id as `a`, other secret part: found by id, refused by the hash.
        let mut forged = a.expose().to_string();
        forged.replace_range(42..43, if forged.ends_with('0') { "1" } else { "0" });
        let forged = PlaintextKey::parse(&forged).expect("format");
        assert_eq!(forged.id(), a.id());
        assert!(index.authenticate(&forged).is_none());
        assert_eq!(index.in_namespace("team-a").len(), 1);
        assert!(index.in_namespace("team-c").is_empty());
        // Reflector stores hand out Arcs.
        let arcs: Vec<Arc<Secret>> = secrets.into_iter().map(Arc::new).collect();
        assert_eq!(KeyIndex::from_secrets(arcs).len(), 2);
    }

    #[test]
    fn keys_overlay_own_writes_until_the_watch_reflects_them() {
        let now = Instant::now();
        let (a, b) = (key(1), key(2));
        let keys = Keys::new();
        assert!(!keys.is_synced());
        keys.replace(KeyIndex::from_records([record(&a, "ns", Role::Admin)]), now);
        assert!(keys.is_synced());
        // Created here: live before the watch sees it, and survives a stale listing.
        keys.created(record(&b, "ns", Role::Editor), now);
        assert!(keys.authenticate(&b).is_some());
        keys.replace(KeyIndex::from_records([record(&a, "ns", Role::Admin)]), now + Duration::from_secs(1));
        assert!(keys.authenticate(&b).is_some(), "a listing from before the create must not drop it");
        assert_eq!(keys.in_namespace("ns").len(), 2);
        // ...but not forever if its Secret never shows up.
        keys.replace(KeyIndex::from_records([record(&a, "ns", Role::Admin)]), now + PENDING_CREATE_TTL);
        assert!(keys.authenticate(&b).is_none());
        // Revoked here: refused at once, and still refused by a stale listing that shows it.
        keys.revoked(&a.id());
        assert!(keys.authenticate(&a).is_none());
        assert!(keys.in_namespace("ns").is_empty());
        keys.replace(KeyIndex::from_records([record(&a, "ns", Role::Admin)]), now + Duration::from_secs(3600));
        assert!(keys.authenticate(&a).is_none(), "a stuck watch must not resurrect a revoked key");
        // Once the listing drops it, the overlay entry goes too.
        keys.replace(KeyIndex::default(), now);
        assert!(keys.read().pending.is_empty());
    }
}
