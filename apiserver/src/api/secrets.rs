//! [`SecretWriter`]: the Kubernetes writes of the key routes and the bootstrap, behind a trait so
//! that unit tests run on [`MemorySecrets`] and the binary on [`KubeSecrets`].
//!
//! Key Secrets are **created** (`POST`, field manager `ocellus-apiserver`), not server-side
//! applied: an apply creates *or replaces*, so an id that collided with an existing key would
//! silently overwrite that key's hash, while a create fails with 409 and the route draws a new
//! key. Nothing ever updates a key Secret (a key's namespace and role are fixed for its life),
//! so no apply is needed; this also keeps the apiserver's Role on Secrets to `get`, `list`,
//! `watch`, `create` and `delete`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use super::error::ApiError;
use super::keys::{FIELD_MANAGER, KEY_SELECTOR};

/// Why a Secret write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A Secret of that name exists already (create).
    #[error("the Secret exists already")]
    AlreadyExists,
    /// No Secret of that name (delete).
    #[error("the Secret does not exist")]
    NotFound,
    /// Any other failure of the Kubernetes API.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

impl From<WriteError> for ApiError {
    /// Callers handle [`WriteError::AlreadyExists`] and [`WriteError::NotFound`] themselves; this
    /// is for what remains (and maps those two to 409 and 404 if they are passed on).
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::AlreadyExists => ApiError::Conflict("the API key exists already".into()),
            WriteError::NotFound => ApiError::NotFound("API key".into()),
            WriteError::Kube(k) => ApiError::from(k),
        }
    }
}

/// Creates, deletes and lists the key Secrets of the release namespace.
pub trait SecretWriter: Send + Sync + std::fmt::Debug {
    /// Creates `secret` (its namespace is the writer's); fails with
    /// [`WriteError::AlreadyExists`] rather than replace one.
    fn create(&self, secret: Secret) -> BoxFuture<'_, Result<(), WriteError>>;
    /// Deletes the Secret `name`.
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), WriteError>>;
    /// Lists the key Secrets (label `ocellus.dev/api-key=true`) from the API server, not a cache.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Secret>, WriteError>>;
}

/// [`SecretWriter`] on the Kubernetes API, in one namespace.
#[derive(Clone)]
pub struct KubeSecrets {
    api: Api<Secret>,
}

impl std::fmt::Debug for KubeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSecrets").field("namespace", &self.api.namespace()).finish()
    }
}

impl KubeSecrets {
    /// Writes Secrets in `namespace` (the release namespace).
    pub fn new(client: Client, namespace: &str) -> KubeSecrets {
        KubeSecrets { api: Api::namespaced(client, namespace) }
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl SecretWriter for KubeSecrets {
    fn create(&self, secret: Secret) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(async move {
            let pp = PostParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PostParams::default() };
            match self.api.create(&pp, &secret).await {
                Ok(_) => Ok(()),
                Err(e) if is_status(&e, 409) => Err(WriteError::AlreadyExists),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), WriteError>> {
        Box::pin(async move {
            match self.api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(e) if is_status(&e, 404) => Err(WriteError::NotFound),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Secret>, WriteError>> {
        Box::pin(async move { Ok(self.api.list(&ListParams::default().labels(KEY_SELECTOR)).await?.items) })
    }
}

/// [`SecretWriter`] in memory: for unit tests, and for running the apiserver's routers without
/// a cluster. [`MemorySecrets::secrets`] is what a watch of the namespace would list.
#[derive(Debug, Default)]
pub struct MemorySecrets {
    secrets: Mutex<BTreeMap<String, Secret>>,
}

impl MemorySecrets {
    /// An empty namespace.
    pub fn new() -> MemorySecrets {
        MemorySecrets::default()
    }

    /// The Secrets held now, by name.
    pub fn secrets(&self) -> Vec<Secret> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Secret>> {
        self.secrets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SecretWriter for MemorySecrets {
    fn create(&self, secret: Secret) -> BoxFuture<'_, Result<(), WriteError>> {
        let result = {
            let mut map = self.lock();
            match map.entry(secret.metadata.name.clone().unwrap_or_default()) {
                std::collections::btree_map::Entry::Occupied(_) => Err(WriteError::AlreadyExists),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(secret);
                    Ok(())
                }
            }
        };
        Box::pin(async move { result })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), WriteError>> {
        let result = self.lock().remove(name).map(|_| ()).ok_or(WriteError::NotFound);
        Box::pin(async move { result })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Secret>, WriteError>> {
        let all = self.secrets();
        Box::pin(async move { Ok(all) })
    }
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use super::*;

    fn named(n: &str) -> Secret {
        Secret { metadata: ObjectMeta { name: Some(n.into()), ..ObjectMeta::default() }, ..Secret::default() }
    }

    #[tokio::test]
    async fn memory_secrets_create_refuses_to_replace_and_delete_reports_absence() {
        let m = MemorySecrets::new();
        m.create(named("a")).await.expect("create");
        assert!(matches!(m.create(named("a")).await, Err(WriteError::AlreadyExists)));
        assert_eq!(m.list().await.expect("list").len(), 1);
        m.delete("a").await.expect("delete");
        assert!(matches!(m.delete("a").await, Err(WriteError::NotFound)));
        assert!(m.secrets().is_empty());
    }

    #[test]
    fn write_errors_map_to_api_errors() {
        assert_eq!(ApiError::from(WriteError::AlreadyExists).status().as_u16(), 409);
        assert_eq!(ApiError::from(WriteError::NotFound).status().as_u16(), 404);
    }
}
