//! Leader election on a `coordination.k8s.io/v1` Lease, after client-go's `leaderelection`.
//!
//! Replicas campaign for one Lease. A replica takes the Lease when it does not exist, when it names
//! no holder, or when its holder has not changed the record for `leaseDurationSeconds` as measured
//! by **this replica's clock since it observed the last change** (never by comparing `renewTime`
//! with the local clock, so clock skew between replicas does not matter, only clock rates). Every
//! write carries the `resourceVersion` that was read, so when two replicas race, the API server lets
//! one win and answers the other 409.
//!
//! The leader renews every `retry_period`. It stops leading (and [`Elector::lost`] resolves) when a
//! read shows another holder, or when no renewal has succeeded for `renew_deadline`, counted from
//! the start of the last successful attempt. Since `renew_deadline < lease_duration` and the other
//! replicas start counting only once they have seen that renewal, the old leader stops before a
//! successor can take over.
//!
//! The operator's use:
//!
//! ```no_run
//! # async fn demo(client: kube::Client) {
//! use ocellus_operator::leader::{Elector, LeaseConfig};
//! let mut elector = Elector::spawn(client, LeaseConfig::new("ocellus-system", "ocellus-operator", "pod-abc12"));
//! elector.acquired().await;
//! // ... start the controllers; on SIGTERM stop them and call `elector.release().await` ...
//! elector.lost().await;
//! // Leadership is gone: stop acting at once (the operator exits, as controller-runtime does).
//! # }
//! ```

use std::hash::BuildHasher;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Campaigning replicas wait `retry_period` stretched by up to this fraction (as client-go's
/// `JitterFactor`), so that they do not hit the API server in step.
const JITTER: f64 = 0.2;

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace the Lease lives in.
    pub namespace: String,
    /// Name of the Lease, e.g. `ocellus-operator`.
    pub name: String,
    /// This replica, unique among the candidates, e.g. the pod name plus a random suffix.
    pub identity: String,
    /// How long the Lease stays valid without renewal (written as `leaseDurationSeconds`,
    /// rounded up to whole seconds). Default 15 s.
    pub lease_duration: Duration,
    /// The leader gives up leading when it has not renewed within this. Default 10 s.
    pub renew_deadline: Duration,
    /// Interval of renewals and of attempts to acquire. Default 2 s.
    pub retry_period: Duration,
}

/// Why a [`LeaseConfig`] cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseConfigError {
    /// A name is empty.
    #[error("the lease {0} must not be empty")]
    Empty(&'static str),
    /// `leaseDurationSeconds` is whole seconds.
    #[error("lease_duration ({0:?}) must be at least 1 s")]
    LeaseTooShort(Duration),
    /// The leader must stop before the others may take over.
    #[error("lease_duration ({lease_duration:?}) must be longer than renew_deadline ({renew_deadline:?})")]
    RenewDeadlineTooLong {
        /// The configured lease duration.
        lease_duration: Duration,
        /// The configured renew deadline.
        renew_deadline: Duration,
    },
    /// At least one (jittered) retry must fit in the renew deadline.
    #[error("renew_deadline ({renew_deadline:?}) must be longer than 1.2 × retry_period ({retry_period:?})")]
    RetryPeriodTooLong {
        /// The configured renew deadline.
        renew_deadline: Duration,
        /// The configured retry period.
        retry_period: Duration,
    },
    /// A zero retry period would hammer the API server.
    #[error("retry_period must be positive")]
    ZeroRetryPeriod,
}

impl LeaseConfig {
    /// Default `lease_duration`.
    pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
    /// Default `renew_deadline`.
    pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
    /// Default `retry_period`.
    pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

    /// Settings for the Lease `namespace/name`, campaigning as `identity`, with the default
    /// durations (15 s / 10 s / 2 s, as client-go).
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Self::DEFAULT_LEASE_DURATION,
            renew_deadline: Self::DEFAULT_RENEW_DEADLINE,
            retry_period: Self::DEFAULT_RETRY_PERIOD,
        }
    }

    /// Checks the settings as client-go does: `lease_duration > renew_deadline > 1.2 × retry_period > 0`,
    /// a lease of at least 1 s, and non-empty names.
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        for (what, value) in [("namespace", &self.namespace), ("name", &self.name), ("identity", &self.identity)] {
            if value.is_empty() {
                return Err(LeaseConfigError::Empty(what));
            }
        }
        if self.lease_duration < Duration::from_secs(1) {
            return Err(LeaseConfigError::LeaseTooShort(self.lease_duration));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(LeaseConfigError::RenewDeadlineTooLong {
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
            });
        }
        if self.retry_period.is_zero() {
            return Err(LeaseConfigError::ZeroRetryPeriod);
        }
        if self.renew_deadline <= self.retry_period.mul_f64(1.0 + JITTER) {
            return Err(LeaseConfigError::RetryPeriodTooLong {
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            });
        }
        Ok(())
    }
}

/// What the background task publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not (yet) leading.
    Campaigning,
    /// Leading; unless renewed, leadership ends at `valid_until`.
    Leading { valid_until: Instant },
    /// Leadership was held and is gone; the elector no longer campaigns.
    Lost,
}

/// Handle to a running elector.
///
/// Dropping it without [`Elector::release`] aborts the background task and leaves the Lease as it
/// is, as a crash would: a successor must wait out `lease_duration`.
#[derive(Debug)]
pub struct Elector {
    state: watch::Receiver<State>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Elector {
    /// Starts campaigning in a background task on the current Tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, or when `config` fails [`LeaseConfig::validate`] (check settings
    /// that come from users with it first).
    pub fn spawn(client: Client, config: LeaseConfig) -> Elector {
        if let Err(e) = config.validate() {
            panic!("invalid leader-election settings: {e}");
        }
        let (state_tx, state) = watch::channel(State::Campaigning);
        let (stop, stop_rx) = oneshot::channel();
        let campaign = Campaign {
            api: Api::namespaced(client, &config.namespace),
            lease: format!("{}/{}", config.namespace, config.name),
            config,
            observed: None,
            ours: None,
            logged_holder: None,
            failures: 0,
        };
        let task = tokio::spawn(campaign.run(state_tx, stop_rx));
        Elector { state, stop: Some(stop), task: Some(task) }
    }

    /// Resolves once this replica holds the lease.
    ///
    /// It also resolves if leadership has been acquired and already lost again; [`Elector::lost`]
    /// then resolves at once (and [`Elector::is_leader`] is false). It never resolves if the
    /// background task died before leading.
    pub async fn acquired(&mut self) {
        if self.state.wait_for(|s| *s != State::Campaigning).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves when leadership, once held, is lost: no renewal succeeded within `renew_deadline`,
    /// or another holder took the lease (or the background task died while leading). The caller
    /// must then stop acting. Never resolves if leadership was never held.
    pub async fn lost(&mut self) {
        loop {
            let current = *self.state.borrow_and_update();
            match current {
                State::Lost => return,
                State::Campaigning => {
                    if self.state.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                // A backstop: the task signals loss at `valid_until` too, unless it renewed.
                State::Leading { valid_until } if Instant::now() >= valid_until => return,
                State::Leading { valid_until } => {
                    tokio::select! {
                        biased;
                        changed = self.state.changed() => {
                            if changed.is_err() {
                                return;
                            }
                        }
                        () = tokio::time::sleep_until(valid_until) => {
                            if !matches!(*self.state.borrow(), State::Leading { valid_until: v } if v > valid_until) {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Whether this replica leads now (holds the lease and renewed it within `renew_deadline`).
    pub fn is_leader(&self) -> bool {
        is_leading(*self.state.borrow(), Instant::now())
    }

    /// Stops campaigning; if this replica holds the lease (even after [`Elector::lost`] for a
    /// missed renewal deadline), releases it so that a successor need not wait out
    /// `lease_duration`: the holder is cleared and the duration set to 1 s, as client-go's
    /// `ReleaseOnCancel` does. Gives up releasing after `renew_deadline`.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn is_leading(state: State, now: Instant) -> bool {
    matches!(state, State::Leading { valid_until } if now < valid_until)
}

/// The lease record as this replica last saw it change, and when (client-go's `observedRecord` and
/// `observedTime`).
#[derive(Clone, Debug, PartialEq)]
struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

/// Records a read of the lease: the observation time moves only when the record changed.
fn observe(previous: Option<Observed>, spec: LeaseSpec, now: Instant) -> Observed {
    match previous {
        Some(p) if p.spec == spec => p,
        _ => Observed { spec, at: now },
    }
}

/// The holder named by a record, if any.
fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// The validity the record declares; `fallback` (our own lease duration) if it declares none.
fn record_duration(spec: &LeaseSpec, fallback: Duration) -> Duration {
    match spec.lease_duration_seconds {
        Some(s) if s > 0 => Duration::from_secs(s.unsigned_abs().into()),
        _ => fallback,
    }
}

/// `leaseDurationSeconds` for a duration: whole seconds, rounded up, at least 1.
fn duration_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// What a candidate may do with the lease it observed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    /// It names us: write a renewal.
    Renew,
    /// It is free or expired: take it over.
    TakeOver,
    /// Another holder's lease is valid until `expires` (local clock).
    Wait { holder: String, expires: Instant },
}

/// Whether `identity` may write the observed lease at `now`.
fn decide(observed: &Observed, identity: &str, now: Instant, fallback: Duration) -> Decision {
    match holder(&observed.spec) {
        None => Decision::TakeOver,
        Some(h) if h == identity => Decision::Renew,
        Some(h) => {
            let expires = observed.at + record_duration(&observed.spec, fallback);
            if now < expires { Decision::Wait { holder: h.to_string(), expires } } else { Decision::TakeOver }
        }
    }
}

/// The record `identity` writes at `now`, over `current` (`None`: the lease is being created).
/// Renewals keep `acquireTime` and `leaseTransitions`; a takeover sets `acquireTime` and counts a
/// transition.
fn next_spec(current: Option<&LeaseSpec>, identity: &str, lease_duration_seconds: i32, now: Timestamp) -> LeaseSpec {
    let now = MicroTime(now);
    let (acquire_time, lease_transitions) = match current {
        None => (now.clone(), 0),
        Some(c) if holder(c) == Some(identity) => {
            (c.acquire_time.clone().unwrap_or_else(|| now.clone()), c.lease_transitions.unwrap_or(0))
        }
        Some(c) => (now.clone(), c.lease_transitions.unwrap_or(0).saturating_add(1)),
    };
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(lease_duration_seconds),
        acquire_time: Some(acquire_time),
        renew_time: Some(now),
        lease_transitions: Some(lease_transitions),
        ..LeaseSpec::default()
    }
}

/// The record that releases `current`: no holder, valid for 1 s, transitions kept (client-go's
/// `release`).
fn released_spec(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: current.lease_transitions,
        ..LeaseSpec::default()
    }
}

/// `period` stretched by `unit × JITTER` (`unit` in `[0, 1)`).
fn jittered(period: Duration, unit: f64) -> Duration {
    period.mul_f64(1.0 + JITTER * unit.clamp(0.0, 1.0))
}

/// A number in `[0, 1)`, random enough for jitter.
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

fn is_status(e: &kube::Error, pred: fn(&kube::core::Status) -> bool) -> bool {
    matches!(e, kube::Error::Api(s) if pred(s))
}

/// Outcome of one attempt to acquire or renew.
#[derive(Debug)]
enum Attempt {
    /// We hold the lease, freshly written.
    Holding,
    /// Not written this time (the lease is validly held by another, or a write lost a race).
    NotNow,
    /// While leading: the lease names someone else (`None`: nobody).
    Taken(Option<String>),
}

/// The background task's state.
struct Campaign {
    api: Api<Lease>,
    config: LeaseConfig,
    /// `namespace/name`, for logs.
    lease: String,
    observed: Option<Observed>,
    /// The lease as we last wrote it: its `resourceVersion` lets a renewal be a single request.
    ours: Option<Lease>,
    /// Holder last logged, so that each change is logged once.
    logged_holder: Option<String>,
    /// Consecutive failed attempts while campaigning (the first is logged as a warning).
    failures: u32,
}

impl Campaign {
    async fn run(mut self, state: watch::Sender<State>, mut stop: oneshot::Receiver<()>) {
        let config = self.config.clone();
        // Campaign until the lease is ours.
        let mut valid_until = loop {
            let started = Instant::now();
            let attempt = tokio::select! {
                biased;
                _ = &mut stop => return self.release().await,
                a = tokio::time::timeout(config.renew_deadline, self.try_acquire_or_renew(false)) => a,
            };
            match attempt {
                Ok(Ok(Attempt::Holding)) => break started + config.renew_deadline,
                Ok(Ok(_)) => self.failures = 0,
                Ok(Err(e)) => self.campaign_failed(&e.to_string()),
                Err(_) => self.campaign_failed("no answer within renew_deadline"),
            }
            let pause = jittered(config.retry_period, random_unit());
            tokio::select! {
                biased;
                _ = &mut stop => return self.release().await,
                () = tokio::time::sleep(pause) => {}
            }
        };
        let spec = self.ours.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
        tracing::info!(
            lease = %self.lease,
            identity = %config.identity,
            transitions = spec.lease_transitions.unwrap_or(0),
            "acquired the lease: leading"
        );
        state.send_replace(State::Leading { valid_until });

        // Renew until stopped or lost.
        let reason = loop {
            let next = (Instant::now() + config.retry_period).min(valid_until);
            tokio::select! {
                biased;
                _ = &mut stop => return self.release().await,
                () = tokio::time::sleep_until(next) => {}
            }
            let started = Instant::now();
            if started >= valid_until {
                break "no successful renewal within renew_deadline".to_string();
            }
            let attempt = tokio::select! {
                biased;
                _ = &mut stop => return self.release().await,
                a = tokio::time::timeout_at(valid_until, self.try_acquire_or_renew(true)) => a,
            };
            match attempt {
                Ok(Ok(Attempt::Holding)) => {
                    valid_until = started + config.renew_deadline;
                    state.send_replace(State::Leading { valid_until });
                }
                Ok(Ok(Attempt::Taken(Some(h)))) => break format!("the lease is now held by {h}"),
                Ok(Ok(Attempt::Taken(None))) => break "the lease was released by someone else".to_string(),
                Ok(Ok(Attempt::NotNow)) => {
                    tracing::warn!(lease = %self.lease, "renewing the lease lost a race; retrying");
                }
                Ok(Err(e)) => tracing::warn!(lease = %self.lease, error = %e, "renewing the lease failed; retrying"),
                Err(_) => break "no successful renewal within renew_deadline".to_string(),
            }
        };
        tracing::info!(lease = %self.lease, identity = %config.identity, %reason, "lost the lease: no longer leading");
        state.send_replace(State::Lost);
        // Until release() (which clears the lease if it still names us) or drop (abort).
        let _ = stop.await;
        self.release().await;
    }

    fn campaign_failed(&mut self, error: &str) {
        self.failures += 1;
        if self.failures == 1 {
            tracing::warn!(lease = %self.lease, %error, "trying to acquire the lease failed; retrying");
        } else {
            tracing::debug!(lease = %self.lease, %error, failures = self.failures, "trying to acquire the lease failed");
        }
    }

    /// One attempt: renew (when `leading`) or acquire the lease.
    async fn try_acquire_or_renew(&mut self, leading: bool) -> Result<Attempt, kube::Error> {
        let identity = self.config.identity.clone();
        let seconds = duration_seconds(self.config.lease_duration);
        let pp = PostParams::default();

        // Fast path: renew what we last wrote; a conflict or 404 falls back to reading the lease.
        if leading && let Some(mut lease) = self.ours.clone() {
            lease.spec = Some(next_spec(lease.spec.as_ref(), &identity, seconds, Timestamp::now()));
            match self.api.replace(&self.config.name, &pp, &lease).await {
                Ok(written) => return Ok(self.wrote(written)),
                Err(e) if is_status(&e, kube::core::Status::is_conflict) => {}
                Err(e) if is_status(&e, kube::core::Status::is_not_found) => {}
                Err(e) => return Err(e),
            }
        }

        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(next_spec(None, &identity, seconds, Timestamp::now())),
            };
            return match self.api.create(&pp, &lease).await {
                Ok(written) => Ok(self.wrote(written)),
                Err(e) if is_status(&e, kube::core::Status::is_already_exists) => Ok(Attempt::NotNow),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let now = Instant::now();
        let observed = observe(self.observed.take(), spec.clone(), now);
        let observed = self.observed.insert(observed);
        if leading {
            // Whoever else the lease names (even nobody), it is no longer ours.
            if holder(&spec) != Some(identity.as_str()) {
                return Ok(Attempt::Taken(holder(&spec).map(str::to_string)));
            }
        } else {
            let waiting = matches!(decide(observed, &identity, now, self.config.lease_duration), Decision::Wait { .. });
            self.log_holder(holder(&spec));
            if waiting {
                return Ok(Attempt::NotNow);
            }
        }
        let mut lease = current;
        lease.spec = Some(next_spec(Some(&spec), &identity, seconds, Timestamp::now()));
        match self.api.replace(&self.config.name, &pp, &lease).await {
            Ok(written) => Ok(self.wrote(written)),
            Err(e) if is_status(&e, kube::core::Status::is_conflict) => Ok(Attempt::NotNow),
            Err(e) => Err(e),
        }
    }

    fn wrote(&mut self, written: Lease) -> Attempt {
        let spec = written.spec.clone().unwrap_or_default();
        self.observed = Some(observe(self.observed.take(), spec, Instant::now()));
        self.logged_holder = Some(self.config.identity.clone());
        self.ours = Some(written);
        Attempt::Holding
    }

    /// Logs each change of the (other) holder once.
    fn log_holder(&mut self, current: Option<&str>) {
        if self.logged_holder.as_deref() != current {
            self.logged_holder = current.map(str::to_string);
            match current {
                Some(h) if h != self.config.identity => {
                    tracing::info!(lease = %self.lease, holder = %h, "the lease is held by another replica; waiting")
                }
                Some(_) => {}
                None => tracing::info!(lease = %self.lease, "the lease is free"),
            }
        }
    }

    /// Clears the lease if it names us, within `renew_deadline`.
    async fn release(&mut self) {
        match tokio::time::timeout(self.config.renew_deadline, self.try_release()).await {
            Ok(Ok(true)) => tracing::info!(lease = %self.lease, identity = %self.config.identity, "released the lease"),
            Ok(Ok(false)) => tracing::debug!(lease = %self.lease, "not holding the lease: nothing to release"),
            Ok(Err(e)) => tracing::warn!(lease = %self.lease, error = %e, "releasing the lease failed"),
            Err(_) => tracing::warn!(lease = %self.lease, "releasing the lease timed out"),
        }
    }

    async fn try_release(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else { return Ok(false) };
        let spec = lease.spec.clone().unwrap_or_default();
        if holder(&spec) != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        lease.spec = Some(released_spec(&spec, Timestamp::now()));
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Changed since the read: whoever wrote it holds it now.
            Err(e) if is_status(&e, kube::core::Status::is_conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn held_by(holder: &str, duration_seconds: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: duration_seconds,
            acquire_time: Some(MicroTime(ts(0))),
            renew_time: Some(MicroTime(ts(5))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    fn config() -> LeaseConfig {
        LeaseConfig::new("ns", "ocellus-operator", "me")
    }

    #[test]
    fn defaults_are_client_go_s_and_valid() {
        let c = config();
        assert_eq!((c.lease_duration, c.renew_deadline, c.retry_period), (15 * S, 10 * S, 2 * S));
        assert_eq!(c.validate(), Ok(()));
        let short = LeaseConfig {
            lease_duration: 3 * S,
            renew_deadline: 2 * S,
            retry_period: Duration::from_millis(500),
            ..config()
        };
        assert_eq!(short.validate(), Ok(()));
    }

    #[test]
    fn invalid_settings_are_refused() {
        let c = LeaseConfig { identity: String::new(), ..config() };
        assert_eq!(c.validate(), Err(LeaseConfigError::Empty("identity")));
        let c = LeaseConfig { lease_duration: Duration::from_millis(900), renew_deadline: S / 2, ..config() };
        assert!(matches!(c.validate(), Err(LeaseConfigError::LeaseTooShort(_))));
        let c = LeaseConfig { renew_deadline: 15 * S, ..config() };
        assert!(matches!(c.validate(), Err(LeaseConfigError::RenewDeadlineTooLong { .. })));
        let c = LeaseConfig { retry_period: Duration::ZERO, ..config() };
        assert_eq!(c.validate(), Err(LeaseConfigError::ZeroRetryPeriod));
        // 1.2 × 9 s > 10 s: a jittered retry would not fit in the deadline.
        let c = LeaseConfig { retry_period: 9 * S, ..config() };
        assert!(matches!(c.validate(), Err(LeaseConfigError::RetryPeriodTooLong { .. })));
    }

    #[test]
    fn lease_duration_is_written_in_whole_seconds_rounded_up() {
        assert_eq!(duration_seconds(15 * S), 15);
        assert_eq!(duration_seconds(Duration::from_millis(2500)), 3);
        assert_eq!(duration_seconds(Duration::from_millis(200)), 1);
        assert_eq!(duration_seconds(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    #[test]
    fn observation_time_moves_only_when_the_record_changes() {
        let t0 = Instant::now();
        let first = observe(None, held_by("other", Some(15)), t0);
        assert_eq!(first.at, t0);
        let same = observe(Some(first.clone()), held_by("other", Some(15)), t0 + 5 * S);
        assert_eq!(same.at, t0, "an unchanged record keeps its observation time");
        let mut renewed = held_by("other", Some(15));
        renewed.renew_time = Some(MicroTime(ts(7)));
        let changed = observe(Some(same), renewed.clone(), t0 + 6 * S);
        assert_eq!((changed.at, changed.spec), (t0 + 6 * S, renewed));
    }

    #[test]
    fn a_valid_lease_of_another_holder_is_waited_for_by_the_local_clock() {
        let t0 = Instant::now();
        let observed = observe(None, held_by("other", Some(15)), t0);
        // renewTime (years ago by the fixture's clock) does not matter: only the local observation.
        assert_eq!(
            decide(&observed, "me", t0 + 14 * S, 3 * S),
            Decision::Wait { holder: "other".into(), expires: t0 + 15 * S }
        );
        assert_eq!(decide(&observed, "me", t0 + 15 * S, 3 * S), Decision::TakeOver);
        assert_eq!(decide(&observed, "me", t0 + 60 * S, 3 * S), Decision::TakeOver);
    }

    #[test]
    fn the_record_s_duration_counts_and_ours_only_when_it_has_none() {
        let t0 = Instant::now();
        let short = observe(None, held_by("other", Some(2)), t0);
        assert_eq!(decide(&short, "me", t0 + 2 * S, 15 * S), Decision::TakeOver);
        let none = observe(None, held_by("other", None), t0);
        assert!(matches!(decide(&none, "me", t0 + 2 * S, 15 * S), Decision::Wait { .. }));
        assert_eq!(decide(&none, "me", t0 + 15 * S, 15 * S), Decision::TakeOver);
        let zero = observe(None, held_by("other", Some(0)), t0);
        assert_eq!(record_duration(&zero.spec, 7 * S), 7 * S);
    }

    #[test]
    fn a_free_lease_is_taken_and_our_own_renewed_at_once() {
        let t0 = Instant::now();
        let free = observe(None, LeaseSpec { holder_identity: Some(String::new()), ..held_by("x", Some(15)) }, t0);
        assert_eq!(decide(&free, "me", t0, 15 * S), Decision::TakeOver);
        let released = observe(None, released_spec(&held_by("other", Some(15)), ts(9)), t0);
        assert_eq!(decide(&released, "me", t0, 15 * S), Decision::TakeOver);
        let ours = observe(None, held_by("me", Some(15)), t0);
        assert_eq!(decide(&ours, "me", t0, 15 * S), Decision::Renew);
    }

    #[test]
    fn creating_the_lease_starts_at_zero_transitions() {
        let spec = next_spec(None, "me", 15, ts(10));
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(10))));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(10))));
    }

    #[test]
    fn a_takeover_counts_a_transition_and_a_renewal_keeps_acquire_time() {
        let taken = next_spec(Some(&held_by("other", Some(15))), "me", 3, ts(20));
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(ts(20))));
        assert_eq!(taken.renew_time, Some(MicroTime(ts(20))));
        assert_eq!(taken.lease_duration_seconds, Some(3));

        let renewed = next_spec(Some(&taken), "me", 3, ts(22));
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(ts(20))));
        assert_eq!(renewed.renew_time, Some(MicroTime(ts(22))));

        let from_nothing = next_spec(Some(&LeaseSpec::default()), "me", 3, ts(30));
        assert_eq!(from_nothing.lease_transitions, Some(1));
    }

    #[test]
    fn releasing_clears_the_holder_and_keeps_the_transitions() {
        let released = released_spec(&held_by("me", Some(15)), ts(40));
        assert_eq!(holder(&released), None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.lease_transitions, Some(3));
        assert_eq!(released.renew_time, Some(MicroTime(ts(40))));
        // The next candidate counts a transition.
        assert_eq!(next_spec(Some(&released), "next", 15, ts(41)).lease_transitions, Some(4));
    }

    #[test]
    fn the_record_serializes_as_the_api_expects() {
        let json = serde_json::to_value(next_spec(None, "me", 15, ts(0))).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "holderIdentity": "me",
                "leaseDurationSeconds": 15,
                "acquireTime": "2023-11-14T22:13:20.000000Z",
                "renewTime": "2023-11-14T22:13:20.000000Z",
                "leaseTransitions": 0,
            })
        );
        let released = serde_json::to_value(released_spec(&held_by("me", Some(15)), ts(0))).unwrap_or_default();
        assert!(released.get("holderIdentity").is_none(), "{released}");
    }

    #[test]
    fn retries_are_jittered_by_at_most_a_fifth() {
        assert_eq!(jittered(2 * S, 0.0), 2 * S);
        assert_eq!(jittered(2 * S, 0.5), Duration::from_millis(2200));
        assert_eq!(jittered(2 * S, 7.0), Duration::from_millis(2400));
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }

    fn handle(state: State) -> (watch::Sender<State>, Elector) {
        let (tx, rx) = watch::channel(state);
        (tx, Elector { state: rx, stop: None, task: None })
    }

    #[test]
    fn leadership_ends_at_the_renewal_deadline_even_unannounced() {
        let now = Instant::now();
        assert!(is_leading(State::Leading { valid_until: now + S }, now));
        assert!(!is_leading(State::Leading { valid_until: now }, now));
        assert!(!is_leading(State::Campaigning, now));
        assert!(!is_leading(State::Lost, now));
    }

    #[tokio::test]
    async fn acquired_and_lost_follow_the_published_state() {
        use futures::FutureExt;
        let (tx, mut elector) = handle(State::Campaigning);
        assert!(elector.acquired().now_or_never().is_none());
        assert!(elector.lost().now_or_never().is_none(), "never leading is not losing");
        assert!(!elector.is_leader());

        tx.send_replace(State::Leading { valid_until: Instant::now() + 60 * S });
        assert!(elector.acquired().now_or_never().is_some());
        assert!(elector.is_leader());
        assert!(elector.lost().now_or_never().is_none());

        tx.send_replace(State::Lost);
        assert!(elector.lost().now_or_never().is_some());
        assert!(elector.acquired().now_or_never().is_some(), "acquired, then lost");
        assert!(!elector.is_leader());
    }

    #[tokio::test]
    async fn lost_resolves_when_the_deadline_passed_or_the_task_died_while_leading() {
        use futures::FutureExt;
        let (_tx, mut elector) = handle(State::Leading { valid_until: Instant::now() });
        assert!(elector.lost().now_or_never().is_some(), "deadline passed without renewal");

        let (tx, mut elector) = handle(State::Leading { valid_until: Instant::now() + 60 * S });
        drop(tx);
        assert!(elector.lost().now_or_never().is_some(), "the task is gone");

        let (tx, mut elector) = handle(State::Campaigning);
        drop(tx);
        assert!(elector.lost().now_or_never().is_none(), "never led");
    }
}
