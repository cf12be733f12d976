//! [`ApiError`]: the one error type of the REST APIs, and how each API surface renders it.
//!
//! Handlers, the auth and rate-limit layers and the Kubernetes writes all fail with an
//! [`ApiError`]; its [`IntoResponse`] renders the Ultralytics Platform's documented error body,
//! `{"error": "<message>"}`, with the status from the reference's table. The reference lists
//! machine-readable codes (`UNAUTHORIZED`, `FORBIDDEN`, `NOT_FOUND`, `VALIDATION_ERROR`,
//! `RATE_LIMITED`, `INTERNAL_ERROR`) without showing where they travel; they are added as a
//! `code` field next to `error`, which clients that read `error` alone ignore.
//!
//! Other surfaces (TAO, Roboflow, Label Studio) render the same enum in their own shapes through
//! [`ApiError::into_response_as`] with their [`Flavor`]: one variant and one match arm here per
//! surface, so every error body of the apiserver is defined in this file.
//!
//! Messages are written for the caller: they never carry an API key, a hash, a Kubernetes Secret
//! name or an upstream error. [`ApiError::Internal`]'s cause goes to the log only.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a presented API key was refused. A closed set of fixed messages, so that a refusal can
/// never echo what the caller sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No key in any accepted form (`Authorization: Bearer`/`Token`/`Basic`, `api_key` query).
    Missing,
    /// Something was presented, but not a `ul_` key (wrong scheme, bad Basic encoding, wrong format).
    Malformed,
    /// A well-formed key that matches no live key (never issued, or revoked).
    Invalid,
}

impl AuthFailure {
    fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "API key required: send it as 'Authorization: Bearer <key>', 'Authorization: Token <key>', \
                 HTTP Basic (the key as password) or the api_key query parameter"
            }
            AuthFailure::Malformed => "malformed API key: expected 'ul_' followed by 40 hex characters",
            AuthFailure::Invalid => "invalid API key",
        }
    }
}

/// Every way a REST API request can fail, with the HTTP status each maps to.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The named thing does not exist, or exists outside the caller's namespace (which the
    /// caller must not learn). 404.
    #[error("{0} not found")]
    NotFound(String),
    /// No usable API key. 401 with `WWW-Authenticate: Bearer`.
    #[error("{}", .0.message())]
    Unauthorized(AuthFailure),
    /// The key is valid but its role or namespace does not allow this. 403.
    #[error("{0}")]
    Forbidden(String),
    /// The request is invalid; `field` names the offending field (`body` for an unreadable body). 400.
    #[error("invalid {field}: {message}")]
    BadRequest {
        /// The request field (JSON field, query or path parameter) at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The request conflicts with the current state (a duplicate, or an object that may not be
    /// changed this way). 409.
    #[error("{0}")]
    Conflict(String),
    /// The request body exceeds `limit` bytes. 413.
    #[error("the request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The key's budget for this category of request is spent. 429 with `Retry-After`
    /// (the rate-limit layer adds the `X-RateLimit-*` headers).
    #[error("rate limit exceeded; retry in {} s", retry_after_secs(*retry_after))]
    RateLimited {
        /// How long until one more request is allowed.
        retry_after: Duration,
    },
    /// A method no API has on this path (`TRACE`, `CONNECT`, ...). 405.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// A documented route or option that Ocellus does not implement (yet). 501.
    #[error("{what} is not implemented by Ocellus")]
    NotImplemented {
        /// What was asked for, e.g. `POST /api/models/{modelId}/clone`.
        what: String,
    },
    /// A dependency is not ready (the key cache before its first listing). 503 with `Retry-After`.
    #[error("{what} not ready; retry shortly")]
    Unavailable {
        /// What is not ready.
        what: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// A fault of the server. 500; the cause is logged, the caller sees a fixed message.
    #[error("internal server error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// `Retry-After` in whole seconds: rounded up, at least 1 (a client told 0 would retry at once).
pub fn retry_after_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// The error body of the Ultralytics Platform API: `{"error": "...", "code": "NOT_FOUND"}`.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Human-readable message (the field the reference documents).
    #[schema(example = "Dataset not found")]
    pub error: String,
    /// Machine-readable code from the reference's table (`UNAUTHORIZED`, `FORBIDDEN`,
    /// `NOT_FOUND`, `VALIDATION_ERROR`, `RATE_LIMITED`, `INTERNAL_ERROR`), plus `CONFLICT`,
    /// `PAYLOAD_TOO_LARGE`, `METHOD_NOT_ALLOWED`, `NOT_IMPLEMENTED` and `SERVICE_UNAVAILABLE` for the statuses the
    /// table leaves out.
    #[schema(example = "NOT_FOUND")]
    pub code: String,
}

/// The error-body shape of one API surface. `#[non_exhaustive]`: surfaces are added as their
/// routers land (TAO, Roboflow, Label Studio), each with its arm in
/// [`ApiError::into_response_as`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flavor {
    /// Ultralytics Platform: `{"error": "...", "code": "..."}`. Also what `/api/api-keys` uses.
    #[default]
    Ultralytics,
    /// Roboflow dedicated deployments: the message as plain text, with the status code (their
    /// reference: "otherwise, the response body contains an error message as a string").
    Roboflow,
    /// Label Studio (Django REST framework): `{"detail": "...", "status_code": 404}`.
    LabelStudio,
}

impl ApiError {
    /// An internal error from anything printable (the message is logged, never returned).
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError::Internal(e.into())
    }

    /// A 400 for `field`.
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest { field: field.into(), message: message.into() }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The Ultralytics error code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::Unauthorized(_) => "UNAUTHORIZED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::BadRequest { .. } => "VALIDATION_ERROR",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            ApiError::RateLimited { .. } => "RATE_LIMITED",
            ApiError::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            ApiError::NotImplemented { .. } => "NOT_IMPLEMENTED",
            ApiError::Unavailable { .. } => "SERVICE_UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    /// Seconds to send in `Retry-After`, where waiting helps.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after } | ApiError::Unavailable { retry_after, .. } => {
                Some(retry_after_secs(*retry_after))
            }
            _ => None,
        }
    }

    /// Logs the error: the full cause chain for server faults, a debug line for refusals.
    fn log(&self) {
        let status = self.status().as_u16();
        if let ApiError::Internal(cause) = self {
            let mut detail = cause.to_string();
            let mut source = cause.source();
            while let Some(s) = source {
                detail.push_str(": ");
                detail.push_str(&s.to_string());
                source = s.source();
            }
            tracing::error!(status, error = %detail, "REST API internal error");
        } else if self.status().is_server_error() {
            tracing::warn!(status, error = %self, "REST API error");
        } else {
            tracing::debug!(status, error = %self, "REST API refusal");
        }
    }

    /// The response in `flavor`'s error shape, with the status and headers every shape shares
    /// (`Retry-After` on 429 and 503, `WWW-Authenticate` on 401).
    pub fn into_response_as(self, flavor: Flavor) -> Response {
        self.log();
        let status = self.status();
        let mut resp = match flavor {
            Flavor::Ultralytics => {
                (status, Json(ErrorBody { error: self.to_string(), code: self.code().to_string() })).into_response()
            }
            Flavor::Roboflow => {
                (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], self.to_string()).into_response()
            }
            Flavor::LabelStudio => {
                (status, Json(serde_json::json!({"detail": self.to_string(), "status_code": status.as_u16()})))
                    .into_response()
            }
        };
        if let Some(s) = self.retry_after() {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ocellus\""));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    /// The Ultralytics shape (see [`Flavor::Ultralytics`]).
    fn into_response(self) -> Response {
        self.into_response_as(Flavor::Ultralytics)
    }
}

impl From<kube::Error> for ApiError {
    /// Kubernetes API failures: 404 and 409 pass through (409 with the API server's message,
    /// which names the caller's own object); 400 and 422 (schema and CEL validation) become
    /// [`ApiError::BadRequest`] with the API server's message, which is what the caller must
    /// fix; 429 (API priority and fairness) becomes a 503 to retry; anything else (403 of our
    /// own RBAC, 5xx, transport) is internal.
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 404 => ApiError::NotFound("resource".into()),
            kube::Error::Api(s) if s.code == 409 => ApiError::Conflict(s.message.clone()),
            kube::Error::Api(s) if s.code == 400 || s.code == 422 => ApiError::bad_request("body", s.message.clone()),
            kube::Error::Api(s) if s.code == 429 => {
                ApiError::Unavailable { what: "the Kubernetes API".into(), retry_after: Duration::from_secs(1) }
            }
            _ => ApiError::internal(e),
        }
    }
}

/// A JSON request body whose rejections are [`ApiError`]s: a body over the limit is a 413,
/// anything else unreadable a 400 for `body`. Use it instead of [`Json`] in every REST handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

/// An API whose errors all take one [`Flavor`]'s shape (a marker type for [`SurfaceError`]).
pub trait Surface {
    /// The shape of this API's errors.
    const FLAVOR: Flavor;
}

/// [`ApiError`] rendered in the shape of surface `S`, for handlers whose routes are all one API's.
pub struct SurfaceError<S>(pub ApiError, std::marker::PhantomData<S>);

impl<S> std::fmt::Debug for SurfaceError<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<S> From<ApiError> for SurfaceError<S> {
    fn from(e: ApiError) -> Self {
        SurfaceError(e, std::marker::PhantomData)
    }
}

impl<S: Surface> IntoResponse for SurfaceError<S> {
    fn into_response(self) -> Response {
        self.0.into_response_as(S::FLAVOR)
    }
}

/// A JSON request body ([`ApiJson`]) whose rejections are surface `S`'s errors.
pub struct SurfaceJson<T, S>(pub T, pub std::marker::PhantomData<S>);

impl<T: std::fmt::Debug, S> std::fmt::Debug for SurfaceJson<T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: DeserializeOwned, S: Surface, St: Send + Sync> FromRequest<St> for SurfaceJson<T, S> {
    type Rejection = SurfaceError<S>;

    async fn from_request(req: Request, state: &St) -> Result<Self, Self::Rejection> {
        let ApiJson(v) = ApiJson::<T>::from_request(req, state).await?;
        Ok(SurfaceJson(v, std::marker::PhantomData))
    }
}

/// Maps axum's JSON rejection onto [`ApiError`].
fn json_rejection(r: JsonRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // axum's default body limit (`DefaultBodyLimit`), 2 MiB.
        ApiError::PayloadTooLarge { limit: 2 << 20 }
    } else {
        ApiError::bad_request("body", r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(resp: Response) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (status, headers, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn each_variant_has_its_status_code_and_the_documented_body() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::NotFound("dataset".into()), 404, "NOT_FOUND"),
            (ApiError::Unauthorized(AuthFailure::Invalid), 401, "UNAUTHORIZED"),
            (ApiError::Forbidden("no".into()), 403, "FORBIDDEN"),
            (ApiError::bad_request("name", "too long"), 400, "VALIDATION_ERROR"),
            (ApiError::Conflict("exists".into()), 409, "CONFLICT"),
            (ApiError::PayloadTooLarge { limit: 10 }, 413, "PAYLOAD_TOO_LARGE"),
            (ApiError::RateLimited { retry_after: Duration::from_millis(1500) }, 429, "RATE_LIMITED"),
            (ApiError::NotImplemented { what: "clone".into() }, 501, "NOT_IMPLEMENTED"),
            (ApiError::MethodNotAllowed("TRACE".into()), 405, "METHOD_NOT_ALLOWED"),
            (ApiError::Unavailable { what: "keys".into(), retry_after: Duration::ZERO }, 503, "SERVICE_UNAVAILABLE"),
            (ApiError::internal("boom"), 500, "INTERNAL_ERROR"),
        ];
        for (err, status, code) in cases {
            let message = err.to_string();
            let (s, _, body) = body_of(err.into_response()).await;
            assert_eq!(s.as_u16(), status, "{code}");
            assert_eq!(body["code"], code);
            assert_eq!(body["error"], message.as_str());
            assert_eq!(body.as_object().expect("object").len(), 2, "only error and code: {body}");
        }
    }

    #[tokio::test]
    async fn not_found_reads_like_the_reference() {
        let (_, _, body) = body_of(ApiError::NotFound("Dataset".into()).into_response()).await;
        assert_eq!(body["error"], "Dataset not found");
    }

    #[tokio::test]
    async fn internal_details_are_logged_not_returned() {
        let (s, _, body) =
            body_of(ApiError::internal("secrets is forbidden: User system:serviceaccount:x").into_response()).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"], "internal server error");
        assert!(!body.to_string().contains("forbidden"), "{body}");
    }

    #[tokio::test]
    async fn retry_after_is_rounded_up_and_never_zero() {
        let (_, h, _) =
            body_of(ApiError::RateLimited { retry_after: Duration::from_millis(1500) }.into_response()).await;
        assert_eq!(h[header::RETRY_AFTER], "2");
        let (_, h, _) = body_of(ApiError::RateLimited { retry_after: Duration::ZERO }.into_response()).await;
        assert_eq!(h[header::RETRY_AFTER], "1");
        let (_, h, _) = body_of(ApiError::RateLimited { retry_after: Duration::from_secs(12) }.into_response()).await;
        assert_eq!(h[header::RETRY_AFTER], "12");
        let (_, h, _) = body_of(ApiError::NotFound("x".into()).into_response()).await;
        assert!(h.get(header::RETRY_AFTER).is_none());
    }

    #[tokio::test]
    async fn unauthorized_names_the_scheme_and_never_echoes_input() {
        for f in [AuthFailure::Missing, AuthFailure::Malformed, AuthFailure::Invalid] {
            let (s, h, body) = body_of(ApiError::Unauthorized(f).into_response()).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED);
            assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer realm=\"ocellus\"");
            assert!(!body["error"].as_str().expect("str").contains("ul_0"), "{body}");
        }
    }

    #[test]
    fn kube_errors_map_to_statuses() {
        let api = |code: u16, message: &str| {
            kube::Error::Api(kube::core::Status::failure(message, "").with_code(code).boxed())
        };
        assert_eq!(ApiError::from(api(404, "secrets \"x\" not found")).status(), StatusCode::NOT_FOUND);
        assert_eq!(ApiError::from(api(409, "exists")).status(), StatusCode::CONFLICT);
        let e = ApiError::from(api(422, "spec.epochs: must be >= 1"));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("spec.epochs"), "{e}");
        assert_eq!(ApiError::from(api(429, "slow down")).status(), StatusCode::SERVICE_UNAVAILABLE);
        let e = ApiError::from(api(403, "secrets is forbidden"));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.to_string(), "internal server error");
    }

    #[tokio::test]
    async fn api_json_maps_rejections() {
        #[derive(serde::Deserialize, Debug)]
        struct Body {
            #[allow(dead_code)]
            name: String,
        }
        let req = |body: &'static str, ct: &'static str| {
            Request::builder()
                .method("POST")
                .header(header::CONTENT_TYPE, ct)
                .body(axum::body::Body::from(body))
                .expect("request")
        };
        let ok = ApiJson::<Body>::from_request(req(r#"{"name":"a"}"#, "application/json"), &()).await;
        assert!(ok.is_ok());
        let e = ApiJson::<Body>::from_request(req("{", "application/json"), &()).await.expect_err("syntax");
        assert!(matches!(&e, ApiError::BadRequest { field, .. } if field == "body"), "{e:?}");
        let e = ApiJson::<Body>::from_request(req(r#"{"name":"a"}"#, "text/plain"), &()).await.expect_err("ct");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}
