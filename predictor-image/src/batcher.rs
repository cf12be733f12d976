//! The model threads ("lanes") and their bounded queue, with dynamic batching.
//!
//! One dispatcher thread takes images from the queue once a lane is free: the first waiting
//! image, then more until it has `max_batch` images, `max_delay` has passed, or no other request
//! is on its way (a request announces itself with a [`Ticket`] before decoding, so a lone
//! request never waits for company that cannot come). It hands the batch to a lane, a thread
//! with its own copy of the model. A full queue refuses new images at once (the API answers
//! 429 with `Retry-After`) instead of letting latency grow without bound.
//!
//! On a CPU, [`Lanes::Elastic`] keeps two kinds of lanes: a request that arrives alone runs on
//! one copy that spreads its kernels over all cores (lowest latency), while under load every
//! core runs a whole image on its own one-thread copy (highest throughput: one image's kernels
//! split over the cores leave part of them idle).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::backend::{self, Backend, BackendError, Device, Kind, ModelSpec};
use crate::metrics::Metrics;

/// Most cores the elastic setup takes by itself (each is a model copy in memory). A pod with
/// no CPU limit would otherwise load one copy per core of the node; `--threads` sets more.
pub const AUTO_MAX_CORES: usize = 8;

/// How the model threads share the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lanes {
    /// `instances` copies of the model, each on its own thread with `threads` intra-op threads
    /// (0: the runtime's default).
    Fixed {
        /// Model copies.
        instances: usize,
        /// Intra-op threads of each.
        threads: usize,
    },
    /// CPU: one one-thread copy per core for load, and one copy over all `cores` for a request
    /// that arrives alone. Runs one image at a time (no batching).
    Elastic {
        /// Cores to use.
        cores: usize,
    },
}

impl Lanes {
    /// The lanes for `--instances` and `--threads`: explicit instances are taken as given;
    /// `0` (auto) is elastic for ONNX Runtime on a CPU with more than one core (libtorch's
    /// intra-op threads are per process, and a GPU runs one copy), else one copy. `cores` is
    /// what the process may use, at most [`AUTO_MAX_CORES`] unless `--threads` says otherwise.
    pub fn resolve(instances: usize, threads: usize, kind: Kind, device: &Device, cores: usize) -> Lanes {
        let cores = if threads > 0 { threads } else { cores.clamp(1, AUTO_MAX_CORES) };
        match instances {
            0 if kind == Kind::Onnx && *device == Device::Cpu && cores > 1 => Lanes::Elastic { cores },
            0 => Lanes::Fixed { instances: 1, threads },
            n => Lanes::Fixed { instances: n, threads },
        }
    }

    /// The specs of the lanes' models: the latency lane (if any) first.
    fn specs(self, spec: &ModelSpec) -> (Option<ModelSpec>, Vec<ModelSpec>) {
        let with = |threads, spin| ModelSpec { threads, spin, ..spec.clone() };
        match self {
            // One copy keeps the runtime's spinning (lower latency); copies sharing cores must
            // not spin while idle.
            Lanes::Fixed { instances, threads } => {
                (None, (0..instances.max(1)).map(|_| with(threads, instances <= 1)).collect())
            }
            Lanes::Elastic { cores } => (Some(with(cores, true)), (0..cores).map(|_| with(1, false)).collect()),
        }
    }

    /// Lanes that run at once under load.
    fn parallel(self) -> usize {
        match self {
            Lanes::Fixed { instances, .. } => instances.max(1),
            Lanes::Elastic { cores } => cores.max(1),
        }
    }
}

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most images per model run.
    pub max_batch: usize,
    /// Longest time the first image of a batch waits for more.
    pub max_delay: Duration,
    /// Images that may wait (beyond those being run).
    pub queue_capacity: usize,
    /// The model threads.
    pub lanes: Lanes,
}

struct Job {
    input: Vec<f32>,
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
    enqueued: Instant,
}

/// Why an image was not inferred.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The queue is full; try again after this many seconds.
    #[error("the model queue is full")]
    Overloaded {
        /// Suggested wait.
        retry_after: u64,
    },
    /// The model threads have stopped (shutting down).
    #[error("the model is shutting down")]
    Stopped,
    /// The backend failed on the batch.
    #[error("{0}")]
    Failed(String),
}

/// Loads a lane's model (on the lane's thread).
pub type Loader = Arc<dyn Fn(&ModelSpec) -> Result<Box<dyn Backend>, BackendError> + Send + Sync>;

/// Handle to the model threads.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("cfg", &self.shared.cfg).finish()
    }
}

/// What the handles, the dispatcher and the lanes share.
struct Shared {
    /// Images queued and not yet taken.
    depth: AtomicUsize,
    /// Images announced by a [`Ticket`] and not yet queued.
    coming: AtomicUsize,
    /// Mean batch run time in microseconds (for `Retry-After`).
    batch_micros: AtomicU64,
    sched: Mutex<Sched>,
    /// Signalled when a lane is released.
    freed: Condvar,
    cfg: BatchConfig,
    metrics: Metrics,
}

impl Shared {
    fn sched(&self) -> std::sync::MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `f` gives a value, re-trying whenever a lane is released.
    fn wait_for<T>(&self, mut f: impl FnMut(&mut Sched) -> Option<T>) -> T {
        let mut g = self.sched();
        loop {
            if let Some(v) = f(&mut g) {
                return v;
            }
            g = self.freed.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn release(&self, p: Pick) {
        self.sched().release(p);
        self.freed.notify_all();
    }

    /// Images queued or on their way.
    fn waiting(&self) -> usize {
        self.depth.load(Ordering::SeqCst) + self.coming.load(Ordering::SeqCst)
    }
}

/// A request on its way to the queue (decoding); the dispatcher waits for it rather than run a
/// smaller batch. Dropped when the image is queued or the request fails.
pub struct Ticket(Arc<Shared>);

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket")
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.coming.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Which lanes are busy. A lone batch takes the latency lane only when every lane is idle, and
/// then holds them all.
#[derive(Debug)]
struct Sched {
    busy: Vec<bool>,
    latency: bool,
    has_latency: bool,
}

/// Where a batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    Latency,
    Lane(usize),
}

impl Sched {
    fn new(lanes: usize, has_latency: bool) -> Sched {
        Sched { busy: vec![false; lanes], latency: false, has_latency }
    }

    fn free(&self) -> usize {
        if self.latency { 0 } else { self.busy.iter().filter(|b| !**b).count() }
    }

    /// Takes a lane for a batch; `alone`: nothing else is queued or on its way.
    fn take(&mut self, alone: bool) -> Option<Pick> {
        if self.latency {
            return None;
        }
        if alone && self.has_latency && self.busy.iter().all(|b| !*b) {
            self.latency = true;
            return Some(Pick::Latency);
        }
        let i = self.busy.iter().position(|b| !*b)?;
        self.busy[i] = true;
        Some(Pick::Lane(i))
    }

    fn release(&mut self, p: Pick) {
        match p {
            Pick::Latency => self.latency = false,
            Pick::Lane(i) => self.busy[i] = false,
        }
    }
}

impl Batcher {
    /// Starts the lanes of `cfg` with the backends of [`backend::load`]. Each lane loads the
    /// model and warms it up (a batch of one and a full batch) before taking work; the returned
    /// receiver resolves once all are ready, or with the first load error.
    pub fn start(
        spec: ModelSpec,
        cfg: BatchConfig,
        metrics: Metrics,
    ) -> (Batcher, oneshot::Receiver<Result<&'static str, BackendError>>) {
        Batcher::start_with(spec, cfg, metrics, Arc::new(backend::load))
    }

    /// [`Batcher::start`] with another loader.
    pub fn start_with(
        spec: ModelSpec,
        mut cfg: BatchConfig,
        metrics: Metrics,
        loader: Loader,
    ) -> (Batcher, oneshot::Receiver<Result<&'static str, BackendError>>) {
        if !spec.info.dynamic {
            // A fixed-batch artifact runs exactly its batch size (padded).
            cfg.max_batch = spec.info.batch.max(1) as usize;
        }
        if matches!(cfg.lanes, Lanes::Elastic { .. }) {
            // Each core runs one image: larger batches on one core only stall the pipeline
            // (decoding waits while a core works through its batch).
            cfg.max_batch = 1;
        }
        cfg.max_batch = cfg.max_batch.max(1);
        let (tx, rx) = sync_channel::<Job>(cfg.queue_capacity.max(1));
        let (ready_tx, ready_rx) = oneshot::channel();
        let (latency_spec, lane_specs) = cfg.lanes.specs(&spec);
        let sched = Mutex::new(Sched::new(lane_specs.len(), latency_spec.is_some()));
        let shared = Arc::new(Shared {
            depth: AtomicUsize::new(0),
            coming: AtomicUsize::new(0),
            batch_micros: AtomicU64::new(0),
            sched,
            freed: Condvar::new(),
            cfg,
            metrics,
        });
        let remaining = Arc::new(AtomicUsize::new(lane_specs.len() + usize::from(latency_spec.is_some())));
        let ready = Arc::new(Mutex::new(Some(ready_tx)));
        let report = {
            let (ready, remaining) = (ready.clone(), remaining.clone());
            move |r: Result<&'static str, BackendError>| {
                let mut g = ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if (r.is_err() || remaining.fetch_sub(1, Ordering::SeqCst) == 1)
                    && let Some(tx) = g.take()
                {
                    let _ = tx.send(r);
                }
            }
        };
        let mut latency_tx = None;
        let mut lane_txs = Vec::new();
        let all = latency_spec
            .into_iter()
            .map(|s| (Pick::Latency, s))
            .chain(lane_specs.into_iter().enumerate().map(|(i, s)| (Pick::Lane(i), s)));
        for (pick, lane_spec) in all {
            let (btx, brx) = sync_channel::<Vec<Job>>(1);
            match pick {
                Pick::Latency => latency_tx = Some(btx),
                Pick::Lane(_) => lane_txs.push(btx),
            }
            let (loader, lane_report, shared) = (loader.clone(), report.clone(), shared.clone());
            let name = match pick {
                Pick::Latency => "model-all-cores".to_string(),
                Pick::Lane(i) => format!("model-{i}"),
            };
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                let report = lane_report;
                let mut model = match loader(&lane_spec) {
                    Ok(m) => m,
                    Err(e) => return report(Err(e)),
                };
                let one = vec![0.0; lane_spec.input_len()];
                let full = vec![0.0; lane_spec.input_len() * cfg.max_batch];
                if let Err(e) = model.run(&one, 1).and_then(|_| model.run(&full, cfg.max_batch)) {
                    return report(Err(e));
                }
                report(Ok(model.name()));
                lane(model.as_mut(), &lane_spec, &brx, pick, &shared);
            });
            if let Err(e) = spawned {
                report(Err(BackendError::Load(format!("cannot start a model thread: {e}"))));
            }
        }
        let s = shared.clone();
        let spawned =
            std::thread::Builder::new().name("batcher".into()).spawn(move || dispatch(&rx, latency_tx, &lane_txs, &s));
        if let Err(e) = spawned {
            report(Err(BackendError::Load(format!("cannot start the batching thread: {e}"))));
        }
        (Batcher { tx, shared }, ready_rx)
    }

    /// Images waiting now.
    pub fn depth(&self) -> usize {
        self.shared.depth.load(Ordering::SeqCst)
    }

    /// The effective batching settings.
    pub fn config(&self) -> BatchConfig {
        self.shared.cfg
    }

    /// Announces an image that will be queued soon (see [`Ticket`]).
    pub fn ticket(&self) -> Ticket {
        self.shared.coming.fetch_add(1, Ordering::SeqCst);
        Ticket(self.shared.clone())
    }

    /// Queues one preprocessed image and waits for its output.
    pub async fn infer(&self, ticket: Ticket, input: Vec<f32>) -> Result<Vec<f32>, InferError> {
        let (reply, rx) = oneshot::channel();
        // Counted as queued before it stops counting as coming: the dispatcher never sees neither.
        let s = &self.shared;
        s.depth.fetch_add(1, Ordering::SeqCst);
        drop(ticket);
        match self.tx.try_send(Job { input, reply, enqueued: Instant::now() }) {
            Ok(()) => s.metrics.queue_depth.set(self.depth() as i64),
            Err(TrySendError::Full(_)) => {
                s.depth.fetch_sub(1, Ordering::SeqCst);
                s.metrics.rejected.inc();
                return Err(InferError::Overloaded { retry_after: self.retry_after() });
            }
            Err(TrySendError::Disconnected(_)) => {
                s.depth.fetch_sub(1, Ordering::SeqCst);
                return Err(InferError::Stopped);
            }
        }
        match rx.await {
            Ok(r) => r.map_err(InferError::Failed),
            Err(_) => Err(InferError::Stopped),
        }
    }

    /// Seconds until the queue has likely drained (at least 1).
    fn retry_after(&self) -> u64 {
        let cfg = &self.shared.cfg;
        let per_batch = self.shared.batch_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let batches = self.depth() as f64 / (cfg.max_batch * cfg.lanes.parallel()) as f64;
        (per_batch * batches).ceil().max(1.0) as u64
    }
}

/// The dispatcher: waits for a free lane, collects a batch, hands it over.
fn dispatch(rx: &Receiver<Job>, latency: Option<SyncSender<Vec<Job>>>, lanes: &[SyncSender<Vec<Job>>], s: &Shared) {
    let (cfg, metrics) = (&s.cfg, &s.metrics);
    loop {
        // A free lane first, so that the batch takes in what waits meanwhile.
        let free = s.wait_for(|g| Some(g.free()).filter(|n| *n > 0));
        let Ok(first) = rx.recv() else { return };
        // Spread what waits over the free lanes rather than stack it on one.
        let want = cfg.max_batch.min(s.waiting().div_ceil(free).max(1));
        let mut jobs = vec![first];
        let deadline = Instant::now() + cfg.max_delay;
        while jobs.len() < want {
            match rx.try_recv() {
                Ok(j) => {
                    jobs.push(j);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            // Nothing queued: wait only for requests already on their way.
            let left = deadline.saturating_duration_since(Instant::now());
            if s.coming.load(Ordering::SeqCst) == 0 || left.is_zero() {
                break;
            }
            match rx.recv_timeout(left.min(Duration::from_millis(1))) {
                Ok(j) => jobs.push(j),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        s.depth.fetch_sub(jobs.len(), Ordering::SeqCst);
        metrics.queue_depth.set(s.depth.load(Ordering::SeqCst) as i64);
        // Clients that went away are not computed.
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if jobs.is_empty() {
            continue;
        }
        // Alone: nothing queued or announced, and no other request in the server (one still
        // being received is not announced yet, and the cores it needs are the latency lane's).
        let alone = s.waiting() == 0 && metrics.inflight.get() <= jobs.len() as i64;
        let pick = s.wait_for(|g| g.take(alone));
        let to = match pick {
            Pick::Latency => latency.as_ref(),
            Pick::Lane(i) => lanes.get(i),
        };
        if let Some(Err(e)) = to.map(|t| t.send(jobs)) {
            // The lane's thread has died (its load failed): answer, free the lane, go on.
            for j in e.0 {
                let _ = j.reply.send(Err("the model thread is not running".into()));
            }
            s.release(pick);
        }
    }
}

/// A lane: runs the batches handed to it.
fn lane(model: &mut dyn Backend, spec: &ModelSpec, rx: &Receiver<Vec<Job>>, pick: Pick, s: &Shared) {
    let (cfg, metrics, micros) = (&s.cfg, &s.metrics, &s.batch_micros);
    let per_in = spec.input_len();
    let per_out = spec.output_len();
    while let Ok(jobs) = rx.recv() {
        let n = jobs.len();
        let run_n = if spec.info.dynamic { n } else { cfg.max_batch };
        for j in &jobs {
            metrics.queue_seconds.observe(j.enqueued.elapsed().as_secs_f64());
        }
        let (input, replies): (Vec<Vec<f32>>, Vec<_>) = jobs.into_iter().map(|j| (j.input, j.reply)).unzip();
        let input = if n == 1 && run_n == 1 {
            input.into_iter().next().unwrap_or_default()
        } else {
            let mut x = Vec::with_capacity(per_in * run_n);
            input.iter().for_each(|i| x.extend_from_slice(i));
            x.resize(per_in * run_n, 0.0);
            x
        };
        let start = Instant::now();
        let result = model.run(&input, run_n);
        let took = start.elapsed();
        s.release(pick);
        metrics.inference_seconds.observe(took.as_secs_f64());
        metrics.batch_size.observe(n as f64);
        metrics.runs.with_label_values(&[if pick == Pick::Latency { "latency" } else { "throughput" }]).inc();
        let prev = micros.load(Ordering::Relaxed);
        let now = took.as_micros() as u64;
        micros.store(if prev == 0 { now } else { (prev * 7 + now) / 8 }, Ordering::Relaxed);
        match result {
            Ok(mut out) => {
                metrics.images.inc_by(n as u64);
                if n == 1 {
                    out.truncate(per_out);
                    replies.into_iter().for_each(|r| {
                        let _ = r.send(Ok(std::mem::take(&mut out)));
                    });
                } else {
                    for (i, r) in replies.into_iter().enumerate() {
                        let _ = r.send(Ok(out[i * per_out..(i + 1) * per_out].to_vec()));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = n, "model run failed");
                for r in replies {
                    let _ = r.send(Err(e.to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocellus_vision::ModelInfo;

    /// A backend that sleeps, records what ran where, and answers each image with its first
    /// input value (so answers can be matched to requests).
    struct Recorder {
        threads: usize,
        log: Arc<Mutex<Vec<(usize, usize)>>>,
        in_use: Arc<AtomicUsize>,
        most_in_use: Arc<AtomicUsize>,
    }

    impl Backend for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn run(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
            let now = self.in_use.fetch_add(self.threads, Ordering::SeqCst) + self.threads;
            self.most_in_use.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            self.in_use.fetch_sub(self.threads, Ordering::SeqCst);
            self.log.lock().expect("log").push((self.threads, n));
            let per = input.len() / n;
            Ok((0..n).flat_map(|i| [input[i * per], 0.0]).collect())
        }
    }

    struct Setup {
        batcher: Batcher,
        log: Arc<Mutex<Vec<(usize, usize)>>>,
        most_in_use: Arc<AtomicUsize>,
    }

    async fn setup(lanes: Lanes, max_batch: usize, max_delay: Duration) -> Setup {
        let info = ModelInfo {
            architecture: "t-cls".into(),
            task: "classify".into(),
            names: vec!["a".into(), "b".into()],
            imgsz: 4,
            format: "onnx".into(),
            sha256: None,
            batch: 1,
            dynamic: true,
            half: false,
            end2end: None,
            quantization: None,
        };
        let spec =
            ModelSpec { path: "unused".into(), info, kind: Kind::Onnx, device: Device::Cpu, threads: 0, spin: true };
        let (log, in_use, most_in_use) =
            (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (l, u, m) = (log.clone(), in_use.clone(), most_in_use.clone());
        let loader: Loader = Arc::new(move |s: &ModelSpec| {
            Ok(Box::new(Recorder { threads: s.threads, log: l.clone(), in_use: u.clone(), most_in_use: m.clone() })
                as Box<dyn Backend>)
        });
        let cfg = BatchConfig { max_batch, max_delay, queue_capacity: 64, lanes };
        let (batcher, ready) = Batcher::start_with(spec, cfg, Metrics::new().expect("metrics"), loader);
        ready.await.expect("ready").expect("loaded");
        log.lock().expect("log").clear();
        most_in_use.store(0, Ordering::SeqCst);
        Setup { batcher, log, most_in_use }
    }

    fn image(v: f32) -> Vec<f32> {
        vec![v; 3 * 4 * 4]
    }

    #[test]
    fn lanes_follow_the_backend_and_device() {
        assert_eq!(Lanes::resolve(0, 0, Kind::Onnx, &Device::Cpu, 4), Lanes::Elastic { cores: 4 });
        assert_eq!(Lanes::resolve(0, 2, Kind::Onnx, &Device::Cpu, 8), Lanes::Elastic { cores: 2 });
        assert_eq!(Lanes::resolve(0, 0, Kind::Onnx, &Device::Cpu, 96), Lanes::Elastic { cores: AUTO_MAX_CORES });
        assert_eq!(Lanes::resolve(0, 16, Kind::Onnx, &Device::Cpu, 96), Lanes::Elastic { cores: 16 });
        assert_eq!(Lanes::resolve(0, 0, Kind::Onnx, &Device::Cpu, 1), Lanes::Fixed { instances: 1, threads: 0 });
        assert_eq!(Lanes::resolve(0, 0, Kind::Onnx, &Device::Cuda(0), 8), Lanes::Fixed { instances: 1, threads: 0 });
        assert_eq!(Lanes::resolve(0, 0, Kind::Torch, &Device::Cpu, 8), Lanes::Fixed { instances: 1, threads: 0 });
        assert_eq!(Lanes::resolve(3, 1, Kind::Onnx, &Device::Cpu, 8), Lanes::Fixed { instances: 3, threads: 1 });
    }

    #[test]
    fn the_latency_lane_takes_every_core() {
        let mut s = Sched::new(2, true);
        assert_eq!(s.take(false), Some(Pick::Lane(0)));
        assert_eq!(s.take(true), Some(Pick::Lane(1)), "a lone batch while a lane runs takes a one-core lane");
        assert_eq!(s.take(true), None);
        s.release(Pick::Lane(0));
        s.release(Pick::Lane(1));
        assert_eq!(s.take(true), Some(Pick::Latency));
        assert_eq!((s.free(), s.take(false)), (0, None), "nothing runs beside the latency lane");
        s.release(Pick::Latency);
        assert_eq!(Sched::new(1, false).take(true), Some(Pick::Lane(0)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_lone_request_runs_over_all_cores_at_once() {
        let s = setup(Lanes::Elastic { cores: 2 }, 8, Duration::from_secs(30)).await;
        for v in [1.0, 2.0, 3.0] {
            let started = Instant::now();
            let out = s.batcher.infer(s.batcher.ticket(), image(v)).await.expect("infer");
            assert_eq!(out, vec![v, 0.0]);
            assert!(started.elapsed() < Duration::from_secs(30), "a lone request waited for the batch delay");
        }
        assert_eq!(*s.log.lock().expect("log"), vec![(2, 1); 3], "(threads, batch) of each run");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn load_runs_on_one_thread_lanes_without_oversubscribing() {
        let s = setup(Lanes::Elastic { cores: 2 }, 1, Duration::ZERO).await;
        let tickets: Vec<Ticket> = (0..12).map(|_| s.batcher.ticket()).collect();
        let outs = futures::future::join_all(
            tickets.into_iter().enumerate().map(|(i, t)| s.batcher.infer(t, image(i as f32))),
        )
        .await;
        for (i, o) in outs.into_iter().enumerate() {
            assert_eq!(o.expect("infer"), vec![i as f32, 0.0]);
        }
        let log = s.log.lock().expect("log").clone();
        assert_eq!(log.len(), 12);
        assert!(log.iter().filter(|r| r.0 == 1).count() >= 10, "runs under load: {log:?}");
        assert!(s.most_in_use.load(Ordering::SeqCst) <= 2, "more threads than cores ran at once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn announced_requests_are_batched() {
        let s = setup(Lanes::Fixed { instances: 1, threads: 0 }, 4, Duration::from_secs(30)).await;
        let tickets: Vec<Ticket> = (0..4).map(|_| s.batcher.ticket()).collect();
        let outs = futures::future::join_all(
            tickets.into_iter().enumerate().map(|(i, t)| s.batcher.infer(t, image(i as f32))),
        )
        .await;
        assert!(outs.iter().enumerate().all(|(i, o)| o.as_ref().ok() == Some(&vec![i as f32, 0.0])));
        assert_eq!(*s.log.lock().expect("log"), vec![(0, 4)], "one batch of four");
    }
}
