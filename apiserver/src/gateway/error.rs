//! [`GatewayError`]: every answer the gateway gives itself instead of a pod's, as
//! `{"error": "..."}` with its status.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::index::DeploymentKey;

/// Why the gateway answered a request itself. Messages name the deployment (the caller's own
/// URL) but never pod addresses or upstream error details: those go to the log.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No ModelDeployment of that name in that namespace. 404.
    #[error("model deployment {0} not found")]
    NotFound(DeploymentKey),
    /// A path the gateway does not serve (the reserved namespace `api`). 404.
    #[error("no route for {0}")]
    NoRoute(String),
    /// `spec.stopped: true`. 503 at once.
    #[error("model deployment {0} is stopped (spec.stopped: true); set spec.stopped to false to serve it again")]
    Stopped(DeploymentKey),
    /// `spec.durationHours` has passed. 503 at once.
    #[error("model deployment {0} has expired (spec.durationHours has passed)")]
    Expired(DeploymentKey),
    /// Phase `Failed` and no ready pod left. 503 at once.
    #[error("model deployment {0} has failed and has no ready predictor pod; see its status conditions")]
    Failed(DeploymentKey),
    /// The deployment has no ready pod and its hold queue is full. 429 with `Retry-After`.
    #[error(
        "model deployment {key} has no ready predictor pod and {max} requests are already waiting for one; retry later"
    )]
    QueueFull {
        /// The deployment.
        key: DeploymentKey,
        /// The queue bound (`--gateway-max-held`).
        max: usize,
    },
    /// Held until the hold timeout without a ready pod. 503 with `Retry-After`.
    #[error("model deployment {key} had no ready predictor pod within {} s", secs(*waited))]
    HoldTimeout {
        /// The deployment.
        key: DeploymentKey,
        /// How long the request was held.
        waited: Duration,
    },
    /// The deployments were not listed from the cluster within the hold timeout (the
    /// gateway is starting, or cannot reach the API server). 503 with `Retry-After`.
    #[error("the gateway has not listed model deployments yet; retry shortly")]
    NotSynced,
    /// The request body exceeds `--gateway-max-body-bytes`. 413.
    #[error("the request body exceeds the gateway's limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The client's body could not be read (the connection broke, or invalid chunking). 400.
    #[error("reading the request body failed")]
    BodyRead(#[source] axum::Error),
    /// The request reached a pod that failed before answering (it died, or closed the
    /// connection). Not retried: the pod may have acted on it. 503.
    #[error(
        "the predictor pod of model deployment {key} failed while handling the request; it was not retried because it may have been processed"
    )]
    UpstreamFailed {
        /// The deployment.
        key: DeploymentKey,
        /// The client error (logged, not returned).
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The pod did not answer within `--gateway-upstream-timeout`. 504.
    #[error("the predictor pod of model deployment {key} did not answer within {} s", secs(*timeout))]
    UpstreamTimeout {
        /// The deployment.
        key: DeploymentKey,
        /// The limit.
        timeout: Duration,
    },
}

/// Seconds for messages: one decimal under 10 s, whole seconds above.
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 { format!("{s:.1}") } else { format!("{}", s.round()) }
}

impl GatewayError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NotFound(_) | GatewayError::NoRoute(_) => StatusCode::NOT_FOUND,
            GatewayError::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyRead(_) => StatusCode::BAD_REQUEST,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Stopped(_)
            | GatewayError::Expired(_)
            | GatewayError::Failed(_)
            | GatewayError::HoldTimeout { .. }
            | GatewayError::NotSynced
            | GatewayError::UpstreamFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Seconds a client should wait before retrying, where waiting can help.
    fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::QueueFull { .. } | GatewayError::NotSynced => Some(1),
            GatewayError::HoldTimeout { .. } => Some(5),
            _ => None,
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        // The full chain for operators; clients get the message alone.
        let mut detail = self.to_string();
        let mut source = std::error::Error::source(&self);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %detail, "gateway error");
        } else {
            tracing::debug!(status = status.as_u16(), error = %detail, "gateway refusal");
        }
        let retry_after = self.retry_after();
        let mut resp = (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response();
        if let Some(s) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
