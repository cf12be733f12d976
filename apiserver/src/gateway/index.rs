//! The gateway's core: per-deployment state with no Kubernetes dependency.
//!
//! For each ModelDeployment the [`Index`] keeps what the watches reported (does it exist, may
//! it serve, its model version) and its ready endpoints with their in-flight counters, and it
//! holds requests while no endpoint is ready. The Kubernetes half (`watch.rs`) feeds it with
//! [`Index::set_deployment`], [`Index::set_endpoints`] and their `replace_*` forms after a
//! (re-)list, and turns the [`WakeRequest`]s it emits into annotation patches. Tests feed it
//! directly, as linkerd2's policy controller tests its index.
//!
//! Locking: one `std::sync::Mutex` per deployment, held only for short, non-async sections; the
//! map of deployments is behind an `RwLock` taken before a deployment's lock, never after.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::error::GatewayError;
use super::metrics::GatewayMetrics;

/// A ModelDeployment's namespace and name: the `/{namespace}/{name}/` of its gateway URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeploymentKey {
    /// Namespace.
    pub namespace: String,
    /// Name (also the name of its predictor Service).
    pub name: String,
}

impl DeploymentKey {
    /// The key of `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        DeploymentKey { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for DeploymentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whether a deployment may serve, as far as the gateway is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Serving, starting or scaled to zero: requests are forwarded, or held and the deployment woken.
    Active,
    /// `spec.stopped: true`: refused at once (503), never woken.
    Stopped,
    /// `spec.durationHours` has passed (phase `Expired`): refused at once (503), never woken.
    Expired,
    /// Phase `Failed`: forwarded to a ready pod if one is left, otherwise refused at once (503)
    /// rather than held for the whole hold timeout.
    Failed,
}

/// What the gateway needs to know about a ModelDeployment (from the ModelDeployment cache).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentInfo {
    /// May it serve.
    pub lifecycle: Lifecycle,
    /// `status.modelVersion`, reported by the Label Studio `/health` and `/setup` answers at zero.
    pub model_version: Option<String>,
}

/// A request to the Kubernetes half to write a deployment's gateway annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakeRequest {
    /// The deployment.
    pub key: DeploymentKey,
    /// Requests held for it now (`ocellus.dev/held-requests`).
    pub held: usize,
    /// Also ask the operator to scale it up now (`ocellus.dev/wake-requested-at`). `false` only
    /// reports that the held count dropped (to zero).
    pub wake: bool,
}

/// The receiving end of the wake requests, drained by the Kubernetes half.
pub type WakeReceiver = mpsc::UnboundedReceiver<WakeRequest>;

/// Tuning of the index.
#[derive(Clone, Debug)]
pub struct IndexConfig {
    /// Most requests held per deployment while it has no ready endpoint; beyond, 429.
    pub max_held: usize,
    /// Least time between two wake requests of one deployment (the annotation patch rate).
    pub wake_interval: Duration,
    /// How long an endpoint that refused a connection is skipped. An EndpointSlice update that
    /// still lists it does not end this: the slice lags behind a pod that died.
    pub eject_for: Duration,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig { max_held: 256, wake_interval: Duration::from_secs(2), eject_for: Duration::from_secs(5) }
    }
}

/// One ready predictor pod: its address and the requests in flight to it through this gateway.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    in_flight: AtomicUsize,
}

impl Endpoint {
    /// `podIP:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests sent to it and not yet finished (response body streamed or dropped).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// The right to send one request to one endpoint: counts as in flight there until dropped.
#[derive(Debug)]
pub struct EndpointLease {
    endpoint: Arc<Endpoint>,
}

impl EndpointLease {
    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }
}

impl Drop for EndpointLease {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct Slot {
    endpoint: Arc<Endpoint>,
    /// Skipped until then after a refused connection.
    ejected_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    info: Option<DeploymentInfo>,
    slots: Vec<Slot>,
    held: usize,
    /// Round-robin start among endpoints tied on in-flight requests.
    cursor: usize,
    last_wake: Option<Instant>,
    /// The held count last sent in a [`WakeRequest`].
    reported_held: usize,
}

impl State {
    fn is_empty(&self) -> bool {
        self.info.is_none() && self.slots.is_empty() && self.held == 0 && self.reported_held == 0
    }

    /// The usable endpoint with the fewest requests in flight (ties: round-robin), counted as
    /// one more in flight.
    fn pick(&mut self, now: Instant) -> Option<EndpointLease> {
        let n = self.slots.len();
        let mut best: Option<(usize, usize)> = None;
        for i in 0..n {
            let idx = (self.cursor + i) % n;
            let slot = &self.slots[idx];
            if slot.ejected_until.is_some_and(|t| t > now) {
                continue;
            }
            let load = slot.endpoint.in_flight();
            if best.is_none_or(|(_, b)| load < b) {
                best = Some((idx, load));
            }
        }
        let (idx, _) = best?;
        self.cursor = (idx + 1) % n;
        let endpoint = self.slots[idx].endpoint.clone();
        endpoint.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(EndpointLease { endpoint })
    }

    /// When the first ejected endpoint becomes usable again.
    fn next_unejection(&self, now: Instant) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.ejected_until).filter(|t| *t > now).min()
    }

    fn is_active(&self) -> bool {
        self.info.as_ref().is_some_and(|i| i.lifecycle == Lifecycle::Active)
    }
}

/// One deployment's state and the signal that releases its held requests.
#[derive(Debug)]
struct Deployment {
    key: DeploymentKey,
    state: Mutex<State>,
    /// Notified (all waiters) whenever endpoints or info change.
    changed: Notify,
}

impl Deployment {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still consistent enough to
        // keep serving; never propagate the poison.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
struct Inner {
    config: IndexConfig,
    deployments: RwLock<HashMap<DeploymentKey, Arc<Deployment>>>,
    wakes: mpsc::UnboundedSender<WakeRequest>,
    synced: watch::Sender<bool>,
    metrics: GatewayMetrics,
}

/// All deployments the gateway knows, their endpoints and held requests. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Index {
    inner: Arc<Inner>,
}

/// Marks one held request; dropping it (forwarded, timed out, or the client went away) releases
/// its place in the queue.
#[derive(Debug)]
struct HeldGuard {
    deployment: Arc<Deployment>,
    since: Instant,
    metrics: GatewayMetrics,
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.deployment.lock().held -= 1;
        self.metrics.held.dec();
        self.metrics.held_seconds.observe(self.since.elapsed().as_secs_f64());
    }
}

/// A deployment as a request sees it: look-ups, endpoint choice, holding.
#[derive(Clone, Debug)]
pub struct DeploymentHandle {
    deployment: Arc<Deployment>,
    index: Index,
}

impl Index {
    /// An empty, not yet synced index. Spawns the task that repeats wake requests while
    /// requests are held (it ends when the index is dropped), so it needs a Tokio runtime.
    pub fn new(config: IndexConfig, metrics: GatewayMetrics) -> (Index, WakeReceiver) {
        let (wakes, rx) = mpsc::unbounded_channel();
        let (synced, _) = watch::channel(false);
        let inner = Arc::new(Inner { config, deployments: RwLock::new(HashMap::new()), wakes, synced, metrics });
        tokio::spawn(maintain(Arc::downgrade(&inner)));
        (Index { inner }, rx)
    }

    /// The configuration.
    pub fn config(&self) -> &IndexConfig {
        &self.inner.config
    }

    /// Marks the index complete: both watches have listed once. Until then requests wait (up
    /// to their hold timeout) instead of getting a 404 for a deployment not listed yet.
    pub fn mark_synced(&self) {
        self.inner.synced.send_replace(true);
    }

    /// Whether [`Index::mark_synced`] was called.
    pub fn is_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Waits until synced or `deadline`; `false` on the deadline.
    pub async fn wait_synced(&self, deadline: Instant) -> bool {
        let mut rx = self.inner.synced.subscribe();
        matches!(tokio::time::timeout_at(deadline, rx.wait_for(|s| *s)).await, Ok(Ok(_)))
    }

    fn map_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<DeploymentKey, Arc<Deployment>>> {
        self.inner.deployments.read().unwrap_or_else(|e| e.into_inner())
    }

    fn map_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<DeploymentKey, Arc<Deployment>>> {
        self.inner.deployments.write().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(&self, key: &DeploymentKey) -> Arc<Deployment> {
        if let Some(d) = self.map_read().get(key) {
            return d.clone();
        }
        self.map_write()
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Deployment { key: key.clone(), state: Mutex::new(State::default()), changed: Notify::new() })
            })
            .clone()
    }

    /// Drops the entry of `key` if nothing is left in it (no info, no endpoints, nothing held).
    fn collect(&self, key: &DeploymentKey) {
        let mut map = self.map_write();
        if map.get(key).is_some_and(|d| d.lock().is_empty()) {
            map.remove(key);
        }
    }

    /// Sets (or with `None`, forgets) what the ModelDeployment cache says about `key`, and
    /// wakes its held requests to look again (a deleted or stopped deployment fails them).
    pub fn set_deployment(&self, key: &DeploymentKey, info: Option<DeploymentInfo>) {
        let d = self.entry(key);
        let changed = {
            let mut st = d.lock();
            let changed = st.info != info;
            st.info = info;
            changed
        };
        if changed {
            d.changed.notify_waiters();
        }
        self.collect(key);
    }

    /// Replaces every deployment's info after a (re-)list: those not in `all` are forgotten.
    pub fn replace_deployments(&self, all: HashMap<DeploymentKey, DeploymentInfo>) {
        let known: Vec<DeploymentKey> = self.map_read().keys().cloned().collect();
        for key in known.iter().filter(|k| !all.contains_key(k)) {
            self.set_deployment(key, None);
        }
        for (key, info) in all {
            self.set_deployment(&key, Some(info));
        }
    }

    /// Sets the ready endpoints of `key` (duplicates ignored). Endpoints that stay keep their
    /// in-flight counts and ejections; held requests are released if one is usable now.
    pub fn set_endpoints(&self, key: &DeploymentKey, addrs: impl IntoIterator<Item = SocketAddr>) {
        let d = self.entry(key);
        {
            let mut st = d.lock();
            let mut old: HashMap<SocketAddr, Slot> = st.slots.drain(..).map(|s| (s.endpoint.addr, s)).collect();
            let mut slots = Vec::new();
            for addr in addrs {
                if slots.iter().any(|s: &Slot| s.endpoint.addr == addr) {
                    continue;
                }
                slots.push(old.remove(&addr).unwrap_or_else(|| Slot {
                    endpoint: Arc::new(Endpoint { addr, in_flight: AtomicUsize::new(0) }),
                    ejected_until: None,
                }));
            }
            st.slots = slots;
            if st.cursor >= st.slots.len() {
                st.cursor = 0;
            }
        }
        d.changed.notify_waiters();
        self.collect(key);
    }

    /// Replaces every deployment's endpoints after a (re-)list: those not in `all` have none.
    pub fn replace_endpoints(&self, all: HashMap<DeploymentKey, Vec<SocketAddr>>) {
        let known: Vec<DeploymentKey> = self.map_read().keys().cloned().collect();
        for key in known.iter().filter(|k| !all.contains_key(k)) {
            self.set_endpoints(key, []);
        }
        for (key, addrs) in all {
            self.set_endpoints(&key, addrs);
        }
    }

    /// The deployment `key`, if the watches reported anything about it.
    pub fn get(&self, key: &DeploymentKey) -> Option<DeploymentHandle> {
        self.map_read().get(key).map(|d| DeploymentHandle { deployment: d.clone(), index: self.clone() })
    }

    /// Requests held for `key` now (0 for an unknown deployment).
    pub fn held(&self, key: &DeploymentKey) -> usize {
        self.map_read().get(key).map_or(0, |d| d.lock().held)
    }

    /// The endpoints of `key` with their in-flight counts, in the order last set.
    pub fn endpoints(&self, key: &DeploymentKey) -> Vec<(SocketAddr, usize)> {
        self.map_read()
            .get(key)
            .map(|d| d.lock().slots.iter().map(|s| (s.endpoint.addr, s.endpoint.in_flight())).collect())
            .unwrap_or_default()
    }

    fn send_wake(&self, st: &mut State, key: &DeploymentKey, wake: bool, now: Instant) {
        if wake {
            st.last_wake = Some(now);
        }
        st.reported_held = st.held;
        // The receiver is gone only when the process is shutting down.
        let _ = self.inner.wakes.send(WakeRequest { key: key.clone(), held: st.held, wake });
    }

    /// Sends a wake request for an active deployment unless one went out less than the wake
    /// interval ago.
    fn maybe_wake(&self, st: &mut State, key: &DeploymentKey, now: Instant) {
        if st.is_active() && st.last_wake.is_none_or(|t| now.duration_since(t) >= self.inner.config.wake_interval) {
            self.send_wake(st, key, true, now);
        }
    }
}

/// Every quarter wake interval: repeat the wake request of deployments that still hold
/// requests (with the new count), and report a held count that fell to zero.
async fn maintain(inner: Weak<Inner>) {
    let period = inner.upgrade().map(|i| i.config.wake_interval / 4).unwrap_or_default().max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let index = Index { inner };
        let all: Vec<Arc<Deployment>> = index.map_read().values().cloned().collect();
        let now = Instant::now();
        for d in all {
            let empty = {
                let mut st = d.lock();
                if st.held > 0 {
                    index.maybe_wake(&mut st, &d.key, now);
                } else if st.reported_held > 0 {
                    if st.info.is_some() {
                        index.send_wake(&mut st, &d.key, false, now);
                    } else {
                        // Deleted: there is no object left to annotate.
                        st.reported_held = 0;
                    }
                }
                st.is_empty()
            };
            if empty {
                index.collect(&d.key);
            }
        }
    }
}

/// How a request may proceed right now, without holding it.
#[derive(Debug)]
pub enum Available {
    /// Send it to this endpoint.
    Endpoint(EndpointLease),
    /// The deployment can serve but has no usable endpoint now.
    NoneReady,
}

impl DeploymentHandle {
    /// The deployment's key.
    pub fn key(&self) -> &DeploymentKey {
        &self.deployment.key
    }

    /// What the ModelDeployment cache says (`None`: no such ModelDeployment).
    pub fn info(&self) -> Option<DeploymentInfo> {
        self.deployment.lock().info.clone()
    }

    /// Refusals that do not depend on endpoints: unknown, stopped or expired deployments.
    fn refusal(&self, st: &State) -> Option<GatewayError> {
        let key = self.key().clone();
        match st.info.as_ref().map(|i| i.lifecycle) {
            None => Some(GatewayError::NotFound(key)),
            Some(Lifecycle::Stopped) => Some(GatewayError::Stopped(key)),
            Some(Lifecycle::Expired) => Some(GatewayError::Expired(key)),
            Some(Lifecycle::Active | Lifecycle::Failed) => None,
        }
    }

    /// Refuses unknown, stopped and expired deployments (what does not depend on endpoints).
    pub fn check(&self) -> Result<(), GatewayError> {
        let st = self.deployment.lock();
        self.refusal(&st).map_or(Ok(()), Err)
    }

    /// Endpoints that may be chosen now (ready and not ejected).
    pub fn usable_endpoints(&self) -> usize {
        let now = Instant::now();
        self.deployment.lock().slots.iter().filter(|s| s.ejected_until.is_none_or(|t| t <= now)).count()
    }

    /// An endpoint now, or [`Available::NoneReady`]; never holds. Errors for unknown, stopped,
    /// expired, and failed-without-endpoints deployments.
    pub fn try_acquire(&self) -> Result<Available, GatewayError> {
        let mut st = self.deployment.lock();
        if let Some(e) = self.refusal(&st) {
            return Err(e);
        }
        match st.pick(Instant::now()) {
            Some(lease) => Ok(Available::Endpoint(lease)),
            None if st.info.as_ref().is_some_and(|i| i.lifecycle == Lifecycle::Failed) => {
                Err(GatewayError::Failed(self.key().clone()))
            }
            None => Ok(Available::NoneReady),
        }
    }

    /// Asks for the deployment to be woken (rate-limited; only when it may serve).
    pub fn request_wake(&self) {
        let mut st = self.deployment.lock();
        self.index.maybe_wake(&mut st, &self.deployment.key, Instant::now());
    }

    /// An endpoint for one request: the least loaded usable one, or, when there is none, after
    /// holding the request until one is ready or `deadline` passes. The first hold of a request
    /// counts against the queue bound (429 when full) unless `admitted` (a request already
    /// admitted that is retried after a refused connection). Dropping the future releases its
    /// place in the queue.
    pub async fn acquire(&self, deadline: Instant, admitted: bool) -> Result<EndpointLease, GatewayError> {
        let d = &self.deployment;
        let mut held: Option<HeldGuard> = None;
        loop {
            let (notified, recheck) = {
                let mut st = d.lock();
                if let Some(e) = self.refusal(&st) {
                    drop(st);
                    return Err(e);
                }
                let now = Instant::now();
                if let Some(lease) = st.pick(now) {
                    drop(st);
                    drop(held);
                    return Ok(lease);
                }
                if st.info.as_ref().is_some_and(|i| i.lifecycle == Lifecycle::Failed) {
                    drop(st);
                    return Err(GatewayError::Failed(self.key().clone()));
                }
                if now >= deadline {
                    drop(st);
                    return Err(GatewayError::HoldTimeout {
                        key: self.key().clone(),
                        waited: held.as_ref().map_or(Duration::ZERO, |h| now.duration_since(h.since)),
                    });
                }
                if held.is_none() {
                    let max = self.index.inner.config.max_held;
                    if !admitted && st.held >= max {
                        drop(st);
                        return Err(GatewayError::QueueFull { key: self.key().clone(), max });
                    }
                    st.held += 1;
                    self.index.inner.metrics.held.inc();
                    held = Some(HeldGuard {
                        deployment: d.clone(),
                        since: now,
                        metrics: self.index.inner.metrics.clone(),
                    });
                    self.index.maybe_wake(&mut st, &d.key, now);
                }
                // Created under the lock: a change made after it is released is not missed.
                (d.changed.notified(), st.next_unejection(now))
            };
            let until = recheck.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Skips `addr` for the configured ejection time: it refused a connection.
    pub fn eject(&self, addr: SocketAddr) {
        let until = Instant::now() + self.index.inner.config.eject_for;
        let mut st = self.deployment.lock();
        if let Some(slot) = st.slots.iter_mut().find(|s| s.endpoint.addr == addr) {
            slot.ejected_until = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn active() -> Option<DeploymentInfo> {
        Some(DeploymentInfo { lifecycle: Lifecycle::Active, model_version: Some("abc".into()) })
    }

    fn index(config: IndexConfig) -> (Index, WakeReceiver) {
        let registry = prometheus::Registry::new();
        Index::new(config, GatewayMetrics::register(&registry).expect("metrics"))
    }

    #[tokio::test]
    async fn picks_least_in_flight_and_round_robins_ties() {
        let (idx, _rx) = index(IndexConfig::default());
        let key = DeploymentKey::new("ns", "d");
        idx.set_deployment(&key, active());
        idx.set_endpoints(&key, [addr(1), addr(2), addr(3), addr(2)]);
        assert_eq!(idx.endpoints(&key).len(), 3, "duplicates are ignored");
        let h = idx.get(&key).expect("known");
        let take = || match h.try_acquire().expect("serves") {
            Available::Endpoint(l) => l,
            Available::NoneReady => panic!("none ready"),
        };
        // Ties go round-robin: 1, 2, 3.
        let a = take();
        let b = take();
        let c = take();
        assert_eq!([a.addr(), b.addr(), c.addr()], [addr(1), addr(2), addr(3)]);
        // 2 finishes: it is the only one with nothing in flight.
        drop(b);
        let d = take();
        assert_eq!(d.addr(), addr(2));
        assert_eq!(idx.endpoints(&key), vec![(addr(1), 1), (addr(2), 1), (addr(3), 1)]);
        drop((a, c, d));
        assert_eq!(idx.endpoints(&key), vec![(addr(1), 0), (addr(2), 0), (addr(3), 0)]);
    }

    #[tokio::test]
    async fn ejected_endpoints_are_skipped_and_kept_across_updates() {
        let (idx, _rx) = index(IndexConfig { eject_for: Duration::from_secs(60), ..Default::default() });
        let key = DeploymentKey::new("ns", "d");
        idx.set_deployment(&key, active());
        idx.set_endpoints(&key, [addr(1), addr(2)]);
        let h = idx.get(&key).expect("known");
        h.eject(addr(1));
        idx.set_endpoints(&key, [addr(1), addr(2)]);
        for _ in 0..3 {
            match h.try_acquire().expect("serves") {
                Available::Endpoint(l) => assert_eq!(l.addr(), addr(2)),
                Available::NoneReady => panic!("2 is usable"),
            }
        }
        h.eject(addr(2));
        assert!(matches!(h.try_acquire(), Ok(Available::NoneReady)));
    }

    #[tokio::test]
    async fn refusals_follow_the_lifecycle() {
        let (idx, _rx) = index(IndexConfig::default());
        let key = DeploymentKey::new("ns", "d");
        idx.set_endpoints(&key, [addr(1)]);
        let h = idx.get(&key).expect("an entry from the endpoints alone");
        assert!(matches!(h.try_acquire(), Err(GatewayError::NotFound(_))), "no ModelDeployment: 404");
        for (lifecycle, status) in [(Lifecycle::Stopped, 503), (Lifecycle::Expired, 503)] {
            idx.set_deployment(&key, Some(DeploymentInfo { lifecycle, model_version: None }));
            let e = h.try_acquire().expect_err("refused");
            assert_eq!(e.status().as_u16(), status, "{lifecycle:?}");
        }
        // Failed: a pod that is still ready serves; without one, 503 at once.
        idx.set_deployment(&key, Some(DeploymentInfo { lifecycle: Lifecycle::Failed, model_version: None }));
        assert!(matches!(h.try_acquire(), Ok(Available::Endpoint(_))));
        idx.set_endpoints(&key, []);
        assert!(matches!(h.try_acquire(), Err(GatewayError::Failed(_))));
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(matches!(h.acquire(deadline, false).await, Err(GatewayError::Failed(_))));
    }

    #[tokio::test]
    async fn empty_entries_are_collected() {
        let (idx, _rx) = index(IndexConfig::default());
        let key = DeploymentKey::new("ns", "d");
        idx.set_deployment(&key, active());
        idx.set_endpoints(&key, [addr(1)]);
        idx.set_deployment(&key, None);
        assert!(idx.get(&key).is_some(), "endpoints remain");
        idx.set_endpoints(&key, []);
        assert!(idx.get(&key).is_none());
    }

    #[tokio::test]
    async fn replace_forgets_what_the_list_lacks() {
        let (idx, _rx) = index(IndexConfig::default());
        let (a, b) = (DeploymentKey::new("ns", "a"), DeploymentKey::new("ns", "b"));
        idx.set_deployment(&a, active());
        idx.set_endpoints(&a, [addr(1)]);
        idx.replace_deployments(HashMap::from([(b.clone(), active().expect("info"))]));
        idx.replace_endpoints(HashMap::from([(b.clone(), vec![addr(2)])]));
        assert!(idx.get(&a).is_none());
        assert_eq!(idx.endpoints(&b), vec![(addr(2), 0)]);
    }

    #[tokio::test]
    async fn wakes_are_rate_limited_repeated_while_held_and_report_zero() {
        let (idx, mut rx) =
            index(IndexConfig { wake_interval: Duration::from_millis(200), max_held: 4, ..Default::default() });
        let key = DeploymentKey::new("ns", "d");
        idx.set_deployment(&key, active());
        let h = idx.get(&key).expect("known");
        let deadline = Instant::now() + Duration::from_secs(10);
        let (h1, h2) = (h.clone(), h.clone());
        let t1 = tokio::spawn(async move { h1.acquire(deadline, false).await.map(|l| l.addr()) });
        let t2 = tokio::spawn(async move { h2.acquire(deadline, false).await.map(|l| l.addr()) });
        let first = rx.recv().await.expect("wake");
        assert_eq!(first, WakeRequest { key: key.clone(), held: 1, wake: true });
        // The second hold within the interval sends nothing; the repeat carries the new count.
        let start = Instant::now();
        let second = rx.recv().await.expect("repeat");
        assert!(start.elapsed() >= Duration::from_millis(100), "rate-limited: {:?}", start.elapsed());
        assert_eq!(second, WakeRequest { key: key.clone(), held: 2, wake: true });
        idx.set_endpoints(&key, [addr(7)]);
        assert_eq!(t1.await.expect("join").expect("forwarded"), addr(7));
        assert_eq!(t2.await.expect("join").expect("forwarded"), addr(7));
        assert_eq!(idx.held(&key), 0);
        let last = rx.recv().await.expect("zero");
        assert_eq!(last, WakeRequest { key: key.clone(), held: 0, wake: false });
        // Nothing more while nothing is held.
        assert!(tokio::time::timeout(Duration::from_millis(400), rx.recv()).await.is_err());
    }

    #[tokio::test]
    async fn no_wake_for_stopped_deployments() {
        let (idx, mut rx) = index(IndexConfig::default());
        let key = DeploymentKey::new("ns", "d");
        idx.set_deployment(&key, Some(DeploymentInfo { lifecycle: Lifecycle::Stopped, model_version: None }));
        idx.get(&key).expect("known").request_wake();
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn admitted_requests_may_exceed_the_bound_new_ones_may_not() {
        let (idx, _rx) = index(IndexConfig { max_held: 1, ..Default::default() });
        let key = DeploymentKey::new("ns", "d");
        idx.set_deployment(&key, active());
        let h = idx.get(&key).expect("known");
        let deadline = Instant::now() + Duration::from_secs(10);
        let h1 = h.clone();
        let t1 = tokio::spawn(async move { h1.acquire(deadline, false).await.map(|l| l.addr()) });
        while idx.held(&key) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(matches!(h.acquire(deadline, false).await, Err(GatewayError::QueueFull { max: 1, .. })));
        let h2 = h.clone();
        let t2 = tokio::spawn(async move { h2.acquire(deadline, true).await.map(|l| l.addr()) });
        while idx.held(&key) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        idx.set_endpoints(&key, [addr(9)]);
        assert_eq!(t1.await.expect("join").expect("ok"), addr(9));
        assert_eq!(t2.await.expect("join").expect("ok"), addr(9));
        assert_eq!(idx.held(&key), 0);
    }

    #[tokio::test]
    async fn deleting_a_deployment_fails_its_held_requests() {
        let (idx, _rx) = index(IndexConfig::default());
        let key = DeploymentKey::new("ns", "d");
        idx.set_deployment(&key, active());
        let h = idx.get(&key).expect("known");
        let deadline = Instant::now() + Duration::from_secs(10);
        let t = tokio::spawn(async move { h.acquire(deadline, false).await.map(|l| l.addr()) });
        while idx.held(&key) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        idx.set_deployment(&key, None);
        assert!(matches!(t.await.expect("join"), Err(GatewayError::NotFound(_))));
        assert_eq!(idx.held(&key), 0);
    }
}
