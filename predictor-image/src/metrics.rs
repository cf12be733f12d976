//! Prometheus metrics. Labels carry the protocol and status code only, never object names.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The predictor's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Registry holding them.
    pub registry: Registry,
    /// Requests by protocol and status code.
    pub requests: IntCounterVec,
    /// Request latency by protocol.
    pub request_seconds: HistogramVec,
    /// Requests being served now (the autoscaler's concurrency signal).
    pub inflight: IntGauge,
    /// Images waiting in the model queue.
    pub queue_depth: IntGauge,
    /// Time images waited in the queue.
    pub queue_seconds: Histogram,
    /// Images per model run.
    pub batch_size: Histogram,
    /// Model run time per batch.
    pub inference_seconds: Histogram,
    /// Images refused because the queue was full.
    pub rejected: IntCounter,
    /// Images inferred.
    pub images: IntCounter,
    /// Model runs by lane kind (`latency`: one copy over all cores; `throughput`: the others).
    pub runs: IntCounterVec,
}

fn latency_buckets() -> Vec<f64> {
    vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
}

impl Metrics {
    /// Registers the metrics in a new registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("ocellus_predictor".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by protocol and HTTP status"),
            &["protocol", "code"],
        )?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Request latency").buckets(latency_buckets()),
            &["protocol"],
        )?;
        let inflight = IntGauge::new("inflight_requests", "Prediction requests being served")?;
        let queue_depth = IntGauge::new("queue_depth", "Images waiting for the model")?;
        let queue_seconds = Histogram::with_opts(
            HistogramOpts::new("queue_wait_seconds", "Time images wait for the model").buckets(latency_buckets()),
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("batch_size", "Images per model run")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )?;
        let inference_seconds = Histogram::with_opts(
            HistogramOpts::new("inference_duration_seconds", "Model run time per batch").buckets(latency_buckets()),
        )?;
        let rejected = IntCounter::new("rejected_total", "Images refused with 429 because the queue was full")?;
        let images = IntCounter::new("images_total", "Images inferred")?;
        let runs = IntCounterVec::new(Opts::new("model_runs_total", "Model runs by lane kind"), &["lane"])?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(queue_seconds.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(inference_seconds.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(images.clone()))?;
        registry.register(Box::new(runs.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            request_seconds,
            inflight,
            queue_depth,
            queue_seconds,
            batch_size,
            inference_seconds,
            rejected,
            images,
            runs,
        })
    }
}
