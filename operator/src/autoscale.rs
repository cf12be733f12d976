//! The decision core of Ocellus' concurrency autoscaler for `ModelDeployment` predictors, in the
//! style of Knative's KPA: replicas = ceil(in-flight requests / target concurrency), averaged over
//! a 60 s *stable* window, with a 6 s *panic* window that reacts to bursts at once.
//!
//! Pure: no Kubernetes, no I/O, no clock reads. The controller calls [`decide`] every ~2 s per
//! deployment with an [`Observation`] (its own `now`) and the deployment's [`State`], and applies
//! [`Decision::desired`] to the Deployment's replicas.
//!
//! One decision, in order:
//! 1. Record the sample and average it over both windows (time-weighted: a sample stands for the
//!    time since the previous one, so extra calls between ticks do not skew the averages).
//! 2. Panic when the panic-window demand is at least `panic_threshold` times the ready capacity.
//!    Panic holds for a stable window after the last trigger (as Knative: the stable average lags a
//!    burst by that long) and never lowers the count while it holds.
//! 3. Otherwise the stable-window demand. Then the scale-down delay (the highest value wanted over
//!    the last `scale_down_delay` holds replicas), `min_replicas` and the idle grace (with
//!    `min_replicas == 0`, one replica while requests arrived within the idle window), the
//!    scale-down rate (at most `1/max_scale_down_rate` of the replicas go per decision), the
//!    warm-up (a fresh [`State`] never scales below what is asked before it has a stable window of
//!    data), and last `max_replicas`.
//! 4. Scale to zero, over all the above, when `min_replicas == 0` and nothing arrived for
//!    `scale_to_zero_idle`, counted from no earlier than the State's first decision: an operator
//!    restart waits a full idle window again before it removes the last replica.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Default stable window (Knative's): long enough to average out request noise.
pub const DEFAULT_STABLE_WINDOW: Duration = Duration::from_secs(60);
/// Default panic window (Knative's, 10% of the stable window): short enough to meet a burst quickly.
pub const DEFAULT_PANIC_WINDOW: Duration = Duration::from_secs(6);
/// Default panic threshold (Knative's 200%): panic when demand is at least twice the ready capacity.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 2.0;
/// Default scale-down delay: 30 s, not Knative's 0 s, so that load which dips and returns within
/// half a minute does not cost a pod restart (predictor pods load a model: starting one is slow).
pub const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(30);
/// Default scale-down rate (Knative's): at most halve the replicas per decision.
pub const DEFAULT_MAX_SCALE_DOWN_RATE: f64 = 2.0;

/// Most samples and delay records kept per deployment, whatever the call rate: bounds memory.
const MAX_RECORDS: usize = 1024;
/// Time a State's first sample stands for (it has no predecessor): the controller's period.
const FIRST_SAMPLE_WEIGHT: Duration = Duration::from_secs(2);
/// Least time a sample stands for, so that two calls at the same instant both count a little.
const MIN_SAMPLE_WEIGHT: Duration = Duration::from_millis(1);
/// Slack under which float noise does not round a pod count up (20.000000001 / 4 stays 5 pods).
const ROUNDING_SLACK: f64 = 1e-9;

/// The autoscaling knobs of one deployment, from its `spec.scaling` plus operator-wide defaults.
/// Out-of-range values are tolerated: [`decide`] reads them through the rules documented on each field.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Fewest replicas; 0 enables scale to zero. Negative reads as 0.
    pub min_replicas: i32,
    /// Most replicas. Below 1 reads as 1, below `min_replicas` as `min_replicas`.
    pub max_replicas: i32,
    /// In-flight requests per replica aimed for. Not a positive finite number: reads as 1.
    pub target_concurrency: f64,
    /// Window of the stable average; also how long panic holds after its last trigger and how long
    /// a fresh [`State`] refuses to scale down (its warm-up).
    pub stable_window: Duration,
    /// Window of the panic average. Longer than `stable_window`: reads as `stable_window`.
    pub panic_window: Duration,
    /// Panic when panic-window demand (in replicas) is at least this many times the ready replicas.
    /// Not above 1 (which would panic on every scale-up), or NaN: reads as the default, 2.
    pub panic_threshold: f64,
    /// Replicas are held at the highest value wanted over this long before going down; 0 disables.
    pub scale_down_delay: Duration,
    /// At most `current / max_scale_down_rate` (rounded up) replicas remain after one scale-down.
    /// Not above 1 (which would never scale down), or NaN: reads as the default, 2.
    pub max_scale_down_rate: f64,
    /// With `min_replicas == 0`: time without requests before scaling to zero (`spec.scaling.scaleToZeroIdleSeconds`).
    pub scale_to_zero_idle: Duration,
}

impl Policy {
    /// A policy from the `spec.scaling` values, with the default windows, threshold, delay and rate.
    pub fn new(min_replicas: i32, max_replicas: i32, target_concurrency: f64, scale_to_zero_idle_secs: u64) -> Policy {
        Policy {
            min_replicas,
            max_replicas,
            target_concurrency,
            stable_window: DEFAULT_STABLE_WINDOW,
            panic_window: DEFAULT_PANIC_WINDOW,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            scale_down_delay: DEFAULT_SCALE_DOWN_DELAY,
            max_scale_down_rate: DEFAULT_MAX_SCALE_DOWN_RATE,
            scale_to_zero_idle: Duration::from_secs(scale_to_zero_idle_secs),
        }
    }
}

/// A [`Policy`] with its out-of-range values replaced, as its field docs say.
struct Knobs {
    min: i32,
    max: i32,
    target: f64,
    stable_window: Duration,
    panic_window: Duration,
    panic_threshold: f64,
    scale_down_delay: Duration,
    max_scale_down_rate: f64,
    idle: Duration,
}

impl Knobs {
    fn of(policy: &Policy) -> Knobs {
        let min = policy.min_replicas.max(0);
        let target = policy.target_concurrency;
        Knobs {
            min,
            max: policy.max_replicas.max(1).max(min),
            target: if target.is_finite() && target > 0.0 { target } else { 1.0 },
            stable_window: policy.stable_window,
            panic_window: policy.panic_window.min(policy.stable_window),
            panic_threshold: if policy.panic_threshold > 1.0 {
                policy.panic_threshold
            } else {
                DEFAULT_PANIC_THRESHOLD
            },
            scale_down_delay: policy.scale_down_delay,
            max_scale_down_rate: if policy.max_scale_down_rate > 1.0 {
                policy.max_scale_down_rate
            } else {
                DEFAULT_MAX_SCALE_DOWN_RATE
            },
            idle: policy.scale_to_zero_idle,
        }
    }
}

/// One concurrency sample: its value stands for the `weight` of time that ends at `at`.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    concurrency: f64,
    weight: Duration,
}

/// One deployment's memory between decisions, kept in the operator's memory only.
///
/// Losing it (operator restart, leader change) is safe: a fresh State does not scale below the
/// replicas asked until it has a stable window of samples, and does not scale to zero until it
/// has seen a full idle window without requests.
#[derive(Default, Clone, Debug)]
pub struct State {
    /// Samples of the last stable window, oldest first.
    samples: VecDeque<Sample>,
    /// The time of this State's first decision: the start of its warm-up and of its idle count.
    first_seen: Option<Instant>,
    /// The latest time a request was known to be in flight or to arrive (a wake).
    last_activity: Option<Instant>,
    /// The latest panic trigger; panic holds for a stable window after it.
    last_panic: Option<Instant>,
    /// The highest count wanted in the current panic: panic never lowers the count.
    panic_max: i32,
    /// The counts wanted over the last scale-down delay (before the delay, rate and clamps), oldest first.
    recent_desired: VecDeque<(Instant, i32)>,
}

impl State {
    /// The latest time a request was known to be in flight or to arrive, if any was seen.
    pub fn last_activity(&self) -> Option<Instant> {
        self.last_activity
    }

    /// The latest panic trigger of the current panic, if one is in progress (or just ended and
    /// not yet noticed by a decision).
    pub fn last_panic(&self) -> Option<Instant> {
        self.last_panic
    }

    /// Samples held: at most one stable window's worth, and never more than an internal bound.
    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }
}

/// What the controller sees of one deployment at one decision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    /// The time of this observation (the caller's clock; the module reads none).
    pub now: Instant,
    /// Sum of in-flight requests over ready pods (scraped from each pod's /metrics) plus requests
    /// the gateway holds for this deployment. NaN, infinite or negative reads as 0.
    pub concurrency: f64,
    /// Ready pods now: the capacity that is actually serving. Negative reads as 0.
    pub ready_replicas: i32,
    /// Replicas currently asked of the Deployment. Negative reads as 0.
    pub current_replicas: i32,
    /// The latest time a request was known to arrive from outside the pods' metrics (the gateway's
    /// wake annotation), if any. Counts as activity when newer than the last activity seen; a time
    /// after `now` reads as `now`.
    pub woken_at: Option<Instant>,
}

/// Why a [`Decision`] has its value: the last rule that set it. For Events, logs and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The stable-window demand.
    Stable,
    /// Panic mode: the panic-window demand, never lower than earlier in the same panic.
    Panic,
    /// Held up by the scale-down delay: more was wanted within it.
    ScaleDownDelay,
    /// Held up by the scale-down rate: a scale-down removes at most a fraction per decision.
    ScaleDownRate,
    /// Held at the replicas asked: a fresh State has less than a stable window of data.
    Warmup,
    /// Held at one replica with `min_replicas == 0`: requests arrived within the idle window.
    IdleGrace,
    /// Woken from zero replicas by requests in flight or the gateway's wake.
    Wake,
    /// Raised to `min_replicas`.
    MinReplicas,
    /// Lowered to `max_replicas`.
    MaxReplicas,
    /// Zero replicas: `min_replicas == 0` and no request for the idle window.
    ScaleToZero,
}

impl Reason {
    /// A stable snake_case name, for metric labels and Event reasons.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Stable => "stable",
            Reason::Panic => "panic",
            Reason::ScaleDownDelay => "scale_down_delay",
            Reason::ScaleDownRate => "scale_down_rate",
            Reason::Warmup => "warmup",
            Reason::IdleGrace => "idle_grace",
            Reason::Wake => "wake",
            Reason::MinReplicas => "min_replicas",
            Reason::MaxReplicas => "max_replicas",
            Reason::ScaleToZero => "scale_to_zero",
        }
    }
}

/// The outcome of one [`decide`]: the replicas to ask for, why, and the averages behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// Replicas to ask of the Deployment, within the policy's `min..=max` (0 only with `min == 0`).
    pub desired: i32,
    /// The rule that set `desired`.
    pub reason: Reason,
    /// Average concurrency over the stable window.
    pub stable_concurrency: f64,
    /// Panic-window demand: the larger of the panic-window average and the latest sample, so that
    /// a burst is met by the decision that first sees it (the gateway queues it: it is real demand).
    pub panic_concurrency: f64,
    /// Whether panic mode holds after this decision.
    pub panicking: bool,
}

/// Decides the replicas of one deployment from `obs`, updating `state`. See the module docs for the
/// rules; it never panics, whatever the inputs (time going backwards included).
pub fn decide(policy: &Policy, state: &mut State, obs: &Observation) -> Decision {
    let knobs = Knobs::of(policy);
    let now = obs.now;
    let concurrency = if obs.concurrency.is_finite() && obs.concurrency > 0.0 { obs.concurrency } else { 0.0 };
    let ready = obs.ready_replicas.max(0);
    let current = obs.current_replicas.max(0);
    let age = |at: Instant| now.saturating_duration_since(at);

    let first_seen = *state.first_seen.get_or_insert(now);

    // Activity: requests in flight now, or a wake newer than what was seen.
    if let Some(woken) = obs.woken_at.map(|woken| woken.min(now))
        && state.last_activity.is_none_or(|last| woken > last)
    {
        state.last_activity = Some(woken);
    }
    if concurrency > 0.0 {
        state.last_activity = Some(now);
    }
    let recent_activity = concurrency > 0.0
        || state.last_activity.is_some_and(|last| {
            let since = age(last);
            since < knobs.idle || since.is_zero()
        });

    // Samples.
    let weight = state.samples.back().map_or(FIRST_SAMPLE_WEIGHT, |last| age(last.at)).max(MIN_SAMPLE_WEIGHT);
    state.samples.push_back(Sample { at: now, concurrency, weight });
    let horizon = knobs.stable_window.max(knobs.panic_window);
    state.samples.retain(|sample| age(sample.at) < horizon || age(sample.at).is_zero());
    while state.samples.len() > MAX_RECORDS {
        state.samples.pop_front();
    }
    let stable_concurrency = window_average(&state.samples, now, knobs.stable_window, concurrency);
    let panic_concurrency = window_average(&state.samples, now, knobs.panic_window, concurrency).max(concurrency);
    let desired_stable = pods(stable_concurrency / knobs.target);
    let desired_panic = pods(panic_concurrency / knobs.target);

    // Panic.
    let was_panicking = state.last_panic.is_some_and(|at| age(at) < knobs.stable_window);
    let triggered = panic_concurrency / knobs.target / f64::from(ready.max(1)) >= knobs.panic_threshold;
    if triggered {
        if !was_panicking {
            state.panic_max = current.max(ready);
        }
        state.last_panic = Some(now);
    }
    let panicking = triggered || was_panicking;
    let (mut desired, mut reason) = if panicking {
        state.panic_max = state.panic_max.max(desired_panic).max(desired_stable);
        (state.panic_max, Reason::Panic)
    } else {
        state.last_panic = None;
        state.panic_max = 0;
        (desired_stable, Reason::Stable)
    };

    // Scale-down delay: hold the highest value wanted within it, but never add replicas for it.
    state.recent_desired.push_back((now, desired));
    state.recent_desired.retain(|&(at, _)| age(at) < knobs.scale_down_delay || age(at).is_zero());
    while state.recent_desired.len() > MAX_RECORDS {
        state.recent_desired.pop_front();
    }
    let held = state.recent_desired.iter().map(|&(_, wanted)| wanted).max().unwrap_or(desired).min(current);
    if held > desired {
        desired = held;
        reason = Reason::ScaleDownDelay;
    }

    // Floors: `min_replicas`, and with `min_replicas == 0` one replica while requests are recent.
    if desired < knobs.min {
        desired = knobs.min;
        reason = Reason::MinReplicas;
    } else if knobs.min == 0 && recent_activity && desired < 1 {
        desired = 1;
        reason = Reason::IdleGrace;
    }

    // Scale-down rate.
    if desired < current {
        let floor = pods(f64::from(current) / knobs.max_scale_down_rate);
        if desired < floor {
            desired = floor;
            reason = Reason::ScaleDownRate;
        }
    }

    // Warm-up: no scale-down before a stable window of data.
    if age(first_seen) < knobs.stable_window && desired < current {
        desired = current;
        reason = Reason::Warmup;
    }

    if current == 0 && recent_activity && desired > 0 {
        reason = Reason::Wake;
    }

    // Ceiling: `max_replicas` wins over the delay, the rate and the warm-up.
    if desired > knobs.max {
        desired = knobs.max;
        reason = Reason::MaxReplicas;
    }

    // Scale to zero: idle since the later of the last activity and this State's first decision.
    let idle_since = state.last_activity.map_or(first_seen, |last| last.max(first_seen));
    if knobs.min == 0 && !recent_activity && age(idle_since) >= knobs.idle {
        desired = 0;
        reason = Reason::ScaleToZero;
    }

    Decision { desired, reason, stable_concurrency, panic_concurrency, panicking }
}

/// Time-weighted average of the samples over the `window` ending at `now`: each sample counts for
/// the part of its interval `(at - weight, at]` inside the window. `fallback` when none overlaps.
fn window_average(samples: &VecDeque<Sample>, now: Instant, window: Duration, fallback: f64) -> f64 {
    let (mut sum, mut total) = (0.0, 0.0);
    for sample in samples {
        let age = now.saturating_duration_since(sample.at);
        let overlap = age.saturating_add(sample.weight).min(window).saturating_sub(age).as_secs_f64();
        sum += sample.concurrency * overlap;
        total += overlap;
    }
    if total > 0.0 { sum / total } else { fallback }
}

/// Replicas for a demand in replicas: rounded up, 0 for nothing, saturating at `i32::MAX`.
fn pods(replicas: f64) -> i32 {
    if replicas.is_nan() || replicas <= ROUNDING_SLACK {
        0
    } else {
        // A float-to-int `as` saturates; the demand is finite or +inf here.
        (replicas - ROUNDING_SLACK).ceil().min(f64::from(i32::MAX)) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The controller's period.
    const TICK: Duration = Duration::from_secs(2);

    /// A deployment driven by `decide` over synthetic time: the controller applies each decision
    /// at once, and pods asked become ready one tick later.
    struct Sim {
        policy: Policy,
        state: State,
        start: Instant,
        /// Time of the next decision, since `start`.
        at: Duration,
        current: i32,
        ready: i32,
    }

    impl Sim {
        fn new(policy: Policy, replicas: i32) -> Sim {
            Sim {
                policy,
                state: State::default(),
                start: Instant::now(),
                at: Duration::ZERO,
                current: replicas,
                ready: replicas,
            }
        }

        fn now(&self) -> Instant {
            self.start + self.at
        }

        /// One decision at the current time with `concurrency` and an optional wake `woken_ago` before now.
        fn step_woken(&mut self, concurrency: f64, woken_ago: Option<Duration>) -> Decision {
            let now = self.now();
            let obs = Observation {
                now,
                concurrency,
                ready_replicas: self.ready,
                current_replicas: self.current,
                woken_at: woken_ago.map(|ago| now.checked_sub(ago).unwrap_or(now)),
            };
            let decision = decide(&self.policy, &mut self.state, &obs);
            self.ready = self.current;
            self.current = decision.desired;
            self.at += TICK;
            decision
        }

        fn step(&mut self, concurrency: f64) -> Decision {
            self.step_woken(concurrency, None)
        }

        /// `ticks` decisions at a constant `concurrency`.
        fn run(&mut self, ticks: usize, concurrency: f64) -> Vec<Decision> {
            (0..ticks).map(|_| self.step(concurrency)).collect()
        }
    }

    fn desired(decisions: &[Decision]) -> Vec<i32> {
        decisions.iter().map(|decision| decision.desired).collect()
    }

    /// Number of times consecutive values differ.
    fn changes(values: &[i32]) -> usize {
        values.windows(2).filter(|pair| pair[0] != pair[1]).count()
    }

    /// Number of times the direction of change flips (up then down, or down then up).
    fn reversals(values: &[i32]) -> usize {
        let steps: Vec<i32> = values.windows(2).map(|pair| (pair[1] - pair[0]).signum()).filter(|s| *s != 0).collect();
        steps.windows(2).filter(|pair| pair[0] != pair[1]).count()
    }

    #[test]
    fn steady_load_settles_and_stays() {
        struct Case {
            name: &'static str,
            start_replicas: i32,
            expect_panic_at_start: bool,
        }
        let cases = [
            // From one replica, 20 in flight is 5x the capacity: panic reaches 5 in one decision.
            Case { name: "from one replica", start_replicas: 1, expect_panic_at_start: true },
            // Already right: never panics, never moves.
            Case { name: "already at five", start_replicas: 5, expect_panic_at_start: false },
        ];
        for case in cases {
            let mut sim = Sim::new(Policy::new(1, 10, 4.0, 300), case.start_replicas);
            let decisions = sim.run(300, 20.0); // 10 minutes
            assert_eq!(desired(&decisions), vec![5; 300], "{}", case.name);
            assert_eq!(decisions[0].panicking, case.expect_panic_at_start, "{}", case.name);
            let last = decisions[299];
            assert_eq!(last.reason, Reason::Stable, "{}", case.name);
            assert!(!last.panicking, "{}", case.name);
            assert!((last.stable_concurrency - 20.0).abs() < 1e-9, "{}: {}", case.name, last.stable_concurrency);
            assert!(sim.state.sample_count() <= 31, "{}: {} samples", case.name, sim.state.sample_count());
        }
    }

    #[test]
    fn burst_panics_at_once_and_holds() {
        let mut sim = Sim::new(Policy::new(1, 20, 4.0, 300), 1);
        let quiet = sim.run(60, 0.0);
        assert!(quiet.iter().all(|d| d.desired == 1 && !d.panicking));

        let burst_at = sim.at;
        let burst = sim.step(40.0);
        assert_eq!(burst.desired, 10);
        assert_eq!(burst.reason, Reason::Panic);
        assert!(burst.panicking);

        // The burst is over at once: the stable window still wants 1-3 replicas, panic must hold 10.
        let mut previous = burst.desired;
        let mut panic_end = None;
        for _ in 0..100 {
            let at = sim.at;
            let decision = sim.step(4.0);
            if decision.panicking {
                assert_eq!(decision.desired, 10, "at {at:?}");
                assert!(decision.desired >= previous);
            } else if panic_end.is_none() {
                panic_end = Some(at - burst_at);
            }
            previous = decision.desired;
        }
        // Panic re-triggered once more while the new pods were not ready yet (at +2 s), then held a
        // stable window (60 s) after that trigger.
        assert_eq!(panic_end, Some(Duration::from_secs(62)));
        // After panic, the delay and the rate bring it back to one replica.
        assert_eq!(sim.current, 1);
    }

    #[test]
    fn idle_scales_to_zero_only_after_the_idle_window() {
        // After load: >= 1 until 30 s after the last request, then 0.
        let mut sim = Sim::new(Policy::new(0, 10, 4.0, 30), 2);
        sim.run(60, 8.0);
        let last_request = sim.at - TICK;
        for _ in 0..30 {
            let since = sim.at - last_request;
            let decision = sim.step(0.0);
            if since < Duration::from_secs(30) {
                assert!(decision.desired >= 1, "{since:?}: {decision:?}");
                assert_ne!(decision.reason, Reason::ScaleToZero);
            } else {
                assert_eq!(decision.desired, 0, "{since:?}: {decision:?}");
                assert_eq!(decision.reason, Reason::ScaleToZero);
            }
        }
        assert_eq!(sim.state.last_activity(), Some(sim.start + last_request));

        // A fresh State (operator restart) with 2 replicas and no traffic: holds until it has seen a
        // full idle window itself, then zero.
        let mut sim = Sim::new(Policy::new(0, 10, 4.0, 30), 2);
        let decisions = sim.run(20, 0.0);
        let first_zero = decisions.iter().position(|d| d.desired == 0);
        assert_eq!(first_zero, Some(15)); // 15 ticks = 30 s
        assert!(decisions[..15].iter().all(|d| d.desired == 2 && d.reason == Reason::Warmup));
        assert!(decisions[15..].iter().all(|d| d.desired == 0));

        // A fresh State at zero without traffic stays at zero (no spurious wake).
        let mut sim = Sim::new(Policy::new(0, 10, 4.0, 30), 0);
        assert_eq!(desired(&sim.run(40, 0.0)), vec![0; 40]);

        // A fresh State that learns of a wake 20 s before its first decision still counts its own
        // full idle window: one replica for 30 s, then zero.
        let mut sim = Sim::new(Policy::new(0, 10, 4.0, 30), 1);
        let woken = sim.now() - Duration::from_secs(20);
        let decisions: Vec<Decision> = (0..20).map(|_| sim.step_woken(0.0, Some(sim.now() - woken))).collect();
        assert_eq!(decisions.iter().position(|d| d.desired == 0), Some(15), "{:?}", desired(&decisions));
        assert!(decisions[..15].iter().all(|d| d.desired == 1));
    }

    #[test]
    fn wake_from_zero() {
        let policy = Policy::new(0, 10, 4.0, 30);

        // The gateway's wake: one replica at once.
        let mut sim = Sim::new(policy.clone(), 0);
        sim.run(40, 0.0);
        let woke = sim.step_woken(0.0, Some(Duration::from_millis(500)));
        assert_eq!((woke.desired, woke.reason), (1, Reason::Wake));
        // Held at one for the idle window after the wake, then zero again; the same (old) wake
        // annotation does not wake it a second time.
        let wake_time = sim.at - TICK - Duration::from_millis(500);
        let mut zero_at = None;
        for _ in 0..40 {
            let at = sim.at;
            let decision = sim.step_woken(0.0, Some(at - wake_time));
            if decision.desired == 0 && zero_at.is_none() {
                zero_at = Some(at - wake_time);
            }
            if zero_at.is_some() {
                assert_eq!(decision.desired, 0, "re-woken by an old wake at {at:?}");
            } else {
                assert_eq!(decision.desired, 1);
            }
        }
        assert_eq!(zero_at, Some(Duration::from_millis(30_500)));

        // Woken, then served requests for 20 s: the idle window counts from the last request, not
        // from the (older) wake annotation, which stays on the object.
        let mut sim = Sim::new(policy.clone(), 0);
        sim.run(40, 0.0);
        let wake_time = sim.at;
        assert_eq!(sim.step_woken(0.0, Some(Duration::ZERO)).desired, 1);
        for _ in 0..10 {
            let ago = sim.at - wake_time;
            assert_eq!(sim.step_woken(2.0, Some(ago)).desired, 1);
        }
        let last_request = sim.at - TICK;
        let mut zero_at = None;
        for _ in 0..30 {
            let at = sim.at;
            if sim.step_woken(0.0, Some(at - wake_time)).desired == 0 && zero_at.is_none() {
                zero_at = Some(at - last_request);
            }
        }
        assert_eq!(zero_at, Some(Duration::from_secs(30)));

        // Requests in flight at zero: as many replicas as they need, at once.
        let mut sim = Sim::new(policy.clone(), 0);
        sim.run(40, 0.0);
        let woke = sim.step(40.0);
        assert_eq!((woke.desired, woke.reason), (10, Reason::Wake));

        // A fresh State sees an old wake (older than the idle window): no wake.
        let mut sim = Sim::new(policy, 0);
        let decision = sim.step_woken(0.0, Some(Duration::from_secs(600)));
        assert_eq!(decision.desired, 0);
    }

    #[test]
    fn flapping_load_does_not_flap_replicas() {
        // 4 and 40 in flight alternately every 2 s for 5 minutes, target 4.
        let flap = |policy: Policy| {
            let mut sim = Sim::new(policy, 1);
            let values: Vec<i32> = (0..150).map(|i| sim.step(if i % 2 == 0 { 4.0 } else { 40.0 }).desired).collect();
            values
        };
        let values = flap(Policy::new(1, 20, 4.0, 300));
        // Up to 10 on the first burst (panic), then down once to the stable average (22 -> 6).
        assert!(changes(&values) <= 2, "{values:?}");
        assert!(reversals(&values) <= 1, "{values:?}");
        assert_eq!(values[1], 10);
        assert_eq!(values[149], 6);

        // Without the windows and the delay, the same load flaps on every tick: the sim can tell.
        let mut twitchy = Policy::new(1, 20, 4.0, 300);
        twitchy.stable_window = TICK;
        twitchy.panic_window = TICK;
        twitchy.scale_down_delay = Duration::ZERO;
        let values = flap(twitchy);
        assert!(changes(&values) > 100, "{values:?}");
    }

    #[test]
    fn scale_down_delay_rides_out_a_dip() {
        // 40 in flight (10 replicas), a 16 s dip to 4, then 40 again. A 6 s stable window isolates
        // the delay: the averages alone follow the dip within 6 s.
        let short_window = |delay: Duration| {
            let mut policy = Policy::new(1, 20, 4.0, 300);
            policy.stable_window = Duration::from_secs(6);
            policy.scale_down_delay = delay;
            policy
        };
        let dip = |policy: Policy| {
            let mut sim = Sim::new(policy, 10);
            sim.run(30, 40.0);
            let mut values = desired(&sim.run(8, 4.0));
            values.extend(desired(&sim.run(30, 40.0)));
            values
        };
        assert_eq!(dip(short_window(DEFAULT_SCALE_DOWN_DELAY)), vec![10; 38]);
        // Without the delay the same dip costs replicas (and brings them back): the test can tell.
        let values = dip(short_window(Duration::ZERO));
        assert!(values.iter().min().is_some_and(|least| *least <= 5), "{values:?}");
        assert!(changes(&values) >= 2, "{values:?}");

        // A lasting drop: the scale-down starts 30 s (15 ticks) after the raw demand last wanted 10.
        let mut sim = Sim::new(Policy::new(1, 20, 4.0, 300), 10);
        sim.run(60, 40.0);
        let decisions = sim.run(60, 4.0);
        let raw_drop = decisions.iter().position(|d| pods(d.stable_concurrency / 4.0) < 10);
        let scale_down = decisions.iter().position(|d| d.desired < 10);
        let (Some(raw_drop), Some(scale_down)) = (raw_drop, scale_down) else {
            panic!("no scale-down: {:?}", desired(&decisions));
        };
        assert!(raw_drop >= 1);
        assert_eq!(scale_down, raw_drop - 1 + 15);
        assert!(decisions[raw_drop..scale_down].iter().all(|d| d.desired == 10 && d.reason == Reason::ScaleDownDelay));
    }

    #[test]
    fn scale_down_at_most_halves_per_decision() {
        // Windows of one tick and no delay: the raw demand falls from 10 to 1 at once.
        let mut policy = Policy::new(1, 20, 4.0, 300);
        policy.stable_window = TICK;
        policy.panic_window = TICK;
        policy.scale_down_delay = Duration::ZERO;
        let mut sim = Sim::new(policy, 10);
        sim.run(40, 40.0);
        let decisions = sim.run(6, 0.0);
        assert_eq!(desired(&decisions), vec![5, 3, 2, 1, 1, 1]);
        assert!(decisions[..3].iter().all(|d| d.reason == Reason::ScaleDownRate));
        assert_eq!(decisions[3].reason, Reason::MinReplicas);

        // With the default policy the invariant holds at every step of the way down.
        let mut sim = Sim::new(Policy::new(1, 20, 4.0, 300), 10);
        sim.run(60, 40.0);
        let mut previous = sim.current;
        for decision in sim.run(120, 0.0) {
            assert!(2 * decision.desired >= previous, "{previous} -> {}", decision.desired);
            previous = decision.desired;
        }
        assert_eq!(previous, 1);
    }

    #[test]
    fn clamps_and_weird_inputs() {
        // Max clamps a large demand; min holds up a quiet one.
        let mut sim = Sim::new(Policy::new(2, 3, 4.0, 300), 2);
        let decision = sim.step(100.0);
        assert_eq!((decision.desired, decision.reason), (3, Reason::MaxReplicas));
        let mut sim = Sim::new(Policy::new(2, 3, 4.0, 300), 2);
        let decisions = sim.run(60, 0.0);
        assert!(decisions.iter().all(|d| d.desired == 2 && d.reason == Reason::MinReplicas));

        // Weird concurrency reads as 0; weird target as 1; max < min as min.
        let now = Instant::now();
        let cases: [(&str, Policy, f64, i32); 7] = [
            ("NaN", Policy::new(1, 10, 4.0, 300), f64::NAN, 1),
            ("negative", Policy::new(1, 10, 4.0, 300), -8.0, 1),
            ("infinite", Policy::new(1, 10, 4.0, 300), f64::INFINITY, 1),
            ("zero target", Policy::new(1, 10, 0.0, 300), 3.0, 3),
            ("NaN target", Policy::new(1, 10, f64::NAN, 300), 3.0, 3),
            ("max below min", Policy::new(4, 2, 4.0, 300), 100.0, 4),
            ("negative min and max", Policy::new(-3, -1, 4.0, 0), 100.0, 1),
        ];
        for (name, policy, concurrency, expected) in cases {
            let obs = Observation { now, concurrency, ready_replicas: 1, current_replicas: 1, woken_at: None };
            let decision = decide(&policy, &mut State::default(), &obs);
            assert_eq!(decision.desired, expected, "{name}: {decision:?}");
            assert!(decision.stable_concurrency.is_finite(), "{name}");
        }

        // Negative replicas, time going backwards, zero windows and junk rates: no panic, sane output.
        let mut policy = Policy::new(0, 5, 4.0, 0);
        policy.stable_window = Duration::ZERO;
        policy.panic_window = Duration::MAX;
        policy.panic_threshold = f64::NAN;
        policy.max_scale_down_rate = -1.0;
        policy.scale_down_delay = Duration::MAX;
        let mut state = State::default();
        for (offset, concurrency, replicas) in [(100, 8.0, -4), (50, 8.0, 2), (50, 0.0, 2), (200, 0.0, 1)] {
            let obs = Observation {
                now: now + Duration::from_secs(offset),
                concurrency,
                ready_replicas: replicas,
                current_replicas: replicas,
                woken_at: Some(now + Duration::from_secs(10_000)),
            };
            let decision = decide(&policy, &mut state, &obs);
            assert!((0..=5).contains(&decision.desired), "{decision:?}");
        }
    }

    #[test]
    fn bounded_memory_and_stable_names() {
        // Called far more often than every 2 s: memory stays bounded.
        let mut state = State::default();
        let policy = Policy::new(1, 10, 4.0, 300);
        let start = Instant::now();
        for i in 0..5000u64 {
            let obs = Observation {
                now: start + Duration::from_millis(i),
                concurrency: 4.0,
                ready_replicas: 1,
                current_replicas: 1,
                woken_at: None,
            };
            decide(&policy, &mut state, &obs);
        }
        assert_eq!(state.sample_count(), MAX_RECORDS);
        assert!(state.recent_desired.len() <= MAX_RECORDS);

        assert_eq!(Reason::ScaleToZero.as_str(), "scale_to_zero");
        assert_eq!(Reason::ScaleDownDelay.as_str(), "scale_down_delay");
        assert_eq!(Reason::Wake.as_str(), "wake");
    }
}
