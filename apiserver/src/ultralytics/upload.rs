//! Uploads: `POST /api/upload/signed-url` gives a presigned `PUT` URL into the platform bucket,
//! under `<namespace>/datasets/<dataset>/uploads/<session>/<filename>`; the client `PUT`s the
//! bytes there without credentials; `POST /api/upload/complete` checks the object arrived;
//! `POST /api/datasets/{owner}/{dataset}/ingest {"sessionId"}` ingests it.
//!
//! Stateless: the `sessionId` is the object key, encoded. It names a key in the caller's own
//! namespace or it is refused, so a forged id reaches nothing another tenant owns. URLs are
//! valid 12 hours. Model uploads (`assetType: models`) are planned (issue #19).

use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{SecondsFormat, Utc};
use kube::ResourceExt;
use ocellus_storage::{S3Config, Store};
use serde::{Deserialize, Serialize};

use super::UltralyticsApi;
use crate::api::{Action, ApiError, ApiJson, Principal};

/// How long an upload URL is valid.
pub const URL_TTL: Duration = Duration::from_secs(12 * 3600);
/// Largest upload accepted, in bytes (`totalBytes`).
pub const MAX_UPLOAD_BYTES: u64 = 50 << 30;
/// The archive types the ingest reads.
pub const ARCHIVE_SUFFIXES: [&str; 4] = [".zip", ".tar", ".tar.gz", ".tgz"];
const SESSION_PREFIX: &str = "us_";

/// The platform bucket, as the apiserver reaches it and as clients do.
#[derive(Clone, Debug)]
pub struct Uploads {
    /// For `HEAD` (the in-cluster endpoint).
    store: Store,
    /// For signing: the endpoint clients reach (the same store unless a public one is set).
    signer: Store,
}

impl Uploads {
    /// The bucket `bucket` through `s3`; URLs name `public_endpoint` when given (clients outside
    /// the cluster cannot reach an in-cluster endpoint).
    pub fn new(s3: &S3Config, bucket: &str, public_endpoint: Option<&str>) -> Uploads {
        let store = Store::new(s3, bucket);
        let signer = match public_endpoint {
            Some(e) => Store::new(&S3Config { endpoint: Some(e.to_string()), ..s3.clone() }, bucket),
            None => store.clone(),
        };
        Uploads { store, signer }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        self.store.bucket()
    }

    /// The size (`None` if it is missing) and a presigned `GET` URL of `uri`, an object of the
    /// platform bucket (`s3://<bucket>/<key>`), valid [`URL_TTL`].
    pub async fn presign_download(&self, uri: &str) -> Result<(Option<u64>, String), ApiError> {
        let key = self.key_of(uri).ok_or_else(|| ApiError::NotImplemented {
            what: format!("downloads of {uri}, outside the platform bucket"),
        })?;
        let size = self.store.head(key).await.map_err(ApiError::internal)?;
        let url = self.signer.presign_get(key, URL_TTL).await.map_err(ApiError::internal)?;
        Ok((size, url))
    }

    /// The key of `uri` when it is an object of the platform bucket.
    fn key_of<'a>(&self, uri: &'a str) -> Option<&'a str> {
        uri.strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .filter(|(bucket, key)| *bucket == self.bucket() && !key.is_empty())
            .map(|(_, key)| key)
    }

    /// The bytes of `uri`, an object of the platform bucket.
    pub async fn read(&self, uri: &str) -> Result<axum::body::Bytes, ApiError> {
        let key = self
            .key_of(uri)
            .ok_or_else(|| ApiError::NotImplemented { what: format!("reading {uri}, outside the platform bucket") })?;
        self.store.get(key).await.map_err(ApiError::internal)
    }

    /// Ultralytics' NDJSON of the manifest at `manifest_uri`, written to `export_key` with every
    /// image's `url` a presigned `GET` (valid [`URL_TTL`]), and a presigned `GET` of it: what
    /// `ultralytics` downloads for `data="ul://<owner>/datasets/<slug>"`. Written anew each time,
    /// since the image URLs expire.
    pub async fn export_manifest(&self, manifest_uri: &str, export_key: &str) -> Result<String, ApiError> {
        let key = self.key_of(manifest_uri).ok_or_else(|| ApiError::NotImplemented {
            what: format!("exports of {manifest_uri}, outside the platform bucket"),
        })?;
        let manifest = self.store.get(key).await.map_err(ApiError::internal)?;
        let text = std::str::from_utf8(&manifest).map_err(ApiError::internal)?;
        let mut out = String::with_capacity(text.len() * 2);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut v: serde_json::Value = serde_json::from_str(line).map_err(ApiError::internal)?;
            let image_key = v.get("url").and_then(|u| u.as_str()).and_then(|u| self.key_of(u)).map(str::to_string);
            if v.get("type").and_then(|t| t.as_str()) == Some("image")
                && let Some(k) = image_key
            {
                v["url"] = serde_json::json!(self.signer.presign_get(&k, URL_TTL).await.map_err(ApiError::internal)?);
            }
            out.push_str(&v.to_string());
            out.push('\n');
        }
        self.store.put(export_key, out.into(), "application/x-ndjson").await.map_err(ApiError::internal)?;
        self.signer.presign_get(export_key, URL_TTL).await.map_err(ApiError::internal)
    }
}

pub(super) fn routes() -> Router<UltralyticsApi> {
    Router::new()
        .route("/api/upload/signed-url", post(signed_url).fallback(super::compat::fallback))
        .route("/api/upload/complete", post(complete).fallback(super::compat::fallback))
}

/// Where a dataset's uploads live: `<namespace>/datasets/<dataset>/uploads/`, the prefix the
/// operator reads `spec.source.upload.objects` under.
pub fn upload_prefix(ns: &str, dataset: &str) -> String {
    format!("{ns}/datasets/{dataset}/uploads/")
}

/// The session id of an object key.
pub fn session_id(key: &str) -> String {
    format!("{SESSION_PREFIX}{}", URL_SAFE_NO_PAD.encode(key))
}

/// The object key of a session id, if it is an upload of namespace `ns` (else 404).
pub fn session_key(session: &str, ns: &str) -> Result<String, ApiError> {
    let not_found = || ApiError::NotFound("upload session".into());
    let raw = session.strip_prefix(SESSION_PREFIX).ok_or_else(not_found)?;
    let key = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).map_err(|_| not_found())?).map_err(|_| not_found())?;
    let rest = key.strip_prefix(&format!("{ns}/datasets/")).ok_or_else(not_found)?;
    let parts: Vec<&str> = rest.split('/').collect();
    // <dataset>/uploads/<session>/<filename>, no empty or dot segments.
    let ok =
        parts.len() == 4 && parts[1] == "uploads" && parts.iter().all(|p| !p.is_empty() && *p != "." && *p != "..");
    if ok { Ok(key) } else { Err(not_found()) }
}

/// `POST /api/upload/signed-url` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedUrlRequest {
    /// `datasets` (`models` is planned).
    pub asset_type: String,
    /// The dataset's `ds_` id or slug.
    pub asset_id: String,
    /// The file's name: a `.zip`, `.tar`, `.tar.gz` or `.tgz` archive.
    pub filename: String,
    /// The file's content type (informational: any may be sent with the `PUT`).
    pub content_type: Option<String>,
    /// The file's size in bytes.
    pub total_bytes: Option<u64>,
}

/// `POST /api/upload/signed-url` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedUrl {
    /// Pass to `ingest` (and `complete`).
    pub session_id: String,
    /// `PUT` the bytes here, without an `Authorization` header.
    pub upload_url: String,
    /// `s3://` URI of the object.
    pub object_path: String,
    /// A presigned `GET` of the object, once uploaded.
    pub download_url: String,
    /// When both URLs expire (RFC 3339).
    pub expires_at: String,
    /// Extra headers to send with the `PUT`: none.
    pub headers: std::collections::BTreeMap<String, String>,
}

fn check_filename(name: &str) -> Result<(), ApiError> {
    let bad = |m: &str| Err(ApiError::bad_request("filename", m));
    if name.is_empty() || name.len() > 255 || name.contains(['/', '\\']) || name == "." || name == ".." {
        return bad("must be a plain file name (1 to 255 characters, no slashes)");
    }
    if name.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    let lower = name.to_ascii_lowercase();
    if !ARCHIVE_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
        return bad("dataset uploads must be .zip, .tar, .tar.gz or .tgz archives");
    }
    Ok(())
}

fn uploads(api: &UltralyticsApi) -> Result<&Uploads, ApiError> {
    api.uploads.as_ref().ok_or_else(|| ApiError::NotImplemented {
        what: "uploads without object storage (set OCELLUS_S3_BUCKET and credentials)".into(),
    })
}

/// A presigned upload URL for a dataset archive.
#[utoipa::path(post, path = "/api/upload/signed-url", tag = "ultralytics", request_body = SignedUrlRequest,
    responses((status = 200, body = SignedUrl), (status = 400, body = crate::api::error::ErrorBody),
        (status = 404, body = crate::api::error::ErrorBody), (status = 501, body = crate::api::error::ErrorBody),
        crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn signed_url(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    ApiJson(body): ApiJson<SignedUrlRequest>,
) -> Result<Json<SignedUrl>, ApiError> {
    principal.require(Action::Write)?;
    match body.asset_type.as_str() {
        "datasets" => {}
        "models" => return Err(ApiError::NotImplemented { what: "model uploads (assetType `models`)".into() }),
        other => {
            return Err(ApiError::bad_request("assetType", format!("'{other}' is not `datasets` or `models`")));
        }
    }
    check_filename(&body.filename)?;
    if body.total_bytes.is_some_and(|n| n > MAX_UPLOAD_BYTES) {
        return Err(ApiError::PayloadTooLarge { limit: MAX_UPLOAD_BYTES });
    }
    let up = uploads(&api)?;
    let ns = &principal.namespace;
    let dataset = super::datasets::find(&api, ns, &body.asset_id)?;
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| ApiError::internal(e.to_string()))?;
    let key = format!("{}{}/{}", upload_prefix(ns, &dataset.name_any()), hex::encode(nonce), body.filename);
    let upload_url = up.signer.presign_put(&key, URL_TTL).await.map_err(ApiError::internal)?;
    let download_url = up.signer.presign_get(&key, URL_TTL).await.map_err(ApiError::internal)?;
    let expires = Utc::now() + chrono::Duration::from_std(URL_TTL).unwrap_or_default();
    tracing::info!(namespace = %ns, dataset = %dataset.name_any(), key = %principal.key_id, "upload URL issued");
    Ok(Json(SignedUrl {
        session_id: session_id(&key),
        object_path: up.store.uri(&key),
        upload_url,
        download_url,
        expires_at: expires.to_rfc3339_opts(SecondsFormat::Millis, true),
        headers: Default::default(),
    }))
}

/// `POST /api/upload/complete` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompleteRequest {
    /// The session of `signed-url`.
    pub session_id: String,
    /// Not checked.
    pub checksum: Option<String>,
    /// Not checked.
    pub md5: Option<String>,
}

/// `POST /api/upload/complete` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Completed {
    /// Always `true`.
    pub success: bool,
    /// The object.
    pub file: UploadedFile,
}

/// An uploaded object.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadedFile {
    /// Its size in bytes.
    pub size: u64,
}

/// Checks that an upload arrived (optional before `ingest`).
#[utoipa::path(post, path = "/api/upload/complete", tag = "ultralytics", request_body = CompleteRequest,
    responses((status = 200, body = Completed), (status = 404, body = crate::api::error::ErrorBody),
        (status = 409, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn complete(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    ApiJson(body): ApiJson<CompleteRequest>,
) -> Result<Json<Completed>, ApiError> {
    principal.require(Action::Write)?;
    let key = session_key(&body.session_id, &principal.namespace)?;
    let up = uploads(&api)?;
    match up.store.head(&key).await.map_err(ApiError::internal)? {
        Some(size) => Ok(Json(Completed { success: true, file: UploadedFile { size } })),
        None => Err(ApiError::Conflict("nothing has been uploaded to this session's URL yet".into())),
    }
}
