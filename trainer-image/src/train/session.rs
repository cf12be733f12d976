//! A resumable detector training run. AdamW and SGD are implemented here (not with `tch`'s
//! optimisers) so that their state can be checkpointed: a checkpoint holds the model, the EMA, the moments and
//! the position in the schedule, and a resumed run continues exactly where the paused one was.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use super::data::{Augment, Rng, Sample, epoch_batches};
use super::task::TaskModel;
use super::{Ema, EpochReport, Optimizer, TrainConfig, batch_tensor, lr_factor};
use crate::error::TrainError;
use crate::model::{Architecture, Classifier, Detector, ModelKind};

/// Where a run is in its schedule (the JSON half of a checkpoint).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// Architecture name.
    pub architecture: String,
    /// Classes.
    pub nc: i64,
    /// Epoch to continue (0-based).
    pub epoch: usize,
    /// Batches of that epoch already done.
    pub batch: usize,
    /// Batches done in total.
    pub iteration: usize,
    /// Optimiser steps taken.
    pub steps: u64,
    /// EMA updates.
    pub ema_updates: f64,
    /// Shuffle RNG state at the start of `epoch`.
    pub rng: u64,
    /// Loss sums and images of the unfinished epoch.
    pub sums: [f64; 3],
    /// Images seen in the unfinished epoch.
    pub seen: usize,
    /// Reports of finished epochs.
    pub reports: Vec<EpochReport>,
    /// Best mAP50-95 so far.
    pub best_fitness: f64,
    /// Dynamic loss scale (mixed precision; 0 when unused).
    #[serde(default)]
    pub loss_scale: f64,
    /// Optimiser steps since the loss scale last changed.
    #[serde(default)]
    pub scale_steps: u64,
    /// `iteration` at the last optimiser step (0 before the first).
    #[serde(default)]
    pub last_step_iteration: usize,
}

/// Warm-up length in iterations, as Ultralytics 8.4 (`_get_warmup_iterations`): `warmup_epochs`
/// of `batches` each, at most all epochs but the last, rounded half to even; 0 disables it.
pub fn warmup_iterations(warmup_epochs: f64, epochs: usize, batches: usize) -> usize {
    let w = warmup_epochs.min(epochs.saturating_sub(1) as f64);
    if w > 0.0 { (w * batches as f64).round_ties_even() as usize } else { 0 }
}

/// Batches whose gradients one optimiser step takes at iteration `it` (0-based): `accumulate`,
/// except during warm-up, where Ultralytics ramps it from 1 (a step every batch) up to
/// `accumulate` at `warmup_iters` (numpy's interp, then round half to even).
pub fn accumulate_at(it: usize, warmup_iters: usize, accumulate: usize) -> usize {
    if warmup_iters == 0 || it > warmup_iters {
        return accumulate;
    }
    let x = 1.0 + (accumulate as f64 - 1.0) * it as f64 / warmup_iters as f64;
    (x.round_ties_even() as usize).max(1)
}

/// What [`Session::init_from`] took from the starting weights.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FineTune {
    /// Variables loaded.
    pub loaded: usize,
    /// Variables left at their fresh initialisation (absent, or of another shape: e.g. the
    /// classification layers when the class count differs).
    pub reinitialized: Vec<String>,
}

/// Initial dynamic loss scale (as PyTorch's GradScaler).
const INITIAL_LOSS_SCALE: f64 = 65536.0;
/// Clean steps before the loss scale doubles.
const SCALE_GROWTH_INTERVAL: u64 = 2000;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All epochs done.
    Finished,
    /// Stopped on request after finishing a step; checkpoint and resume.
    Paused,
    /// Stopped early: `patience` epochs without a better fitness.
    EarlyStopped,
}

/// The network a session trains.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "one per session")]
pub enum Net {
    /// A detector (TAL + CIoU + DFL + BCE loss; mAP validation).
    Detect(Detector),
    /// A classifier (cross-entropy; top-1/top-5 validation).
    Classify(Classifier),
}

impl Net {
    fn new(p: &tch::nn::Path, arch: &Architecture, nc: i64) -> Net {
        match arch.kind {
            ModelKind::Detect => Net::Detect(Detector::new(p, arch, nc)),
            ModelKind::Classify => Net::Classify(Classifier::new(p, arch, nc)),
        }
    }

    /// The task behind the network: loss, validation, augmentation.
    fn task(&self) -> &dyn TaskModel {
        match self {
            Net::Detect(m) => m,
            Net::Classify(m) => m,
        }
    }
}

/// A training run.
pub struct Session {
    arch_name: String,
    vs: VarStore,
    model: Net,
    ema: Ema,
    ema_model: Net,
    names: Vec<String>,
    m: HashMap<String, Tensor>,
    v: HashMap<String, Tensor>,
    /// Position in the schedule.
    pub progress: Progress,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("progress", &self.progress).finish()
    }
}

const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;
/// SGD momentum at the start of warm-up (Ultralytics' `warmup_momentum`).
const WARMUP_MOMENTUM: f64 = 0.8;

impl Session {
    /// A fresh run (seeded).
    pub fn new(arch: &Architecture, nc: i64, cfg: &TrainConfig) -> Result<Session, TrainError> {
        tch::manual_seed(cfg.seed as i64);
        let vs = VarStore::new(cfg.device);
        let model = Net::new(&(vs.root() / "model"), arch, nc);
        let ema_vs = VarStore::new(cfg.device);
        let ema_model = Net::new(&(ema_vs.root() / "model"), arch, nc);
        let ema = Ema::new(ema_vs, &vs)?;
        let vars = vs.variables();
        let mut names: Vec<String> = vars.iter().filter(|(_, t)| t.requires_grad()).map(|(k, _)| k.clone()).collect();
        names.sort();
        let m = names.iter().map(|n| (n.clone(), vars[n].zeros_like())).collect();
        let v = names.iter().map(|n| (n.clone(), vars[n].zeros_like())).collect();
        let arch_name = format!("yolov8{}{}", arch.letter, if arch.kind == ModelKind::Classify { "-cls" } else { "" });
        let progress = Progress {
            architecture: arch_name.clone(),
            nc,
            epoch: 0,
            batch: 0,
            iteration: 0,
            steps: 0,
            ema_updates: 0.0,
            rng: Rng::new(cfg.seed).state(),
            sums: [0.0; 3],
            seen: 0,
            reports: vec![],
            best_fitness: -1.0,
            loss_scale: if cfg.amp { INITIAL_LOSS_SCALE } else { 0.0 },
            scale_steps: 0,
            last_step_iteration: 0,
        };
        Ok(Session { arch_name, vs, model, ema, ema_model, names, m, v, progress })
    }

    /// Writes the tensors of a checkpoint (model, EMA, moments) to `path` (safetensors); the
    /// matching [`Progress`] is `self.progress`.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let mut list: Vec<(String, Tensor)> = Vec::new();
        for (k, t) in self.vs.variables() {
            list.push((format!("model/{k}"), t));
        }
        for (k, t) in self.ema.vs.variables() {
            list.push((format!("ema/{k}"), t));
        }
        for n in &self.names {
            list.push((format!("adam_m/{n}"), self.m[n].shallow_clone()));
            list.push((format!("adam_v/{n}"), self.v[n].shallow_clone()));
        }
        list.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Tensor::write_safetensors(&list, path)?)
    }

    /// Restores a checkpoint written by [`Session::save`].
    pub fn load(
        arch: &Architecture,
        cfg: &TrainConfig,
        progress: Progress,
        path: &Path,
    ) -> Result<Session, TrainError> {
        let mut s = Session::new(arch, progress.nc, cfg)?;
        if s.arch_name != progress.architecture {
            return Err(TrainError::Checkpoint(format!("it is for {}, not {}", progress.architecture, s.arch_name)));
        }
        let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
        let lacks = |name: String| TrainError::Checkpoint(format!("it lacks {name}"));
        let restore = |vars: HashMap<String, Tensor>, prefix: &str| -> Result<(), TrainError> {
            for (k, t) in vars {
                let src = tensors.get(&format!("{prefix}/{k}")).ok_or_else(|| lacks(format!("{prefix}/{k}")))?;
                tch::no_grad(|| t.shallow_clone().copy_(src));
            }
            Ok(())
        };
        restore(s.vs.variables(), "model")?;
        restore(s.ema.vs.variables(), "ema")?;
        for n in s.names.clone() {
            for (prefix, map) in [("adam_m", &mut s.m), ("adam_v", &mut s.v)] {
                let src = tensors.get(&format!("{prefix}/{n}")).ok_or_else(|| lacks(format!("{prefix}/{n}")))?;
                map.insert(n.clone(), src.to_device(cfg.device));
            }
        }
        s.ema.set_updates(progress.ema_updates);
        s.progress = progress;
        Ok(s)
    }

    /// Starts from trained weights (`weights/*.safetensors`, or a checkpoint's `ema/` tensors):
    /// every variable with the same name and shape is copied (model and EMA); the others keep
    /// their fresh initialisation, so a different class count re-initialises the class layers.
    pub fn init_from(&mut self, path: &Path) -> Result<FineTune, TrainError> {
        let tensors: HashMap<String, Tensor> =
            Tensor::read_safetensors(path).map_err(|e| TrainError::StartWeights(e.to_string()))?.into_iter().collect();
        let find = |k: &str| tensors.get(&format!("ema/{k}")).or_else(|| tensors.get(k));
        let mut report = FineTune { loaded: 0, reinitialized: vec![] };
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, t) in vars {
            match find(&k) {
                Some(src) if src.size() == t.size() => {
                    tch::no_grad(|| t.shallow_clone().copy_(src));
                    report.loaded += 1;
                }
                _ => report.reinitialized.push(k),
            }
        }
        if report.loaded == 0 {
            return Err(TrainError::StartWeights(format!(
                "they share no variable with {}: not a checkpoint of this architecture",
                self.arch_name
            )));
        }
        self.ema.vs.copy(&self.vs)?;
        Ok(report)
    }

    /// Trains a fresh session to its last epoch (no pause): the EMA weights and model, and one
    /// report per epoch. `detect::train` and `classify::train` take their model from it.
    pub fn train_to_end(
        arch: &Architecture,
        nc: i64,
        train: Vec<Sample>,
        val: Vec<Sample>,
        cfg: &TrainConfig,
        on_epoch: &mut dyn FnMut(&EpochReport),
    ) -> Result<(VarStore, Net, Vec<EpochReport>), TrainError> {
        let mut s = Session::new(arch, nc, cfg)?;
        let never = AtomicBool::new(false);
        s.run(Arc::new(train), Arc::new(val), cfg, &never, &mut |r, _| on_epoch(r))?;
        Ok(s.into_ema())
    }

    /// The EMA weights and model, and the reports (consumes the run).
    pub fn into_ema(self) -> (VarStore, Net, Vec<EpochReport>) {
        (self.ema.vs, self.ema_model, self.progress.reports)
    }

    /// The EMA weights (what `weights/*.safetensors` hold).
    pub fn ema_var_store(&self) -> &VarStore {
        &self.ema.vs
    }

    /// Unscales (mixed precision), clips to norm 10 and applies the optimiser, then zeroes the
    /// grads. AdamW decays convolution weights decoupled; SGD (Nesterov) adds L2 decay to their
    /// gradients; batch-norm and bias parameters are not decayed. Biases use `lr_bias`. With loss
    /// scaling, a step whose gradients overflowed is skipped and the scale halved.
    fn step(&mut self, cfg: &TrainConfig, lr: f64, lr_bias: f64, wd: f64, momentum: f64) {
        let vars = self.vs.variables();
        let scale = if self.progress.loss_scale > 0.0 { self.progress.loss_scale } else { 1.0 };
        let skipped = tch::no_grad(|| {
            let grads: Vec<(String, Tensor)> = self
                .names
                .iter()
                .filter_map(|n| {
                    let g = vars[n].grad();
                    g.defined().then(|| (n.clone(), g))
                })
                .collect();
            let sq = grads.iter().map(|(_, g)| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>();
            let norm = sq.sqrt() / scale;
            if !norm.is_finite() {
                for (_, g) in &grads {
                    let _ = g.shallow_clone().zero_();
                }
                return true;
            }
            self.progress.steps += 1;
            let t = self.progress.steps as f64;
            let clip = if norm > 10.0 { 10.0 / (norm + 1e-6) } else { 1.0 };
            for (n, g) in grads {
                let p = &vars[&n];
                let g = &g * (clip / scale);
                let step_lr = if n.ends_with(".bias") { lr_bias } else { lr };
                match cfg.optimizer {
                    Optimizer::AdamW => {
                        // beta1 is the momentum, as Ultralytics' `AdamW(betas=(momentum, 0.999))`.
                        let beta1 = cfg.momentum;
                        let m = self.m.get_mut(&n).expect("moment");
                        let _ = m.g_mul_scalar_(beta1).g_add_(&(&g * (1.0 - beta1)));
                        let v = self.v.get_mut(&n).expect("moment");
                        let _ = v.g_mul_scalar_(BETA2).g_add_(&(g.square() * (1.0 - BETA2)));
                        let mhat = &self.m[&n] / (1.0 - beta1.powf(t));
                        let vhat = &self.v[&n] / (1.0 - BETA2.powf(t));
                        if p.dim() == 4 {
                            let _ = p.shallow_clone().g_mul_scalar_(1.0 - lr * wd);
                        }
                        let _ = p.shallow_clone().g_sub_(&(mhat / (vhat.sqrt() + ADAM_EPS) * step_lr));
                    }
                    Optimizer::Sgd => {
                        let g = if p.dim() == 4 { g + p * wd } else { g };
                        let buf = self.m.get_mut(&n).expect("momentum buffer");
                        let _ = buf.g_mul_scalar_(momentum).g_add_(&g);
                        let update = g + &self.m[&n] * momentum;
                        let _ = p.shallow_clone().g_sub_(&(update * step_lr));
                    }
                }
                let _ = p.grad().zero_();
            }
            false
        });
        if self.progress.loss_scale > 0.0 {
            if skipped {
                self.progress.loss_scale = (self.progress.loss_scale / 2.0).max(1.0);
                self.progress.scale_steps = 0;
                return;
            }
            self.progress.scale_steps += 1;
            if self.progress.scale_steps >= SCALE_GROWTH_INTERVAL {
                self.progress.loss_scale *= 2.0;
                self.progress.scale_steps = 0;
            }
        }
        if !skipped {
            self.ema.update(&self.vs);
            self.progress.ema_updates = self.ema.updates();
        }
    }

    /// Trains until the last epoch or until `stop` is set (checked after every batch).
    /// `on_epoch` gets each finished epoch's report and whether it is the best so far.
    pub fn run(
        &mut self,
        train: Arc<Vec<Sample>>,
        val: Arc<Vec<Sample>>,
        cfg: &TrainConfig,
        stop: &AtomicBool,
        on_epoch: &mut dyn FnMut(&EpochReport, bool),
    ) -> Result<Outcome, TrainError> {
        self.run_with(train, val, cfg, stop, &mut |r, best, _| on_epoch(r, best))
    }

    /// As [`Session::run`], with the session passed to `on_epoch` (to checkpoint it).
    pub fn run_with(
        &mut self,
        train: Arc<Vec<Sample>>,
        val: Arc<Vec<Sample>>,
        cfg: &TrainConfig,
        stop: &AtomicBool,
        on_epoch: &mut dyn FnMut(&EpochReport, bool, &Session),
    ) -> Result<Outcome, TrainError> {
        let nc = self.progress.nc;
        let accumulate = (cfg.nbs as f64 / cfg.batch as f64).round().max(1.0) as usize;
        let wd = cfg.weight_decay * (cfg.batch * accumulate) as f64 / cfg.nbs as f64;
        let nb = train.len().div_ceil(cfg.batch);
        let warmup_iters = warmup_iterations(cfg.warmup_epochs, cfg.epochs, nb);
        while self.progress.epoch < cfg.epochs {
            let epoch = self.progress.epoch;
            let started = Instant::now();
            let mut rng = Rng::from_state(self.progress.rng);
            let mut order: Vec<usize> = (0..train.len()).collect();
            rng.shuffle(&mut order);
            let skip = self.progress.batch;
            let rest: Vec<usize> = order.into_iter().skip(skip * cfg.batch).collect();
            let target_lr = cfg.lr0 * lr_factor(epoch as f64, cfg.epochs as f64, cfg.lrf, cfg.cos_lr);
            let seed = cfg.seed ^ (epoch as u64) << 32;
            // The task's augmentation, with mosaic off for the last `close_mosaic` epochs (as Ultralytics).
            let augment = cfg.augment.map(|a| {
                let a = self.model.task().augment(a);
                if epoch + cfg.close_mosaic >= cfg.epochs { Augment { mosaic: 0.0, ..a } } else { a }
            });
            for (j, b) in epoch_batches(train.clone(), rest, cfg.batch, cfg.imgsz, augment, seed, cfg.workers)
                .into_iter()
                .enumerate()
            {
                let bi = skip + j;
                let b = b?;
                let it = self.progress.iteration;
                // Warm-up as Ultralytics: weights ramp up from 0, biases from `warmup_bias_lr`.
                // (and SGD's momentum up from 0.8).
                let (lr, lr_bias, momentum) = if it < warmup_iters {
                    let f = it as f64 / warmup_iters as f64;
                    (
                        target_lr * f,
                        cfg.warmup_bias_lr + (target_lr - cfg.warmup_bias_lr) * f,
                        WARMUP_MOMENTUM + (cfg.momentum - WARMUP_MOMENTUM) * f,
                    )
                } else {
                    (target_lr, target_lr, cfg.momentum)
                };
                let x = batch_tensor(&b, cfg.imgsz, cfg.device);
                // Mixed precision: the forward pass autocasts on CUDA; the loss is computed in float.
                let autocast = cfg.amp && cfg.device.is_cuda();
                let loss = self.model.task().loss(&x, &b, nc, autocast);
                let total = loss.sum(Kind::Float);
                if !total.double_value(&[]).is_finite() {
                    return Err(TrainError::NonFinite { epoch: epoch + 1, batch: bi });
                }
                let gain = self.model.task().backward_gain(b.len);
                if self.progress.loss_scale > 0.0 {
                    (total * (gain * self.progress.loss_scale)).backward();
                } else {
                    (total * gain).backward();
                }
                for (k, s) in self.progress.sums.iter_mut().enumerate() {
                    *s += loss.double_value(&[k as i64]);
                }
                self.progress.seen += b.len;
                self.progress.iteration += 1;
                let due = accumulate_at(it, warmup_iters, accumulate);
                if self.progress.iteration - self.progress.last_step_iteration >= due || bi + 1 == nb {
                    self.step(cfg, lr, lr_bias, wd, momentum);
                    self.progress.last_step_iteration = self.progress.iteration;
                }
                self.progress.batch = bi + 1;
                // Pause only at an optimiser-step boundary, so no accumulated gradient is lost.
                let stepped = self.progress.last_step_iteration == self.progress.iteration;
                if stop.load(Ordering::SeqCst) && stepped && bi + 1 < nb {
                    return Ok(Outcome::Paused);
                }
            }
            let secs = started.elapsed().as_secs_f64();
            let n = self.progress.seen.max(1) as f64;
            let mut report = EpochReport {
                epoch: epoch + 1,
                box_loss: self.progress.sums[0] / n,
                cls_loss: self.progress.sums[1] / n,
                dfl_loss: self.progress.sums[2] / n,
                precision: 0.0,
                recall: 0.0,
                map50: 0.0,
                map50_95: 0.0,
                per_class_ap: vec![],
                top1: None,
                top5: None,
                images_per_second: n / secs,
            };
            self.ema_model.task().validate(&val, cfg, &mut report)?;
            // A tie is the best too, as Ultralytics keeps `best.pt` (saved whenever the epoch's
            // fitness equals the best so far): the later of equal epochs.
            let best = report.fitness() >= self.progress.best_fitness;
            if best {
                self.progress.best_fitness = report.fitness();
            }
            self.progress.reports.push(report.clone());
            self.progress.epoch += 1;
            self.progress.batch = 0;
            self.progress.sums = [0.0; 3];
            self.progress.seen = 0;
            self.progress.rng = rng.state();
            on_epoch(&report, best, self);
            let fitness: Vec<f64> = self.progress.reports.iter().map(EpochReport::fitness).collect();
            if cfg.patience > 0
                && self.progress.epoch < cfg.epochs
                && super::epochs_without_improvement(&fitness) >= cfg.patience
            {
                return Ok(Outcome::EarlyStopped);
            }
            if stop.load(Ordering::SeqCst) && self.progress.epoch < cfg.epochs {
                return Ok(Outcome::Paused);
            }
        }
        Ok(Outcome::Finished)
    }
}

#[cfg(test)]
mod tests {
    use super::{accumulate_at, warmup_iterations};

    /// No floor of 100 iterations (older Ultralytics had one; 8.4 has not), and the last epoch is
    /// never warm-up: 3 epochs of 15 batches are 45 iterations, and a 2-epoch run warms up 1.
    #[test]
    fn warm_up_lasts_warmup_epochs_but_never_the_last_epoch() {
        assert_eq!(warmup_iterations(3.0, 10, 15), 45);
        assert_eq!(warmup_iterations(3.0, 2, 15), 15);
        assert_eq!(warmup_iterations(3.0, 1, 15), 0);
        assert_eq!(warmup_iterations(0.0, 10, 15), 0);
        assert_eq!(warmup_iterations(0.5, 10, 5), 2, "2.5 rounds to even, as Python's round");
    }

    /// Ultralytics' `max(1, int(np.interp(ni, [0, nw], [1, accumulate]).round()))`: a step every
    /// batch at first, every `accumulate` batches from the end of warm-up on (numpy rounds 2.5 to 2).
    #[test]
    fn accumulation_ramps_up_over_warm_up_as_ultralytics() {
        let got: Vec<usize> =
            [0, 16, 17, 50, 83, 84, 100, 101, 5000].iter().map(|&it| accumulate_at(it, 100, 4)).collect();
        assert_eq!(got, vec![1, 1, 2, 2, 3, 4, 4, 4, 4]);
        assert_eq!(accumulate_at(0, 0, 4), 4, "no warm-up: always the nominal");
        assert_eq!(accumulate_at(10, 100, 1), 1);
    }
}
