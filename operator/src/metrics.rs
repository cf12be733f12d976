//! Prometheus metrics of the controllers: reconciles, their duration and errors, by controller
//! and error kind. No object names in labels: their number is unbounded.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

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
    /// Ocellus resources by kind and phase (a census of the watch caches).
    pub resources: IntGaugeVec,
    /// Training epochs completed, as TrainingJob statuses report them.
    pub epochs: IntCounter,
    /// Events not published because too many were already in flight.
    pub events_dropped: IntCounter,
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
        let resources = IntGaugeVec::new(
            Opts::new("ocellus_resources", "Ocellus resources, by kind and phase"),
            &["kind", "phase"],
        )?;
        let epochs = IntCounter::new("ocellus_training_epochs_total", "Training epochs completed by TrainingJobs")?;
        registry.register(Box::new(resources.clone()))?;
        registry.register(Box::new(epochs.clone()))?;
        let events_dropped = IntCounter::new(
            "ocellus_operator_events_dropped_total",
            "Events dropped because too many were already waiting for the API server",
        )?;
        registry.register(Box::new(events_dropped.clone()))?;
        Ok(Metrics { reconciles, duration, errors, scale_decisions, scale_changes, resources, epochs, events_dropped })
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

    /// Replaces the census of `kind`: how many objects are in each phase.
    pub fn census(&self, kind: &str, phases: impl Iterator<Item = String>) {
        let mut counts = std::collections::BTreeMap::<String, i64>::new();
        for p in phases {
            *counts.entry(p).or_default() += 1;
        }
        // Phases no object is in any more read 0 rather than their last count.
        for (labels, _) in self.resources_of(kind) {
            if !counts.contains_key(labels.as_str()) {
                self.resources.with_label_values(&[kind, &labels]).set(0);
            }
        }
        for (phase, n) in counts {
            self.resources.with_label_values(&[kind, &phase]).set(n);
        }
    }

    fn resources_of(&self, kind: &str) -> Vec<(String, i64)> {
        use prometheus::core::Collector;
        self.resources
            .collect()
            .iter()
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.name() == "kind" && l.value() == kind))
            .filter_map(|m| {
                let phase = m.get_label().iter().find(|l| l.name() == "phase")?.value().to_string();
                Some((phase, m.get_gauge().get_value() as i64))
            })
            .collect()
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

#[cfg(test)]
mod census_tests {
    use super::*;

    #[test]
    fn a_census_counts_by_phase_and_zeroes_phases_left_empty() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).expect("metrics");
        m.census("TrainingJob", ["Running", "Running", "Pending"].into_iter().map(String::from));
        let get = |phase: &str| m.resources.with_label_values(&["TrainingJob", phase]).get();
        assert_eq!((get("Running"), get("Pending")), (2, 1));
        m.census("TrainingJob", ["Succeeded", "Running"].into_iter().map(String::from));
        assert_eq!((get("Running"), get("Pending"), get("Succeeded")), (1, 0, 1));
        let text = ocellus_common::render_metrics(&registry).expect("render");
        assert!(text.contains(r#"ocellus_resources{kind="TrainingJob",phase="Succeeded"} 1"#), "{text}");
    }
}
