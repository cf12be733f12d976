//! `train`: a manifest in S3 to trained weights and per-epoch results in S3 (detectors on detect
//! datasets, `-cls` classifiers on classify datasets).
//!
//! Writes `<output>/results.jsonl` (one line per epoch, rewritten after each epoch),
//! `<output>/checkpoints/{last,best}.{safetensors,json}` (model, EMA, optimiser moments and, in
//! the tensors' header, the schedule position; the JSON, written last, repeats the position with
//! the tensors' SHA-256 and marks the checkpoint complete) and
//! `<output>/weights/{last,best}.safetensors` (EMA weights, Ultralytics' state-dict names) with
//! their `ModelInfo` in `{last,best}.json` (the input of `export`).
//! SIGTERM finishes the current step, saves `last` and exits paused (4);
//! `--resume` continues from `last` with the same epoch numbering and schedule.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use ocellus_dataset::Task;
use ocellus_dataset::manifest::{self, Header, ImageRecord};
use ocellus_storage::location::sidecar;
use ocellus_storage::{FetchOptions, Storage, Store};
use ocellus_trainer::checkpoint;
use ocellus_trainer::error::TrainError;
use ocellus_trainer::model::{Architecture, ModelKind};
use ocellus_trainer::train::classify;
use ocellus_trainer::train::data::{Augment, Sample, targets_of};
use ocellus_trainer::train::session::{Outcome, Progress, Session};
use ocellus_trainer::train::{EpochReport, Optimizer, TrainConfig};
use ocellus_vision::ModelInfo;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::args::{DeviceArgs, WorkDirArgs};
use crate::cli::{fetch_images, load_manifest};
use crate::report::{self, Done, Failure, emit};

/// `train` flags.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// `s3://bucket/.../manifest.ndjson` of the dataset (or a frozen version).
    #[arg(long, env = "OCELLUS_MANIFEST")]
    pub manifest: String,
    /// Platform bucket for the outputs.
    #[arg(long, env = "OCELLUS_S3_BUCKET")]
    pub bucket: String,
    /// Key prefix of this training run (`<namespace>/trainingjobs/<name>`).
    #[arg(long, env = "OCELLUS_OUTPUT_PREFIX")]
    pub output_prefix: String,
    /// Architecture, e.g. `yolov8n`.
    #[arg(long, env = "OCELLUS_ARCHITECTURE", default_value = "yolov8n")]
    pub architecture: String,
    /// Epochs.
    #[arg(long, env = "OCELLUS_EPOCHS", default_value_t = 100)]
    pub epochs: usize,
    /// Square image size (multiple of 32).
    #[arg(long, env = "OCELLUS_IMGSZ", default_value_t = 640)]
    pub imgsz: u32,
    /// Images per batch.
    #[arg(long, env = "OCELLUS_BATCH", default_value_t = 16)]
    pub batch: usize,
    /// Nominal batch size for gradient accumulation.
    #[arg(long, env = "OCELLUS_NBS", default_value_t = 64)]
    pub nbs: usize,
    /// Initial learning rate.
    #[arg(long, env = "OCELLUS_LR0", default_value_t = 0.002)]
    pub lr0: f64,
    /// Final learning rate fraction.
    #[arg(long, env = "OCELLUS_LRF", default_value_t = 0.01)]
    pub lrf: f64,
    /// Cosine decay.
    #[arg(long, env = "OCELLUS_COS_LR")]
    pub cos_lr: bool,
    /// Warm-up epochs.
    #[arg(long, env = "OCELLUS_WARMUP_EPOCHS", default_value_t = 3.0)]
    pub warmup_epochs: f64,
    /// Learning rate biases start warm-up with (Ultralytics' `warmup_bias_lr`; it uses 0 when it
    /// picks the optimizer itself, `optimizer=auto`).
    #[arg(long, env = "OCELLUS_WARMUP_BIAS_LR", default_value_t = 0.1)]
    pub warmup_bias_lr: f64,
    /// Seed.
    #[arg(long, env = "OCELLUS_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Data-loading threads.
    #[arg(long, env = "OCELLUS_WORKERS", default_value_t = 2)]
    pub workers: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub work: WorkDirArgs,
    /// Continue from `<output>/checkpoints/last`.
    #[arg(long, env = "OCELLUS_RESUME")]
    pub resume: bool,
    /// `AdamW` or `SGD` (Nesterov momentum).
    #[arg(long, env = "OCELLUS_OPTIMIZER", default_value = "AdamW")]
    pub optimizer: Optimizer,
    /// SGD momentum, and AdamW's beta1 (as Ultralytics).
    #[arg(long, env = "OCELLUS_MOMENTUM", default_value_t = 0.937)]
    pub momentum: f64,
    /// Turn mosaic off for this many final epochs.
    #[arg(long, env = "OCELLUS_CLOSE_MOSAIC", default_value_t = 10)]
    pub close_mosaic: usize,
    /// Early stopping: stop after this many epochs without a better validation fitness
    /// (mAP50-95, or the top-1/top-5 mean of classifiers); 0 never stops early.
    #[arg(long, env = "OCELLUS_PATIENCE", default_value_t = 100)]
    pub patience: usize,
    /// Mixed precision on CUDA (autocast and dynamic loss scaling).
    #[arg(long, env = "OCELLUS_AMP")]
    pub amp: bool,
    /// Start from these weights (`s3://...` or a local path): our `weights/*.safetensors` or a
    /// checkpoint, or an Ultralytics `.pt` checkpoint (read without running its pickle); layers
    /// whose shape differs (the class layers, when the class count differs) are re-initialised.
    #[arg(long, env = "OCELLUS_START_WEIGHTS")]
    pub start_weights: Option<String>,
    /// Save `last` every N epochs.
    #[arg(long, env = "OCELLUS_CHECKPOINT_INTERVAL", default_value_t = 1)]
    pub checkpoint_interval: usize,
}

/// Runs `train`.
pub async fn run(args: TrainArgs) -> ExitCode {
    let work = args.work.path("train");
    report::finish(train(&args, &work).await, Some(&work))
}

/// The pipeline: check the flags, read the manifest, check the task, fetch the images, build the
/// run, train epoch by epoch (each epoch's results and checkpoints in S3), then save the weights.
async fn train(args: &TrainArgs, work: &Path) -> Result<Done, Failure> {
    let arch = architecture(&args.architecture)?;
    check_hyperparameters(args)?;
    let device = args.device.resolve()?;
    let storage = Storage::from_env();
    let (header, records) = load_manifest(&storage, &args.manifest).await?;
    check_task(header.task, &arch, &args.architecture)?;
    let dir = work.join("images");
    fetch_images(&storage, &records, &dir).await?;
    let (train_set, val_set) = samples(&header, &records, &arch, &dir)?;
    emit(json!({"event": "progress", "phase": "data", "train": train_set.len(), "val": val_set.len(),
                "classes": header.class_names.len()}));

    let cfg = train_config(args, device);
    let info = model_info(args, &arch, &header);
    let out = Output { store: Store::new(storage.s3_config()?, &args.bucket), prefix: prefix(&args.output_prefix) };
    let mut session = if args.resume {
        out.load_checkpoint(&arch, &cfg, work).await?
    } else {
        new_session(args, &storage, &arch, header.class_names.len() as i64, &cfg, work).await?
    };
    emit(
        json!({"event": "progress", "phase": "train", "startEpoch": session.progress.epoch + 1, "epochs": cfg.epochs}),
    );

    let outcome = run_epochs(args, &out, &info, &mut session, train_set, val_set, &cfg, work)?;
    out.save_checkpoint("last", &session, work).await?;
    if outcome == Outcome::Paused {
        return Ok(Done::Paused(json!({"epoch": session.progress.epoch + 1, "batch": session.progress.batch,
                                      "checkpoint": out.uri("checkpoints/last.json")})));
    }
    let weights_key = out.save_weights("last", session.ema_var_store(), &info, work).await?;
    let reports = &session.progress.reports;
    Ok(Done::Finished(json!({"epochs": reports.len(), "resultsUri": out.uri("results.jsonl"),
                             "weightsUri": out.store.uri(&weights_key), "metrics": reports.last(),
                             "stoppedEarly": outcome == Outcome::EarlyStopped})))
}

fn architecture(name: &str) -> Result<Architecture, Failure> {
    name.parse().map_err(|e: ocellus_trainer::error::ParseError| Failure::invalid("UnsupportedArchitecture", e.0))
}

fn check_hyperparameters(args: &TrainArgs) -> Result<(), Failure> {
    if !args.imgsz.is_multiple_of(32) || args.batch == 0 || args.epochs == 0 {
        return Err(Failure::invalid(
            "InvalidHyperparameters",
            "imgsz must be a multiple of 32, batch and epochs at least 1",
        ));
    }
    Ok(())
}

/// The dataset's task must be the architecture's: detect with a detector, classify with a `-cls`.
fn check_task(task: Task, arch: &Architecture, name: &str) -> Result<(), Failure> {
    let message = match (task, arch.kind) {
        (Task::Detect, ModelKind::Detect) | (Task::Classify, ModelKind::Classify) => return Ok(()),
        (Task::Detect, _) => format!("a detect dataset needs a detector architecture (e.g. yolov8n), not {name}"),
        (Task::Classify, _) => {
            format!("a classify dataset needs a classifier architecture (e.g. yolov8n-cls), not {name}")
        }
        (other, _) => {
            format!("{} datasets are not supported yet: segment, pose and OBB training will come later", other.as_str())
        }
    };
    Err(Failure::invalid("UnsupportedTask", message))
}

/// Training and validation samples of the manifest's records (images in `dir`).
fn samples(
    header: &Header,
    records: &[ImageRecord],
    arch: &Architecture,
    dir: &Path,
) -> Result<(Vec<Sample>, Vec<Sample>), Failure> {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for r in records {
        let anns = manifest::parse_annotations(header.task, r);
        let s = match arch.kind {
            ModelKind::Detect => Sample { path: dir.join(&r.file), targets: targets_of(&anns) },
            // A classification record's class is its one annotation.
            ModelKind::Classify => classify::sample(dir.join(&r.file), anns.first().map(|a| a.class()).unwrap_or(0)),
        };
        if r.split.as_str() == "train" { train.push(s) } else { val.push(s) }
    }
    if train.is_empty() || val.is_empty() {
        return Err(Failure::invalid(
            "InvalidSplits",
            format!("need train and val images, got {} and {}", train.len(), val.len()),
        ));
    }
    Ok((train, val))
}

fn train_config(args: &TrainArgs, device: tch::Device) -> TrainConfig {
    TrainConfig {
        epochs: args.epochs,
        imgsz: args.imgsz,
        batch: args.batch,
        nbs: args.nbs.max(args.batch),
        lr0: args.lr0,
        lrf: args.lrf,
        cos_lr: args.cos_lr,
        warmup_epochs: args.warmup_epochs,
        warmup_bias_lr: args.warmup_bias_lr,
        weight_decay: 0.0005,
        seed: args.seed,
        workers: args.workers.max(1),
        device,
        augment: Some(Augment::default()),
        optimizer: args.optimizer,
        momentum: args.momentum,
        amp: args.amp,
        close_mosaic: args.close_mosaic,
        patience: args.patience,
    }
}

/// What `weights/*.json` says of the trained model (the input of `export` and the predictor).
fn model_info(args: &TrainArgs, arch: &Architecture, header: &Header) -> ModelInfo {
    let task = if arch.kind == ModelKind::Classify { Task::Classify } else { Task::Detect };
    ModelInfo::weights(&args.architecture, task.as_str(), header.names(), args.imgsz)
}

fn prefix(output_prefix: &str) -> String {
    output_prefix.trim_end_matches('/').to_string()
}

/// A fresh session, fine-tuned from `--start-weights` when given.
async fn new_session(
    args: &TrainArgs,
    storage: &Storage,
    arch: &Architecture,
    nc: i64,
    cfg: &TrainConfig,
    work: &Path,
) -> Result<Session, Failure> {
    let mut session = Session::new(arch, nc, cfg).map_err(train_failure)?;
    if let Some(start) = &args.start_weights {
        let path = work.join("start.safetensors");
        if start.ends_with(".pt") {
            let imported =
                crate::import_cmd::fetch_and_import(storage, start, args.imgsz, &work.join("import")).await?;
            imported.vs.save(&path).map_err(|e| Failure::transient(format!("writing {}: {e}", path.display())))?;
            emit(
                json!({"event": "progress", "phase": "import", "from": start, "architecture": imported.info.architecture,
                        "classes": imported.info.names.len(), "ultralyticsVersion": imported.version}),
            );
        } else {
            storage.fetch(start, &path, &FetchOptions::default()).await?;
        }
        let report = session.init_from(&path).map_err(train_failure)?;
        emit(json!({"event": "progress", "phase": "fine-tune", "from": start, "loaded": report.loaded,
                    "reinitialized": report.reinitialized}));
    }
    Ok(session)
}

/// Trains until the last epoch or SIGTERM. After each epoch: `results.jsonl` rewritten, `last`
/// checkpointed every `--checkpoint-interval` epochs, `best` checkpoint and weights when the
/// fitness improved.
#[allow(clippy::too_many_arguments, reason = "the steps of one pipeline, each used once")]
fn run_epochs(
    args: &TrainArgs,
    out: &Output,
    info: &ModelInfo,
    session: &mut Session,
    train_set: Vec<Sample>,
    val_set: Vec<Sample>,
    cfg: &TrainConfig,
    work: &Path,
) -> Result<Outcome, Failure> {
    // SIGTERM: finish the current step, checkpoint, exit paused.
    let stop = Arc::new(AtomicBool::new(false));
    let on_term = stop.clone();
    tokio::spawn(async move {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            term.recv().await;
            on_term.store(true, Ordering::SeqCst);
        }
    });
    let handle = tokio::runtime::Handle::current();
    let interval = args.checkpoint_interval.max(1);
    let mut failure: Option<Failure> = None;
    let outcome = tokio::task::block_in_place(|| {
        let mut on_epoch = |r: &EpochReport, best: bool, s: &Session| {
            emit(json!({"event": "epoch", "metrics": r, "best": best}));
            let saved = handle.block_on(async {
                out.save_results(&s.progress.reports).await?;
                // `best` before `last`: a run killed between them resumes from the previous `last`
                // and repeats this epoch, so no epoch a `last` covers can have lost its `best`.
                if best {
                    out.save_checkpoint("best", s, work).await?;
                    out.save_weights("best", s.ema_var_store(), info, work).await?;
                }
                if r.epoch.is_multiple_of(interval) {
                    out.save_checkpoint("last", s, work).await?;
                }
                Ok::<_, Failure>(())
            });
            if let Err(e) = saved {
                failure.get_or_insert(e);
            }
        };
        session.run_with(Arc::new(train_set), Arc::new(val_set), cfg, &stop, &mut on_epoch)
    });
    if let Some(f) = failure {
        return Err(f);
    }
    outcome.map_err(train_failure)
}

/// A training error as a subcommand failure: the run cannot succeed as configured.
fn train_failure(e: TrainError) -> Failure {
    let reason = match e {
        TrainError::Image { .. } => "CorruptImage",
        TrainError::Checkpoint(_) => "ResumeFailed",
        TrainError::StartWeights(_) => "InvalidStartWeights",
        _ => "TrainingFailed",
    };
    Failure::invalid(reason, e.to_string())
}

/// The tensors' header metadata key holding their [`Progress`] (JSON).
const PROGRESS_KEY: &str = "ocellus.progress";

/// A checkpoint's JSON sidecar: its position and the tensors' hash.
#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointMeta {
    progress: Progress,
    sha256: String,
}

/// Where a run writes: `<prefix>/results.jsonl`, `checkpoints/` and `weights/` in the platform bucket.
struct Output {
    store: Store,
    prefix: String,
}

impl Output {
    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    fn uri(&self, rest: &str) -> String {
        self.store.uri(&self.key(rest))
    }

    async fn put(&self, rest: &str, body: Vec<u8>, content_type: &str) -> Result<(), Failure> {
        self.store.put(&self.key(rest), body.into(), content_type).await.map_err(|e| Failure::transient(e.to_string()))
    }

    /// `results.jsonl`, one line per epoch (S3 has no append: it is rewritten; it is small).
    async fn save_results(&self, reports: &[EpochReport]) -> Result<(), Failure> {
        let mut body = Vec::new();
        for r in reports {
            serde_json::to_writer(&mut body, r).map_err(|e| Failure::transient(e.to_string()))?;
            body.push(b'\n');
        }
        self.put("results.jsonl", body, "application/x-ndjson").await
    }

    /// Saves a checkpoint as `checkpoints/<name>.{safetensors,json}`. The tensors carry their
    /// schedule position in their own header, so that one object is a whole checkpoint (S3 writes
    /// an object entirely or not at all): a run killed between the two writes resumes from the
    /// tensors. The JSON (position and the tensors' hash), written last, tells the operator that
    /// the checkpoint is complete.
    async fn save_checkpoint(&self, name: &str, session: &Session, work: &Path) -> Result<(), Failure> {
        let path = work.join(format!("{name}.safetensors"));
        session.save(&path).map_err(|e| Failure::transient(format!("writing {}: {e}", path.display())))?;
        let progress = serde_json::to_string(&session.progress).map_err(|e| Failure::transient(e.to_string()))?;
        let bytes = checkpoint::with_metadata(read(&path).await?, &BTreeMap::from([(PROGRESS_KEY.into(), progress)]))
            .map_err(|e| Failure::transient(e.to_string()))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        self.put(&format!("checkpoints/{name}.safetensors"), bytes, "application/octet-stream").await?;
        let meta = serde_json::to_vec(&CheckpointMeta { progress: session.progress.clone(), sha256 })
            .map_err(|e| Failure::transient(e.to_string()))?;
        self.put(&format!("checkpoints/{name}.json"), meta, "application/json").await
    }

    /// Saves EMA weights as `weights/<name>.safetensors` and their [`ModelInfo`] (`<name>.json`,
    /// written last, with the SHA-256): the input of `export`. Returns the weights' key.
    async fn save_weights(
        &self,
        name: &str,
        vs: &tch::nn::VarStore,
        info: &ModelInfo,
        work: &Path,
    ) -> Result<String, Failure> {
        let path = work.join(format!("weights-{name}.safetensors"));
        vs.save(&path).map_err(|e| Failure::transient(format!("writing {}: {e}", path.display())))?;
        let bytes = read(&path).await?;
        let info = ModelInfo { sha256: Some(hex::encode(Sha256::digest(&bytes))), ..info.clone() };
        let weights = format!("weights/{name}.safetensors");
        self.put(&weights, bytes, "application/octet-stream").await?;
        let meta = serde_json::to_vec(&info).map_err(|e| Failure::transient(e.to_string()))?;
        self.put(&sidecar(&weights), meta, "application/json").await?;
        Ok(self.key(&weights))
    }

    /// The `last` checkpoint: its tensors, with the schedule position in their header (or, for
    /// checkpoints written before it was, in the sidecar). Tensors whose sidecar records the same
    /// position must have the SHA-256 it records; a sidecar of another position is an earlier
    /// checkpoint's, left by a run killed between the two writes, and is not the tensors' to judge.
    async fn load_checkpoint(&self, arch: &Architecture, cfg: &TrainConfig, work: &Path) -> Result<Session, Failure> {
        let get = |rest: &'static str| async move {
            self.store.get_opt(&self.key(rest)).await.map_err(|e| Failure::transient(e.to_string()))
        };
        let bytes = get("checkpoints/last.safetensors")
            .await?
            .ok_or_else(|| Failure::invalid("ResumeFailed", "no checkpoint to resume: checkpoints/last.safetensors"))?;
        let sidecar = match get("checkpoints/last.json").await? {
            Some(b) => Some(
                serde_json::from_slice::<CheckpointMeta>(&b)
                    .map_err(|e| Failure::invalid("ResumeFailed", format!("checkpoint metadata: {e}")))?,
            ),
            None => None,
        };
        let own = checkpoint::metadata(&bytes).map_err(|e| Failure::invalid("ResumeFailed", e.to_string()))?;
        let progress: Progress = match (own.get(PROGRESS_KEY), &sidecar) {
            (Some(p), _) => serde_json::from_str(p)
                .map_err(|e| Failure::invalid("ResumeFailed", format!("checkpoint schedule position: {e}")))?,
            (None, Some(meta)) => meta.progress.clone(),
            (None, None) => {
                return Err(Failure::invalid("ResumeFailed", "the checkpoint has no schedule position and no sidecar"));
            }
        };
        if let Some(meta) = sidecar
            && meta.progress == progress
            && hex::encode(Sha256::digest(&bytes)) != meta.sha256
        {
            return Err(Failure::invalid("ResumeFailed", "checkpoint tensors do not match their recorded SHA-256"));
        }
        tokio::fs::create_dir_all(work).await.map_err(|e| Failure::transient(e.to_string()))?;
        let path = work.join("resume.safetensors");
        tokio::fs::write(&path, &bytes).await.map_err(|e| Failure::transient(e.to_string()))?;
        Session::load(arch, cfg, progress, &path).map_err(train_failure)
    }
}

async fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    tokio::fs::read(path).await.map_err(|e| Failure::transient(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_need_matching_architectures() {
        let det: Architecture = "yolov8n".parse().expect("arch");
        let cls: Architecture = "yolov8n-cls".parse().expect("arch");
        assert!(check_task(Task::Detect, &det, "yolov8n").is_ok());
        assert!(check_task(Task::Classify, &cls, "yolov8n-cls").is_ok());
        let f = check_task(Task::Classify, &det, "yolov8n").expect_err("detector on classify");
        assert_eq!((f.reason, f.kind), ("UnsupportedTask", ocellus_core::ErrorKind::Permanent));
        assert!(f.message.contains("yolov8n-cls"), "{}", f.message);
        let f = check_task(Task::Pose, &det, "yolov8n").expect_err("pose");
        assert!(f.message.starts_with("pose datasets are not supported yet"), "{}", f.message);
    }

    #[test]
    fn samples_split_by_record_and_need_both_splits() {
        let header: Header = serde_json::from_value(json!({
            "type": "dataset", "task": "detect", "name": "d", "class_names": {"0": "a", "1": "b"}, "images": 3,
            "created_at": "2026-01-01T00:00:00Z"
        }))
        .expect("header");
        let record = |file: &str, split: &str| -> ImageRecord {
            serde_json::from_value(json!({
                "type": "image", "file": file, "url": format!("s3://b/{file}"), "source": file, "split": split,
                "width": 10, "height": 10, "sha256": "0", "annotations": {"boxes": [[1, 0.5, 0.5, 0.2, 0.2]]}
            }))
            .expect("record")
        };
        let arch: Architecture = "yolov8n".parse().expect("arch");
        let dir = Path::new("/scratch/images");
        let records = [record("a.jpg", "train"), record("b.jpg", "val"), record("c.jpg", "train")];
        let (train, val) = samples(&header, &records, &arch, dir).expect("samples");
        assert_eq!(train.iter().map(|s| s.path.clone()).collect::<Vec<_>>(), [dir.join("a.jpg"), dir.join("c.jpg")]);
        assert_eq!(val.len(), 1);
        assert_eq!(train[0].targets.len(), 1);
        assert_eq!(train[0].targets[0].class, 1);
        let f = samples(&header, &records[..1], &arch, dir).expect_err("no val");
        assert_eq!(f.reason, "InvalidSplits");
    }
}
