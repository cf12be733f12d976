//! `/api/api-keys`: create, list and revoke the API keys of the caller's namespace (the
//! Ultralytics Platform's API Keys API).
//!
//! - `POST /api/api-keys` `{"name": "...", "role": "viewer|editor|admin"}` (role optional,
//!   default `editor`: what an Ultralytics client needs to train and upload) → 201 with the
//!   plaintext key, returned this once and never again;
//! - `GET /api/api-keys` → the namespace's keys by id and prefix (`ul_` + 8 hex), never a hash;
//! - `DELETE /api/api-keys?keyId=<id>` (the reference's form) or `DELETE /api/api-keys/{keyId}`
//!   → deletes the key's Secret; this replica refuses the key from the next request on, others
//!   once their watch sees the deletion.
//!
//! All three need the `admin` role, and see only keys of the caller's namespace: another
//! namespace's key id is answered 404, as if it did not exist. The bootstrap key is the Helm
//! chart's to rotate or disable, so revoking it is a 409.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Principal;
use super::error::{ApiError, ApiJson, ErrorBody};
use super::keys::{Action, KeyId, KeyRecord, Keys, PlaintextKey, Role};
use super::secrets::{SecretWriter, WriteError};

/// Longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// What the key routes need: the live keys, the Secret writer and where key Secrets live.
#[derive(Clone, Debug)]
pub struct KeysApi {
    /// The live key set (told of each creation and revocation at once).
    pub keys: Keys,
    /// Creates and deletes key Secrets.
    pub writer: Arc<dyn SecretWriter>,
    /// The release namespace, where key Secrets live.
    pub release_namespace: String,
}

/// `POST /api/api-keys` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateKeyRequest {
    /// A name to recognise the key by (1 to 128 characters, no control characters).
    #[schema(example = "training-server")]
    pub name: String,
    /// The key's role in the caller's namespace; `editor` when absent.
    #[serde(default)]
    pub role: Option<Role>,
}

/// A new key: the only response that ever carries the plaintext key.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    /// The public id, used to revoke it (`keyId`, as the Ultralytics SDK names it).
    #[schema(example = "a1b2c3d4")]
    pub key_id: String,
    /// The key. Shown once: store it now.
    #[schema(example = "ul_a1b2c3d4e5f60718293a4b5c6d7e8f9001122334")]
    pub key: String,
    /// What lists show of it.
    #[schema(example = "ul_a1b2c3d4")]
    pub key_prefix: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The namespace (workspace) it acts in.
    pub namespace: String,
    /// When it was created (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
}

/// A key as lists show it: id and prefix, never the key or its hash.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySummary {
    /// The public id.
    #[schema(example = "a1b2c3d4")]
    pub key_id: String,
    /// `ul_` and the id.
    #[schema(example = "ul_a1b2c3d4")]
    pub key_prefix: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The namespace it acts in.
    pub namespace: String,
    /// When it was created (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    /// Whether it is the Helm chart's bootstrap key (not revocable through the API).
    pub bootstrap: bool,
}

/// `GET /api/api-keys` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyList {
    /// The namespace's keys, oldest first (`keys`, as the Ultralytics SDK reads them).
    pub keys: Vec<KeySummary>,
    /// How many.
    pub total: usize,
}

/// `DELETE` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedKey {
    /// The revoked key's id.
    pub key_id: String,
    /// Always `true`.
    pub revoked: bool,
}

/// `DELETE /api/api-keys` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct RevokeQuery {
    /// The id of the key to revoke (8 hex characters, as listed).
    pub key_id: Option<String>,
}

/// Error responses every authenticated route can give.
#[derive(utoipa::IntoResponses)]
pub enum CommonErrors {
    /// Missing, malformed or unknown API key.
    #[response(status = 401, description = "Missing, malformed or unknown API key")]
    Unauthorized(ErrorBody),
    /// The key's role does not allow this.
    #[response(status = 403, description = "The API key's role does not allow this")]
    Forbidden(ErrorBody),
    /// The key's budget for this category is spent; see `Retry-After` and `X-RateLimit-Reset`.
    #[response(status = 429, description = "Rate limit exceeded; retry after Retry-After seconds")]
    RateLimited(ErrorBody),
    /// A server fault (details are logged, not returned).
    #[response(status = 500, description = "Server error")]
    Internal(ErrorBody),
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn summary(r: &KeyRecord) -> KeySummary {
    KeySummary {
        key_id: r.id.to_string(),
        key_prefix: r.id.prefix(),
        name: r.name.clone(),
        role: r.role,
        namespace: r.namespace.clone(),
        created_at: time(r.created),
        bootstrap: r.bootstrap,
    }
}

/// Checks a key name: trimmed, 1..=128 characters, no control characters.
fn valid_name(name: &str) -> Result<&str, ApiError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ApiError::bad_request("name", "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::bad_request("name", format!("must be at most {MAX_NAME_CHARS} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("name", "must not contain control characters"));
    }
    Ok(name)
}

/// The routes, without authentication: wrap them with [`crate::api::ApiState::protect`].
pub fn routes(api: KeysApi) -> Router {
    Router::new()
        .route("/api/api-keys", get(list_keys).post(create_key).delete(revoke_key_by_query))
        .route("/api/api-keys/{keyId}", delete(revoke_key))
        .with_state(api)
}

/// Create an API key in the caller's namespace. The response holds the key; it is not stored
/// and cannot be shown again.
#[utoipa::path(
    post,
    path = "/api/api-keys",
    tag = "api-keys",
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "The new key, shown once", body = CreatedKey),
        (status = 400, description = "Invalid request", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn create_key(
    State(api): State<KeysApi>,
    principal: Principal,
    body: Result<ApiJson<CreateKeyRequest>, ApiError>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    principal.require(Action::ManageKeys)?;
    let ApiJson(req) = body?;
    let name = valid_name(&req.name)?;
    let role = req.role.unwrap_or(Role::Editor);
    // An id collision (32 random bits) makes the create fail with 409: draw again.
    for _ in 0..3 {
        let key = PlaintextKey::generate().map_err(ApiError::internal)?;
        let record = KeyRecord::new(&key, &principal.namespace, role, name, Utc::now());
        match api.writer.create(record.to_secret(&api.release_namespace)).await {
            Ok(()) => {
                api.keys.created(record.clone(), Instant::now());
                tracing::info!(
                    key = %record.id.prefix(), namespace = %record.namespace, %role, by = %principal.key_id.prefix(),
                    "created an API key"
                );
                let summary = summary(&record);
                return Ok((
                    StatusCode::CREATED,
                    Json(CreatedKey {
                        key_id: summary.key_id,
                        key: key.expose().to_string(),
                        key_prefix: summary.key_prefix,
                        name: summary.name,
                        role,
                        namespace: summary.namespace,
                        created_at: summary.created_at,
                    }),
                ));
            }
            Err(WriteError::AlreadyExists) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::internal("three freshly generated API key ids collided with existing keys"))
}

/// List the API keys of the caller's namespace: ids and prefixes, never keys or hashes.
#[utoipa::path(
    get,
    path = "/api/api-keys",
    tag = "api-keys",
    responses((status = 200, description = "The namespace's keys", body = KeyList), CommonErrors)
)]
pub async fn list_keys(State(api): State<KeysApi>, principal: Principal) -> Result<Json<KeyList>, ApiError> {
    principal.require(Action::ManageKeys)?;
    let keys: Vec<KeySummary> = api.keys.in_namespace(&principal.namespace).iter().map(summary).collect();
    Ok(Json(KeyList { total: keys.len(), keys }))
}

/// Revoke an API key of the caller's namespace by its id (the reference's form).
#[utoipa::path(
    delete,
    path = "/api/api-keys",
    tag = "api-keys",
    params(RevokeQuery),
    responses(
        (status = 200, description = "Revoked", body = RevokedKey),
        (status = 400, description = "keyId missing or malformed", body = ErrorBody),
        (status = 404, description = "No such key in the caller's namespace", body = ErrorBody),
        (status = 409, description = "The bootstrap key is managed by the Helm chart", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn revoke_key_by_query(
    State(api): State<KeysApi>,
    principal: Principal,
    query: Result<Query<RevokeQuery>, QueryRejection>,
) -> Result<Json<RevokedKey>, ApiError> {
    principal.require(Action::ManageKeys)?;
    let Query(q) = query.map_err(|r| ApiError::bad_request("query", r.body_text()))?;
    let id = q.key_id.ok_or_else(|| ApiError::bad_request("keyId", "required"))?;
    revoke(&api, &principal, &id).await
}

/// Revoke an API key of the caller's namespace by its id.
#[utoipa::path(
    delete,
    path = "/api/api-keys/{keyId}",
    tag = "api-keys",
    params(("keyId" = String, Path, description = "The key's id (8 hex characters, as listed)")),
    responses(
        (status = 200, description = "Revoked", body = RevokedKey),
        (status = 400, description = "keyId malformed", body = ErrorBody),
        (status = 404, description = "No such key in the caller's namespace", body = ErrorBody),
        (status = 409, description = "The bootstrap key is managed by the Helm chart", body = ErrorBody),
        CommonErrors,
    )
)]
pub async fn revoke_key(
    State(api): State<KeysApi>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<RevokedKey>, ApiError> {
    principal.require(Action::ManageKeys)?;
    revoke(&api, &principal, &id).await
}

async fn revoke(api: &KeysApi, principal: &Principal, id: &str) -> Result<Json<RevokedKey>, ApiError> {
    // A full key pasted by mistake is accepted as its id, and is not echoed back.
    let id = PlaintextKey::parse(id)
        .map(|k| k.id())
        .ok()
        .or_else(|| KeyId::parse(id))
        .ok_or_else(|| ApiError::bad_request("keyId", "expected the key's id: 8 lowercase hex characters"))?;
    let record = api
        .keys
        .get(&id)
        .filter(|r| r.namespace == principal.namespace)
        .ok_or_else(|| ApiError::NotFound("API key".into()))?;
    if record.bootstrap {
        return Err(ApiError::Conflict(
            "the bootstrap API key is managed by the Helm chart: rotate or disable it there (apiKeys.bootstrap)".into(),
        ));
    }
    match api.writer.delete(&id.secret_name()).await {
        Ok(()) | Err(WriteError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    api.keys.revoked(&id);
    tracing::info!(key = %id.prefix(), namespace = %record.namespace, by = %principal.key_id.prefix(), "revoked an API key");
    Ok(Json(RevokedKey { key_id: id.to_string(), revoked: true }))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, header};
    use tower::ServiceExt;

    use super::*;
    use crate::api::ApiState;
    use crate::api::keys::KeyIndex;
    use crate::api::ratelimit::{Limits, RateLimiter};
    use crate::api::secrets::MemorySecrets;

    struct Fixture {
        router: Router,
        secrets: Arc<MemorySecrets>,
        keys: Keys,
    }

    /// Admin, editor and viewer keys in `team-a`, an admin key in `team-b`.
    fn fixture() -> (Fixture, [PlaintextKey; 4]) {
        let ks = [1u8, 2, 3, 4].map(|n| PlaintextKey::from_bytes([n; 20]));
        let secrets = Arc::new(MemorySecrets::new());
        let records = [
            KeyRecord::new(&ks[0], "team-a", Role::Admin, "admin-a", Utc::now()),
            KeyRecord::new(&ks[1], "team-a", Role::Editor, "editor-a", Utc::now()),
            KeyRecord::new(&ks[2], "team-a", Role::Viewer, "viewer-a", Utc::now()),
            KeyRecord::new(&ks[3], "team-b", Role::Admin, "admin-b", Utc::now()),
        ];
        for r in &records {
            let created = futures::executor::block_on(secrets.create(r.to_secret("ocellus-system")));
            created.expect("seed");
        }
        // What the watch would list.
        let keys = Keys::from_index(KeyIndex::from_secrets(secrets.secrets()));
        let state = ApiState::new(
            keys.clone(),
            secrets.clone(),
            "ocellus-system".into(),
            RateLimiter::new(Limits::default(), 1000),
            &prometheus::Registry::new(),
        )
        .expect("state");
        (Fixture { router: state.router(), secrets, keys }, ks)
    }

    async fn call(
        router: &Router,
        method: &str,
        uri: &str,
        key: Option<&PlaintextKey>,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", k.expose()));
        }
        let req = match body {
            Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .expect("request");
        let resp = router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        let json =
            if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes).expect("json") };
        (status, json)
    }

    #[tokio::test]
    async fn create_list_use_revoke_refuse() {
        let (f, [admin, ..]) = fixture();
        let (s, created) =
            call(&f.router, "POST", "/api/api-keys", Some(&admin), Some(serde_json::json!({"name": "ci"}))).await;
        assert_eq!(s, StatusCode::CREATED, "{created}");
        let key = PlaintextKey::parse(created["key"].as_str().expect("key")).expect("ul_ format");
        assert_eq!(created["role"], "editor", "the default role");
        assert_eq!(created["namespace"], "team-a", "the caller's namespace");
        assert_eq!(created["keyPrefix"], key.id().prefix());
        // Stored as a hash only: in the Secret's data (decoded) and nowhere the key.
        let secrets = f.secrets.secrets();
        assert_eq!(secrets.len(), 5);
        let secret = secrets.iter().find(|s| s.metadata.name == Some(key.id().secret_name())).expect("its Secret");
        let data = secret.data.as_ref().expect("data");
        assert_eq!(data["sha256"].0, key.hash().to_hex().into_bytes());
        let mut stored = serde_json::to_string(&secrets).expect("json");
        for v in secrets.iter().flat_map(|s| s.data.iter().flat_map(|d| d.values())) {
            stored.push_str(&String::from_utf8_lossy(&v.0));
        }
        assert!(!stored.contains(&key.expose()[3..]), "the key is stored nowhere");
        assert_eq!(secret.metadata.namespace.as_deref(), Some("ocellus-system"), "the release namespace");

        // Listed by prefix, never the key or its hash.
        let (s, list) = call(&f.router, "GET", "/api/api-keys", Some(&admin), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(list["total"], 4, "admin-a, editor-a, viewer-a and the new key: {list}");
        let text = list.to_string();
        assert!(!text.contains(&key.expose()[3..]) && !text.contains(&key.hash().to_hex()), "{text}");
        let entry = list["keys"].as_array().expect("array").iter().find(|e| e["keyId"] == key.id().as_str());
        let entry = entry.expect("the new key is listed");
        assert_eq!(entry["keyPrefix"], key.id().prefix());
        assert!(entry.get("key").is_none() && entry.get("hash").is_none());

        // The new key authenticates (as an editor: it may not manage keys).
        let (s, body) = call(&f.router, "GET", "/api/api-keys", Some(&key), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}");

        // Revoke (reference form), then it is refused.
        let uri = format!("/api/api-keys?keyId={}", key.id());
        let (s, body) = call(&f.router, "DELETE", &uri, Some(&admin), None).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["revoked"], true);
        assert_eq!(body["keyId"], key.id().as_str());
        assert_eq!(f.secrets.secrets().len(), 4, "its Secret is deleted");
        assert!(!f.secrets.secrets().iter().any(|s| s.metadata.name == Some(key.id().secret_name())));
        let (s, body) = call(&f.router, "GET", "/api/api-keys", Some(&key), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["code"], "UNAUTHORIZED");
        // The watch catching up does not change that.
        f.keys.replace(KeyIndex::from_secrets(f.secrets.secrets()), Instant::now());
        assert_eq!(call(&f.router, "GET", "/api/api-keys", Some(&key), None).await.0, StatusCode::UNAUTHORIZED);
        // Revoking again: gone.
        assert_eq!(call(&f.router, "DELETE", &uri, Some(&admin), None).await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn an_admin_key_may_create_admins_and_the_path_form_revokes() {
        let (f, [admin, ..]) = fixture();
        let (s, created) = call(
            &f.router,
            "POST",
            "/api/api-keys",
            Some(&admin),
            Some(serde_json::json!({"name": "second admin", "role": "admin"})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let key = PlaintextKey::parse(created["key"].as_str().expect("key")).expect("format");
        let (s, list) = call(&f.router, "GET", "/api/api-keys", Some(&key), None).await;
        assert_eq!(s, StatusCode::OK, "{list}");
        let uri = format!("/api/api-keys/{}", key.id());
        assert_eq!(call(&f.router, "DELETE", &uri, Some(&admin), None).await.0, StatusCode::OK);
        assert_eq!(call(&f.router, "GET", "/api/api-keys", Some(&key), None).await.0, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn namespaces_are_walled_off() {
        let (f, [admin_a, editor_a, _, admin_b]) = fixture();
        let (s, list) = call(&f.router, "GET", "/api/api-keys", Some(&admin_b), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(list["total"], 1, "team-b sees its own key only: {list}");
        assert_eq!(list["keys"][0]["namespace"], "team-b");
        // team-b's admin cannot revoke team-a's keys: 404, and the key keeps working.
        for uri in [format!("/api/api-keys/{}", editor_a.id()), format!("/api/api-keys?keyId={}", admin_a.id())] {
            let (s, body) = call(&f.router, "DELETE", &uri, Some(&admin_b), None).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{uri}: {body}");
        }
        assert_eq!(call(&f.router, "GET", "/api/api-keys", Some(&admin_a), None).await.0, StatusCode::OK);
        // Keys created by team-b's admin belong to team-b, whatever the body says.
        let (_, created) = call(
            &f.router,
            "POST",
            "/api/api-keys",
            Some(&admin_b),
            Some(serde_json::json!({"name": "x", "namespace": "team-a"})),
        )
        .await;
        assert_eq!(created["namespace"], "team-b");
    }

    #[tokio::test]
    async fn viewers_and_editors_cannot_manage_keys() {
        let (f, [admin, editor, viewer, _]) = fixture();
        for k in [&editor, &viewer] {
            let body = Some(serde_json::json!({"name": "x"}));
            let (s, b) = call(&f.router, "POST", "/api/api-keys", Some(k), body).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
            assert_eq!(b["code"], "FORBIDDEN");
            assert_eq!(call(&f.router, "GET", "/api/api-keys", Some(k), None).await.0, StatusCode::FORBIDDEN);
            let uri = format!("/api/api-keys/{}", admin.id());
            assert_eq!(call(&f.router, "DELETE", &uri, Some(k), None).await.0, StatusCode::FORBIDDEN);
        }
        assert_eq!(f.secrets.secrets().len(), 4, "nothing was written");
        // Unauthenticated: 401 in the documented shape.
        let (s, b) = call(&f.router, "GET", "/api/api-keys", None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(b["error"].as_str().expect("error").contains("API key required"), "{b}");
    }

    #[tokio::test]
    async fn invalid_requests_are_400_with_the_field() {
        let (f, [admin, ..]) = fixture();
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        for (body, field) in [
            (serde_json::json!({"name": "  "}), "name"),
            (serde_json::json!({"name": long}), "name"),
            (serde_json::json!({"name": "a\nb"}), "name"),
            (serde_json::json!({"name": "a", "role": "root"}), "body"),
            (serde_json::json!({}), "body"),
        ] {
            let (s, b) = call(&f.router, "POST", "/api/api-keys", Some(&admin), Some(body.clone())).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {b}");
            assert_eq!(b["code"], "VALIDATION_ERROR");
            assert!(b["error"].as_str().expect("error").starts_with(&format!("invalid {field}")), "{b}");
        }
        let (s, b) = call(&f.router, "DELETE", "/api/api-keys", Some(&admin), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert!(b["error"].as_str().expect("error").contains("keyId"), "{b}");
        let (s, _) = call(&f.router, "DELETE", "/api/api-keys/not-an-id", Some(&admin), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn the_bootstrap_key_cannot_be_revoked_through_the_api() {
        let (f, [admin, ..]) = fixture();
        let boot = PlaintextKey::from_bytes([9; 20]);
        let mut r = KeyRecord::new(&boot, "team-a", Role::Admin, "bootstrap", Utc::now());
        r.bootstrap = true;
        f.keys.created(r, Instant::now());
        let uri = format!("/api/api-keys/{}", boot.id());
        let (s, b) = call(&f.router, "DELETE", &uri, Some(&admin), None).await;
        assert_eq!(s, StatusCode::CONFLICT, "{b}");
        assert!(f.keys.authenticate(&boot).is_some());
    }

    #[tokio::test]
    async fn a_write_failure_is_a_500_without_details() {
        #[derive(Debug)]
        struct Broken;
        impl SecretWriter for Broken {
            fn create(
                &self,
                _: k8s_openapi::api::core::v1::Secret,
            ) -> futures::future::BoxFuture<'_, Result<(), WriteError>> {
                Box::pin(async { Err(WriteError::Kube(kube::Error::LinesCodecMaxLineLengthExceeded)) })
            }
            fn delete<'a>(&'a self, _: &'a str) -> futures::future::BoxFuture<'a, Result<(), WriteError>> {
                Box::pin(async { Err(WriteError::AlreadyExists) })
            }
            fn list(
                &self,
            ) -> futures::future::BoxFuture<'_, Result<Vec<k8s_openapi::api::core::v1::Secret>, WriteError>>
            {
                Box::pin(async { Ok(vec![]) })
            }
        }
        let admin = PlaintextKey::from_bytes([1; 20]);
        let keys = Keys::from_index(KeyIndex::from_records([KeyRecord::new(&admin, "a", Role::Admin, "", Utc::now())]));
        let api = KeysApi { keys, writer: Arc::new(Broken), release_namespace: "rel".into() };
        let state = ApiState::new(
            api.keys.clone(),
            api.writer.clone(),
            api.release_namespace.clone(),
            RateLimiter::new(Limits::default(), 10),
            &prometheus::Registry::new(),
        )
        .expect("state");
        let router = state.router();
        let (s, b) = call(&router, "POST", "/api/api-keys", Some(&admin), Some(serde_json::json!({"name": "x"}))).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(b["error"], "internal server error");
        assert_eq!(b["code"], "INTERNAL_ERROR");
    }
}
