//! Prometheus metrics of the controllers: reconciles, their duration and errors, by controller
//! and error kind. No object names in labels: their number is unbounded.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The controllers' metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Reconciles started, by controller.
    pub reconciles: IntCounterVec,
    /// Reconcile duration in seconds, by controller.
    pub duration: HistogramVec,
    /// Failed reconciles, by controller and error kind.
    pub errors: IntCounterVec,
    /// Autoscaler decisions, by the rule that decided.
    pub scale_decisions: IntCounterVec,
    /// Replica changes the autoscaler made, by direction.
    pub scale_changes: IntCounterVec,
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        let reconciles = IntCounterVec::new(
            Opts::new("ocellus_operator_reconciles_total", "Reconciles started, by controller"),
            &["controller"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("ocellus_operator_reconcile_duration_seconds", "Reconcile duration, by controller")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["controller"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new("ocellus_operator_reconcile_errors_total", "Failed reconciles, by controller and error kind"),
            &["controller", "error"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        let scale_decisions = IntCounterVec::new(
            Opts::new("ocellus_autoscaler_decisions_total", "Autoscaler decisions, by the rule that decided"),
            &["reason"],
        )?;
        let scale_changes = IntCounterVec::new(
            Opts::new(
                "ocellus_autoscaler_scale_changes_total",
                "Replica changes of predictor Deployments, by direction",
            ),
            &["direction"],
        )?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(scale_decisions.clone()))?;
        registry.register(Box::new(scale_changes.clone()))?;
        Ok(Metrics { reconciles, duration, errors, scale_decisions, scale_changes })
    }

    /// Counts a reconcile of `controller` and returns a timer that records its duration on drop.
    pub fn start(&self, controller: &str) -> prometheus::HistogramTimer {
        self.reconciles.with_label_values(&[controller]).inc();
        self.duration.with_label_values(&[controller]).start_timer()
    }

    /// Counts an autoscaler decision.
    pub fn scale_decision(&self, reason: &str) {
        self.scale_decisions.with_label_values(&[reason]).inc();
    }

    /// Counts a replica change (`up` or `down`).
    pub fn scaled(&self, direction: &str) {
        self.scale_changes.with_label_values(&[direction]).inc();
    }

    /// Counts a failed reconcile.
    pub fn error(&self, controller: &str, kind: &str) {
        self.errors.with_label_values(&[controller, kind]).inc();
    }
}
