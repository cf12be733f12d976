//! Request metrics of the REST APIs, by route template and status class.
//!
//! Labels are bounded: the route is axum's [`MatchedPath`] template (`/api/api-keys/{keyId}`,
//! never the concrete path), the method one of the standard ones or `other`, the status its
//! class (`2xx`..`5xx`). Registered in the process's registry, so they appear on `/metrics`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The REST APIs' request counter and latency histogram.
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    /// `ocellus_api_requests_total{route,method,code_class}`.
    pub requests: IntCounterVec,
    /// `ocellus_api_request_duration_seconds{route,method}`.
    pub duration: HistogramVec,
}

impl ApiMetrics {
    /// Creates the metrics and registers them in `registry` (once per registry).
    pub fn register(registry: &Registry) -> Result<ApiMetrics, prometheus::Error> {
        let m = ApiMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "ocellus_api_requests_total",
                    "REST API requests answered, by route template and status class",
                ),
                &["route", "method", "code_class"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "ocellus_api_request_duration_seconds",
                    "REST API request latency by route template",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["route", "method"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        Ok(m)
    }

    /// Counts one answered request.
    pub fn observe(&self, route: &str, method: &Method, status: StatusCode, seconds: f64) {
        let method = method_label(method);
        self.requests.with_label_values(&[route, method, code_class(status)]).inc();
        self.duration.with_label_values(&[route, method]).observe(seconds);
    }
}

/// `2xx`, `4xx`, ...
pub fn code_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The method, or `other` for extension methods (unbounded otherwise).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: observes every request of the router it wraps. Install with
/// `Router::layer(axum::middleware::from_fn_with_state(metrics, track))` (not `route_layer`,
/// so that refusals of inner layers are counted too).
pub async fn track(State(metrics): State<ApiMetrics>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().clone();
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics.observe(&route, &method, resp.status(), start.elapsed().as_secs_f64());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(code_class(StatusCode::CREATED), "2xx");
        assert_eq!(code_class(StatusCode::TOO_MANY_REQUESTS), "4xx");
        assert_eq!(code_class(StatusCode::BAD_GATEWAY), "5xx");
        assert_eq!(method_label(&Method::from_bytes(b"PURGE").expect("method")), "other");
        let registry = Registry::new();
        let m = ApiMetrics::register(&registry).expect("register");
        m.observe("/api/api-keys/{keyId}", &Method::DELETE, StatusCode::OK, 0.01);
        let text = ocellus_common::render_metrics(&registry).expect("render");
        assert!(
            text.contains(
                r#"ocellus_api_requests_total{code_class="2xx",method="DELETE",route="/api/api-keys/{keyId}"} 1"#
            ),
            "{text}"
        );
        assert!(ApiMetrics::register(&registry).is_err(), "registering twice is refused");
    }
}
