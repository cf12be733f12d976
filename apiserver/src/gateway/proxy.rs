//! The HTTP half of the core: `/{namespace}/{name}/{rest}` forwarded to a predictor pod.
//!
//! A request is checked (route, deployment, lifecycle), its body read into memory up to
//! `max_body_bytes` (so that it can be sent again, and so that a client that goes away while
//! held is noticed), then sent to the least loaded ready endpoint, after holding it while there
//! is none. A send that fails before the request reached the pod (connection refused or timed
//! out, or a pooled connection found closed before anything was written) ejects the endpoint
//! and tries again, on another endpoint or after holding; a failure after that is a 503 and is
//! not retried. The response streams back; the endpoint counts the request in flight until its
//! body is done.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::time::Instant;

use super::Gateway;
use super::error::GatewayError;
use super::index::{DeploymentHandle, DeploymentKey, EndpointLease, Lifecycle};

/// The first path segment that is never a namespace: it stays free for the REST APIs.
pub const RESERVED_NAMESPACE: &str = "api";

/// The `model_class` the predictor's Label Studio `/health` reports, and so the gateway's too.
pub const LABEL_STUDIO_MODEL_CLASS: &str = "OcellusYOLO";

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus those the
/// gateway sets itself (`host`, `content-length`) and `expect` (the body is already read).
const HOP_BY_HOP: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "expect",
];

/// `/{namespace}/{name}` and the rest (with its leading `/`), split from the raw path so the
/// rest is forwarded exactly as received (percent-encoding included).
pub(crate) fn split_path(path: &str) -> Option<(&str, &str, &str)> {
    let p = path.strip_prefix('/')?;
    let (namespace, p) = p.split_once('/')?;
    let (name, _) = p.split_once('/')?;
    let rest = &path[1 + namespace.len() + 1 + name.len()..];
    (!namespace.is_empty() && !name.is_empty()).then_some((namespace, name, rest))
}

/// `headers` without hop-by-hop headers (including those the `Connection` header names).
pub(crate) fn end_to_end(headers: &HeaderMap, also_drop_content_length: bool) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || named.iter().any(|t| t == n)
            || (also_drop_content_length && name == header::CONTENT_LENGTH)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The gateway's handler for every method on `/{namespace}/{name}/...`.
pub(crate) async fn handle(State(gw): State<Gateway>, req: Request) -> Response {
    let req = match key_from_json_body(&gw, req).await {
        Ok(req) => req,
        Err(e) => {
            let resp = e.into_response();
            gw.inner.metrics.count_response(resp.status());
            return resp;
        }
    };
    let resp = match authorize(&gw, req) {
        Ok(req) => match forward(&gw, req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        },
        Err(refused) => refused.into_response_as(crate::api::error::Flavor::Ultralytics),
    };
    gw.inner.metrics.count_response(resp.status());
    resp
}

/// With API keys required: the caller's key must be live and act in the deployment's
/// namespace; the key (header or `api_key` query parameter; a JSON body's was taken out by
/// [`key_from_json_body`]) is then removed, so that pods never see it. A refusal is the REST
/// APIs' error body.
fn authorize(gw: &Gateway, mut req: Request) -> Result<Request, crate::api::error::ApiError> {
    let Some(keys) = gw.inner.keys.get() else { return Ok(req) };
    let path = req.uri().path().to_string();
    let Some((namespace, _, _)) = split_path(&path) else { return Ok(req) };
    let principal = crate::api::auth::authenticate(keys, req.headers(), req.uri())?;
    principal.require_in(namespace, crate::api::keys::Action::Read)?;
    req.headers_mut().remove(header::AUTHORIZATION);
    if let Some(q) = req.uri().query() {
        let kept: Vec<&str> = q.split('&').filter(|p| p.split('=').next() != Some("api_key")).collect();
        let pq = if kept.is_empty() { path.clone() } else { format!("{path}?{}", kept.join("&")) };
        if let Ok(uri) = axum::http::Uri::builder().path_and_query(pq).build() {
            *req.uri_mut() = uri;
        }
    }
    Ok(req)
}

/// Roboflow's inference SDK sends its key as `api_key` in the JSON body of `/infer/...` and
/// `/model/add` (its default transport). With keys required, an `api_key` in a JSON `POST` body
/// (read within the body limit) is taken out, so that the pod never sees it; when the request
/// has no key in the header or query, it is the request's key ([`authorize`] gets it as
/// `Authorization: Bearer`).
async fn key_from_json_body(gw: &Gateway, req: Request) -> Result<Request, GatewayError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if gw.inner.keys.get().is_none() || req.method() != Method::POST || !is_json {
        return Ok(req);
    }
    let has_key = crate::api::auth::presents_key(req.headers(), req.uri());
    let (mut parts, body) = req.into_parts();
    let limit = gw.inner.config.max_body_bytes;
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let mut bytes = read_body(body, limit, declared).await?;
    // Parsed only when the field may be there: most JSON bodies (Label Studio's tasks) have none.
    let mentions_key = bytes.windows(9).any(|w| w == b"\"api_key\"");
    if mentions_key
        && let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && let Some(key) = fields.remove("api_key")
    {
        if let (false, Some(k)) = (has_key, key.as_str()) {
            crate::api::auth::set_bearer(&mut parts.headers, k);
        }
        bytes = Bytes::from(serde_json::Value::Object(fields).to_string());
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

async fn forward(gw: &Gateway, req: Request) -> Result<Response, GatewayError> {
    let arrived = Instant::now();
    let config = &gw.inner.config;
    let deadline = arrived + config.hold_timeout;
    let path = req.uri().path().to_string();
    let Some((namespace, name, rest)) = split_path(&path) else {
        return Err(GatewayError::NoRoute(path.clone()));
    };
    if namespace == RESERVED_NAMESPACE {
        return Err(GatewayError::NoRoute(path.clone()));
    }
    let key = DeploymentKey::new(namespace, name);
    let rest = rest.to_string();
    let index = &gw.inner.index;
    if !index.wait_synced(deadline).await {
        return Err(GatewayError::NotSynced);
    }
    let deployment = index.get(&key).ok_or_else(|| GatewayError::NotFound(key.clone()))?;
    deployment.check()?;

    let (parts, body) = req.into_parts();
    let limit = config.max_body_bytes;
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    // Label Studio allows 1 s for /health and 3 s for /setup: at zero, the deployment answers
    // them itself (and is woken) instead of holding them.
    if let Some(resp) = label_studio_at_zero(&deployment, &parts.method, &rest) {
        return Ok(resp);
    }
    let body = read_body(body, limit, declared).await?;

    let headers = forwarded_headers(&parts.headers, namespace, name);
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.clone(),
    };
    // Held once, the request keeps its place: a retry after a refused connection holds again
    // without counting against the queue bound.
    let mut admitted = false;
    loop {
        let lease = deployment.acquire(deadline, admitted).await?;
        admitted = true;
        match send(gw, &deployment, lease, &parts.method, &path_and_query, &headers, body.clone()).await {
            Ok(resp) => return Ok(resp),
            Err(SendError::NotSent { addr, error }) => {
                gw.inner.metrics.upstream_errors.with_label_values(&["connect"]).inc();
                tracing::warn!(deployment = %key, %addr, error = %chain(&error), "predictor pod refused the connection; ejected, retrying");
                deployment.eject(addr);
            }
            Err(SendError::Failed(e)) => return Err(e),
        }
    }
}

/// The `model_version` a predictor pod reports to Label Studio, `<model name>-<version>`: the
/// operator names the model after the deployment (`OCELLUS_MODEL_NAME`) and the version is the
/// artifact's SHA-256 prefix, `status.modelVersion`. The same string at zero and from a pod, so
/// that Label Studio does not see the version change when the deployment wakes. `None` while
/// the status has no version yet.
pub fn label_studio_model_version(deployment: &str, model_version: Option<&str>) -> Option<String> {
    model_version.map(|v| format!("{deployment}-{v}"))
}

/// Reads the whole body, refusing more than `limit` bytes.
async fn read_body(body: Body, limit: usize, declared: Option<u64>) -> Result<Bytes, GatewayError> {
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n.min(limit as u64) as usize));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(GatewayError::BodyRead)?;
        if buf.len() + chunk.len() > limit {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// The Label Studio `/health` and `/setup` answers of an active deployment with no usable
/// endpoint, or `None` (other requests, or a pod is ready). Both ask for the deployment to be
/// woken.
fn label_studio_at_zero(deployment: &DeploymentHandle, method: &Method, rest: &str) -> Option<Response> {
    let is_label_studio = matches!((method, rest), (&Method::GET, "/health") | (&Method::POST, "/setup"));
    if !is_label_studio || deployment.usable_endpoints() > 0 {
        return None;
    }
    let info = deployment.info().filter(|i| i.lifecycle == Lifecycle::Active)?;
    let model_version = label_studio_model_version(&deployment.key().name, info.model_version.as_deref());
    let body = match (method, rest) {
        (&Method::GET, "/health") => serde_json::json!({
            "status": "UP",
            "model_class": LABEL_STUDIO_MODEL_CLASS,
            "model_version": model_version,
        }),
        (&Method::POST, "/setup") => serde_json::json!({ "model_version": model_version }),
        _ => return None,
    };
    deployment.request_wake();
    Some((StatusCode::OK, axum::Json(body)).into_response())
}

fn forwarded_headers(incoming: &HeaderMap, namespace: &str, name: &str) -> HeaderMap {
    let mut headers = end_to_end(incoming, true);
    if let Some(host) = incoming.get(header::HOST) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    if let Ok(prefix) = HeaderValue::from_str(&format!("/{namespace}/{name}")) {
        headers.insert(HeaderName::from_static("x-forwarded-prefix"), prefix);
    }
    headers
}

enum SendError {
    /// Nothing reached the pod: safe to send again.
    NotSent { addr: std::net::SocketAddr, error: hyper_util::client::legacy::Error },
    /// Final.
    Failed(GatewayError),
}

/// Whether `e` means the request never reached the pod: a connect error (refused, timed out),
/// or hyper giving the request back unsent (`canceled`: a pooled connection closed first).
fn not_sent(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return h.is_canceled();
        }
        source = s.source();
    }
    false
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(x) = source {
        s.push_str(": ");
        s.push_str(&x.to_string());
        source = x.source();
    }
    s
}

async fn send(
    gw: &Gateway,
    deployment: &DeploymentHandle,
    lease: EndpointLease,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, SendError> {
    let addr = lease.addr();
    let uri: Uri = format!("http://{addr}{path_and_query}")
        .parse()
        .map_err(|_| SendError::Failed(GatewayError::NoRoute(path_and_query.to_string())))?;
    let mut req = axum::http::Request::builder().method(method.clone()).uri(uri);
    if let Some(h) = req.headers_mut() {
        *h = headers.clone();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let req =
        req.body(Body::from(body)).map_err(|_| SendError::Failed(GatewayError::NoRoute(path_and_query.to_string())))?;
    let timeout = gw.inner.config.upstream_timeout;
    let resp = match tokio::time::timeout(timeout, gw.inner.client.request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(error)) if not_sent(&error) => return Err(SendError::NotSent { addr, error }),
        Ok(Err(source)) => {
            gw.inner.metrics.upstream_errors.with_label_values(&["in_flight"]).inc();
            tracing::warn!(deployment = %deployment.key(), %addr, error = %chain(&source), "predictor pod failed mid-request");
            return Err(SendError::Failed(GatewayError::UpstreamFailed { key: deployment.key().clone(), source }));
        }
        Err(_) => {
            gw.inner.metrics.upstream_errors.with_label_values(&["timeout"]).inc();
            return Err(SendError::Failed(GatewayError::UpstreamTimeout { key: deployment.key().clone(), timeout }));
        }
    };
    let (parts, incoming) = resp.into_parts();
    // The lease rides along with the body: the request is in flight until it is streamed out
    // (or the client goes away and the body is dropped).
    let stream = Body::new(incoming).into_data_stream().map(move |chunk| {
        let _in_flight = &lease;
        chunk
    });
    let mut out = Response::new(Body::from_stream(stream));
    *out.status_mut() = parts.status;
    *out.headers_mut() = end_to_end(&parts.headers, false);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_raw_path() {
        assert_eq!(split_path("/ns/d/predict"), Some(("ns", "d", "/predict")));
        assert_eq!(split_path("/ns/d/"), Some(("ns", "d", "/")));
        assert_eq!(split_path("/ns/d/v2/models/m%20x/infer"), Some(("ns", "d", "/v2/models/m%20x/infer")));
        assert_eq!(split_path("/ns/d"), None);
        assert_eq!(split_path("//d/x"), None);
        assert_eq!(split_path("/ns//x"), None);
        assert_eq!(split_path("healthz"), None);
    }

    #[test]
    fn drops_hop_by_hop_headers_and_those_connection_names() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eDp5"),
            ("host", "gw"),
            ("content-length", "3"),
            ("authorization", "Bearer t"),
            ("x-keep", "a"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h.append(HeaderName::from_static("x-keep"), HeaderValue::from_static("b"));
        let out = end_to_end(&h, true);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["authorization", "x-keep"]);
        assert_eq!(out.get_all("x-keep").iter().count(), 2);
        assert!(end_to_end(&h, false).contains_key("content-length"));
    }
}
