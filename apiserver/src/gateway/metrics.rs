//! The gateway's Prometheus metrics. Labels are bounded: no namespace or deployment names (the
//! held demand of each deployment reaches the operator through its annotation instead).

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// Counters, gauges and histograms of the gateway, registered once per process.
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    /// `ocellus_gateway_requests_total{code_class}`: answered requests by status class
    /// (`2xx`..`5xx`), whether from a pod or from the gateway itself.
    pub requests: IntCounterVec,
    /// `ocellus_gateway_held_requests`: requests waiting for a ready endpoint now.
    pub held: IntGauge,
    /// `ocellus_gateway_held_seconds`: how long each held request waited (forwarded, timed out
    /// or abandoned by its client).
    pub held_seconds: Histogram,
    /// `ocellus_gateway_upstream_errors_total{kind}`: `connect` (not sent; retried elsewhere),
    /// `in_flight` (the pod failed mid-request; 503), `timeout` (no response in time; 504).
    pub upstream_errors: IntCounterVec,
    /// `ocellus_gateway_wake_patches_total{result}`: annotation patches on ModelDeployments
    /// (`ok`, `error`).
    pub wake_patches: IntCounterVec,
}

impl GatewayMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = GatewayMetrics {
            requests: IntCounterVec::new(
                Opts::new("ocellus_gateway_requests_total", "Gateway requests answered, by HTTP status class"),
                &["code_class"],
            )?,
            held: IntGauge::new("ocellus_gateway_held_requests", "Requests held until a predictor pod is ready")?,
            held_seconds: Histogram::with_opts(
                HistogramOpts::new("ocellus_gateway_held_seconds", "Time requests were held for a ready predictor pod")
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]),
            )?,
            upstream_errors: IntCounterVec::new(
                Opts::new("ocellus_gateway_upstream_errors_total", "Failed sends to predictor pods, by kind"),
                &["kind"],
            )?,
            wake_patches: IntCounterVec::new(
                Opts::new(
                    "ocellus_gateway_wake_patches_total",
                    "Wake annotation patches on ModelDeployments, by result",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.held.clone()))?;
        registry.register(Box::new(m.held_seconds.clone()))?;
        registry.register(Box::new(m.upstream_errors.clone()))?;
        registry.register(Box::new(m.wake_patches.clone()))?;
        Ok(m)
    }

    /// Counts one answered request.
    pub fn count_response(&self, status: axum::http::StatusCode) {
        let class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests.with_label_values(&[class]).inc();
    }
}
