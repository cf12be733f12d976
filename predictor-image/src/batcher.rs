//! The model threads and their bounded queue, with dynamic batching: a thread takes the first
//! waiting image, then keeps collecting until it has `max_batch` images or `max_delay` has passed,
//! and runs them as one batch. A full queue refuses new images at once (the API answers 429 with
//! `Retry-After`) instead of letting latency grow without bound.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::backend::{self, BackendError, ModelSpec};
use crate::metrics::Metrics;

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most images per model run.
    pub max_batch: usize,
    /// Longest time the first image of a batch waits for more.
    pub max_delay: Duration,
    /// Images that may wait (beyond those being run).
    pub queue_capacity: usize,
    /// Model threads, each with its own copy of the model.
    pub instances: usize,
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

/// Handle to the model threads.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    /// Mean batch run time in microseconds (for `Retry-After`).
    batch_micros: Arc<AtomicU64>,
    cfg: BatchConfig,
    metrics: Metrics,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("cfg", &self.cfg).finish()
    }
}

impl Batcher {
    /// Starts `cfg.instances` model threads. Each loads the model and warms it up (a batch of one
    /// and a full batch) before taking work; the returned receiver resolves once all are ready,
    /// or with the first load error.
    pub fn start(spec: ModelSpec, mut cfg: BatchConfig, metrics: Metrics) -> (Batcher, oneshot::Receiver<Result<&'static str, BackendError>>) {
        if !spec.info.dynamic {
            // A fixed-batch artifact runs exactly its batch size (padded).
            cfg.max_batch = spec.info.batch.max(1) as usize;
        }
        cfg.max_batch = cfg.max_batch.max(1);
        let (tx, rx) = sync_channel::<Job>(cfg.queue_capacity.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        let batch_micros = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = oneshot::channel();
        let remaining = Arc::new(AtomicUsize::new(cfg.instances.max(1)));
        let ready_tx = Arc::new(Mutex::new(Some(ready_tx)));
        for i in 0..cfg.instances.max(1) {
            let (spec, rx, depth, micros, metrics) = (spec.clone(), rx.clone(), depth.clone(), batch_micros.clone(), metrics.clone());
            let (ready, remaining) = (ready_tx.clone(), remaining.clone());
            let spawned = std::thread::Builder::new().name(format!("model-{i}")).spawn(move || {
                let report = |r: Result<&'static str, BackendError>| {
                    if let Ok(mut g) = ready.lock() {
                        if r.is_err() || remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
                            if let Some(tx) = g.take() {
                                let _ = tx.send(r);
                            }
                        }
                    }
                };
                let mut model = match backend::load(&spec) {
                    Ok(m) => m,
                    Err(e) => return report(Err(e)),
                };
                let one = vec![0.0; spec.input_len()];
                let full = vec![0.0; spec.input_len() * cfg.max_batch];
                if let Err(e) = model.run(&one, 1).and_then(|_| model.run(&full, cfg.max_batch)) {
                    return report(Err(e));
                }
                report(Ok(model.name()));
                worker(model.as_mut(), &spec, &cfg, &rx, &depth, &micros, &metrics);
            });
            if let Err(e) = spawned {
                if let Ok(mut g) = ready_tx.lock() {
                    if let Some(tx) = g.take() {
                        let _ = tx.send(Err(BackendError::Load(format!("cannot start a model thread: {e}"))));
                    }
                }
            }
        }
        (Batcher { tx, depth, batch_micros, cfg, metrics }, ready_rx)
    }

    /// Images waiting now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// The effective batching settings.
    pub fn config(&self) -> BatchConfig {
        self.cfg
    }

    /// Queues one preprocessed image and waits for its output.
    pub async fn infer(&self, input: Vec<f32>) -> Result<Vec<f32>, InferError> {
        let (reply, rx) = oneshot::channel();
        self.depth.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(Job { input, reply, enqueued: Instant::now() }) {
            Ok(()) => self.metrics.queue_depth.set(self.depth() as i64),
            Err(TrySendError::Full(_)) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                self.metrics.rejected.inc();
                return Err(InferError::Overloaded { retry_after: self.retry_after() });
            }
            Err(TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
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
        let per_batch = self.batch_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let batches = self.depth() as f64 / (self.cfg.max_batch * self.cfg.instances.max(1)) as f64;
        (per_batch * batches).ceil().max(1.0) as u64
    }
}

fn worker(model: &mut dyn backend::Backend, spec: &ModelSpec, cfg: &BatchConfig, rx: &Mutex<Receiver<Job>>, depth: &AtomicUsize, micros: &AtomicU64, metrics: &Metrics) {
    let per_in = spec.input_len();
    let per_out = spec.output_len();
    loop {
        // Collect a batch while holding the receiver; other instances wait for the next one.
        let jobs = {
            let Ok(rx) = rx.lock() else { return };
            let Ok(first) = rx.recv() else { return };
            let mut jobs = vec![first];
            let deadline = Instant::now() + cfg.max_delay;
            while jobs.len() < cfg.max_batch {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(j) => jobs.push(j),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            jobs
        };
        depth.fetch_sub(jobs.len(), Ordering::SeqCst);
        metrics.queue_depth.set(depth.load(Ordering::SeqCst) as i64);
        // Clients that went away are not computed.
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if jobs.is_empty() {
            continue;
        }
        let n = jobs.len();
        let run_n = if spec.info.dynamic { n } else { cfg.max_batch };
        let mut input = Vec::with_capacity(per_in * run_n);
        for j in &jobs {
            metrics.queue_seconds.observe(j.enqueued.elapsed().as_secs_f64());
            input.extend_from_slice(&j.input);
        }
        input.resize(per_in * run_n, 0.0);
        let start = Instant::now();
        let result = model.run(&input, run_n);
        let took = start.elapsed();
        metrics.inference_seconds.observe(took.as_secs_f64());
        metrics.batch_size.observe(n as f64);
        let prev = micros.load(Ordering::Relaxed);
        let now = took.as_micros() as u64;
        micros.store(if prev == 0 { now } else { (prev * 7 + now) / 8 }, Ordering::Relaxed);
        match result {
            Ok(out) => {
                metrics.images.inc_by(n as u64);
                for (i, j) in jobs.into_iter().enumerate() {
                    let _ = j.reply.send(Ok(out[i * per_out..(i + 1) * per_out].to_vec()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = n, "model run failed");
                for j in jobs {
                    let _ = j.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}
