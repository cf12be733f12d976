//! `train`: a manifest in S3 to trained weights and per-epoch results in S3 (detectors on detect
//! datasets, `-cls` classifiers on classify datasets).
//!
//! Writes `<output>/results.jsonl` (one line per epoch, rewritten after each epoch),
//! `<output>/checkpoints/{last,best}.{safetensors,json}` (model, EMA, optimiser moments and
//! schedule position; the JSON, written last, carries the tensors' SHA-256) and
//! `<output>/weights/{last,best}.safetensors` (EMA weights, Ultralytics' state-dict names) with
//! their `ModelInfo` in `{last,best}.json` (the input of `export`).
//! SIGTERM finishes the current step, saves `last` and exits with [`crate::EXIT_PAUSED`];
//! `--resume` continues from `last` with the same epoch numbering and schedule.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use ocellus_dataset::Task;
use ocellus_dataset::manifest;
use ocellus_dataset::s3::{S3Config, Store};
use ocellus_vision::ModelInfo;
use serde_json::json;

use crate::EXIT_PAUSED;
use crate::cli::{device, fetch_images, invalid, load_manifest, transient};
use crate::ingest_cmd::emit;
use ocellus_trainer::model::{Architecture, ModelKind};
use ocellus_trainer::train::classify;
use ocellus_trainer::train::data::{Augment, Sample, targets_of};
use ocellus_trainer::train::session::{Outcome, Progress, Session};
use ocellus_trainer::train::{Optimizer, TrainConfig};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Seed.
    #[arg(long, env = "OCELLUS_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Data-loading threads.
    #[arg(long, env = "OCELLUS_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// `cpu`, `cuda` or `cuda:N` (`auto`: CUDA when available).
    #[arg(long, env = "OCELLUS_DEVICE", default_value = "auto")]
    pub device: String,
    /// Scratch directory for images.
    #[arg(long, env = "OCELLUS_WORK_DIR", default_value = "/tmp/ocellus-train")]
    pub work_dir: PathBuf,
    /// Continue from `<output>/checkpoints/last`.
    #[arg(long, env = "OCELLUS_RESUME")]
    pub resume: bool,
    /// `AdamW` or `SGD` (Nesterov momentum).
    #[arg(long, env = "OCELLUS_OPTIMIZER", default_value = "AdamW")]
    pub optimizer: Optimizer,
    /// SGD momentum.
    #[arg(long, env = "OCELLUS_MOMENTUM", default_value_t = 0.937)]
    pub momentum: f64,
    /// Turn mosaic off for this many final epochs.
    #[arg(long, env = "OCELLUS_CLOSE_MOSAIC", default_value_t = 10)]
    pub close_mosaic: usize,
    /// Mixed precision on CUDA (autocast and dynamic loss scaling).
    #[arg(long, env = "OCELLUS_AMP")]
    pub amp: bool,
    /// Start from these weights (`s3://...safetensors` or a local path: our `weights/*` or a
    /// checkpoint); layers whose shape differs (the class layers, when the class count
    /// differs) are re-initialised.
    #[arg(long, env = "OCELLUS_START_WEIGHTS")]
    pub start_weights: Option<String>,
    /// Save `last` every N epochs.
    #[arg(long, env = "OCELLUS_CHECKPOINT_INTERVAL", default_value_t = 1)]
    pub checkpoint_interval: usize,
}

/// The JSON half of a checkpoint.
#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointMeta {
    progress: Progress,
    sha256: String,
}

/// Saves a checkpoint as `<prefix>/checkpoints/<name>.{safetensors,json}`: tensors first, the
/// JSON (with their hash) last, so a reader never sees a half-written checkpoint.
async fn save_checkpoint(
    out: &Store,
    prefix: &str,
    name: &str,
    session: &Session,
    work: &std::path::Path,
) -> Result<(), String> {
    let path = work.join(format!("{name}.safetensors"));
    session.save(&path)?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| e.to_string())?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    out.put(&format!("{prefix}/checkpoints/{name}.safetensors"), bytes.into(), "application/octet-stream")
        .await
        .map_err(|e| e.to_string())?;
    let meta = serde_json::to_vec(&CheckpointMeta { progress: session.progress.clone(), sha256 })
        .map_err(|e| e.to_string())?;
    out.put(&format!("{prefix}/checkpoints/{name}.json"), meta.into(), "application/json")
        .await
        .map_err(|e| e.to_string())
}

/// Saves EMA weights as `<prefix>/weights/<name>.safetensors` and their [`ModelInfo`]
/// (`<name>.json`, written last, with the SHA-256) — the input of `export`.
async fn save_weights(
    out: &Store,
    prefix: &str,
    name: &str,
    vs: &tch::nn::VarStore,
    info: &ModelInfo,
    work: &std::path::Path,
) -> Result<String, String> {
    let path = work.join(format!("weights-{name}.safetensors"));
    vs.save(&path).map_err(|e| e.to_string())?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| e.to_string())?;
    let info = ModelInfo { sha256: Some(hex::encode(Sha256::digest(&bytes))), ..info.clone() };
    let key = format!("{prefix}/weights/{name}.safetensors");
    out.put(&key, bytes.into(), "application/octet-stream").await.map_err(|e| e.to_string())?;
    let meta = serde_json::to_vec(&info).map_err(|e| e.to_string())?;
    out.put(&format!("{prefix}/weights/{name}.json"), meta.into(), "application/json")
        .await
        .map_err(|e| e.to_string())?;
    Ok(key)
}

async fn load_checkpoint(
    out: &Store,
    prefix: &str,
    arch: &Architecture,
    cfg: &TrainConfig,
    work: &std::path::Path,
) -> Result<Session, String> {
    let meta = out
        .get(&format!("{prefix}/checkpoints/last.json"))
        .await
        .map_err(|e| format!("no checkpoint to resume: {e}"))?;
    let meta: CheckpointMeta = serde_json::from_slice(&meta).map_err(|e| format!("checkpoint metadata: {e}"))?;
    let bytes = out.get(&format!("{prefix}/checkpoints/last.safetensors")).await.map_err(|e| e.to_string())?;
    if hex::encode(Sha256::digest(&bytes)) != meta.sha256 {
        return Err("checkpoint tensors do not match their recorded SHA-256".into());
    }
    let path = work.join("resume.safetensors");
    tokio::fs::write(&path, &bytes).await.map_err(|e| e.to_string())?;
    Session::load(arch, cfg, meta.progress, &path)
}

/// Runs `train`.
pub async fn run(args: TrainArgs) -> ExitCode {
    let arch: Architecture = match args.architecture.parse() {
        Ok(a) => a,
        Err(e) => return invalid("UnsupportedArchitecture", e),
    };
    if !args.imgsz.is_multiple_of(32) || args.batch == 0 || args.epochs == 0 {
        return invalid("InvalidHyperparameters", "imgsz must be a multiple of 32, batch and epochs at least 1".into());
    }
    let dev = match device(&args.device) {
        Ok(d) => d,
        Err(e) => return invalid("InvalidDevice", e),
    };
    let cfg = match S3Config::from_env() {
        Ok(c) => c,
        Err(e) => return transient(e),
    };
    let (header, records) = match load_manifest(&cfg, &args.manifest).await {
        Ok(m) => m,
        Err(f) => return f.exit(),
    };
    match (header.task, arch.kind) {
        (Task::Detect, ModelKind::Detect) | (Task::Classify, ModelKind::Classify) => {}
        (Task::Detect, _) => {
            return invalid(
                "UnsupportedTask",
                format!("a detect dataset needs a detector architecture (e.g. yolov8n), not {}", args.architecture),
            );
        }
        (Task::Classify, _) => {
            return invalid(
                "UnsupportedTask",
                format!(
                    "a classify dataset needs a classifier architecture (e.g. yolov8n-cls), not {}",
                    args.architecture
                ),
            );
        }
        (other, _) => {
            return invalid(
                "UnsupportedTask",
                format!(
                    "{} datasets are not supported yet: segment, pose and OBB training will come later",
                    other.as_str()
                ),
            );
        }
    }

    // Images, content-addressed, into the scratch directory.
    let dir = args.work_dir.join("images");
    if let Err(e) = fetch_images(&cfg, &records, &dir).await {
        return transient(e);
    }
    let (mut tr, mut va) = (Vec::new(), Vec::new());
    for r in &records {
        let anns = manifest::parse_annotations(header.task, r);
        let s = match arch.kind {
            ModelKind::Detect => Sample { path: dir.join(&r.file), targets: targets_of(&anns) },
            // A classification record's class is its one annotation.
            ModelKind::Classify => classify::sample(dir.join(&r.file), anns.first().map(|a| a.class()).unwrap_or(0)),
        };
        if r.split.as_str() == "train" { tr.push(s) } else { va.push(s) }
    }
    if tr.is_empty() || va.is_empty() {
        return invalid("InvalidSplits", format!("need train and val images, got {} and {}", tr.len(), va.len()));
    }
    emit(
        json!({"event": "progress", "phase": "data", "train": tr.len(), "val": va.len(), "classes": header.class_names.len()}),
    );

    let nc = header.class_names.len() as i64;
    let info = ModelInfo {
        architecture: args.architecture.clone(),
        task: if arch.kind == ModelKind::Classify { "classify" } else { "detect" }.into(),
        names: header.names(),
        imgsz: args.imgsz,
        format: "safetensors".into(),
        sha256: None,
        batch: 1,
        dynamic: false,
        half: false,
    };
    let tcfg = TrainConfig {
        epochs: args.epochs,
        imgsz: args.imgsz,
        batch: args.batch,
        nbs: args.nbs.max(args.batch),
        lr0: args.lr0,
        lrf: args.lrf,
        cos_lr: args.cos_lr,
        warmup_epochs: args.warmup_epochs,
        weight_decay: 0.0005,
        seed: args.seed,
        workers: args.workers.max(1),
        device: dev,
        augment: Some(Augment::default()),
        optimizer: args.optimizer,
        momentum: args.momentum,
        amp: args.amp,
        close_mosaic: args.close_mosaic,
    };
    let out = Store::new(&cfg, &args.bucket);
    let prefix = args.output_prefix.trim_end_matches('/').to_string();
    let results_key = format!("{prefix}/results.jsonl");
    let mut session = if args.resume {
        match load_checkpoint(&out, &prefix, &arch, &tcfg, &args.work_dir).await {
            Ok(s) => s,
            Err(e) => return invalid("ResumeFailed", e),
        }
    } else {
        let mut s = match Session::new(&arch, nc, &tcfg) {
            Ok(s) => s,
            Err(e) => return invalid("TrainingFailed", e),
        };
        if let Some(start) = &args.start_weights {
            let path = args.work_dir.join("start.safetensors");
            if let Err(f) = crate::cli::fetch(Some(&cfg), start, &path).await {
                return f.exit();
            }
            match s.init_from(&path) {
                Ok(report) => emit(
                    json!({"event": "progress", "phase": "fine-tune", "from": start, "loaded": report.loaded, "reinitialized": report.reinitialized}),
                ),
                Err(e) => return invalid("InvalidStartWeights", e),
            }
        }
        s
    };
    emit(
        json!({"event": "progress", "phase": "train", "startEpoch": session.progress.epoch + 1, "epochs": tcfg.epochs}),
    );

    // SIGTERM: finish the current step, checkpoint, exit paused.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    tokio::spawn(async move {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            term.recv().await;
            stop2.store(true, Ordering::SeqCst);
        }
    });
    let handle = tokio::runtime::Handle::current();
    let (train_set, val_set) = (Arc::new(tr), Arc::new(va));
    let mut failure: Option<String> = None;
    let outcome = tokio::task::block_in_place(|| {
        let interval = args.checkpoint_interval.max(1);
        let work = args.work_dir.clone();
        let mut on_epoch = |r: &ocellus_trainer::train::EpochReport, best: bool, s: &Session| {
            emit(json!({"event": "epoch", "metrics": r, "best": best}));
            let body: String =
                s.progress.reports.iter().map(|r| serde_json::to_string(r).unwrap_or_default() + "\n").collect();
            let res = handle.block_on(async {
                // S3 has no append: results.jsonl is rewritten (it is small).
                out.put(&results_key, body.into(), "application/x-ndjson").await.map_err(|e| e.to_string())?;
                if r.epoch.is_multiple_of(interval) {
                    save_checkpoint(&out, &prefix, "last", s, &work).await?;
                }
                if best {
                    save_checkpoint(&out, &prefix, "best", s, &work).await?;
                    save_weights(&out, &prefix, "best", s.ema_var_store(), &info, &work).await?;
                }
                Ok::<_, String>(())
            });
            if let Err(e) = res {
                failure.get_or_insert(e);
            }
        };
        session.run_with(train_set, val_set, &tcfg, &stop, &mut on_epoch)
    });
    if let Some(e) = failure {
        return transient(e);
    }
    match outcome {
        Err(e) => return invalid("TrainingFailed", e),
        Ok(Outcome::Paused) => {
            if let Err(e) = save_checkpoint(&out, &prefix, "last", &session, &args.work_dir).await {
                return transient(e);
            }
            emit(json!({"event": "paused", "epoch": session.progress.epoch + 1, "batch": session.progress.batch,
                        "checkpoint": out.uri(&format!("{prefix}/checkpoints/last.json"))}));
            return ExitCode::from(EXIT_PAUSED);
        }
        Ok(Outcome::Finished) => {}
    }
    if let Err(e) = save_checkpoint(&out, &prefix, "last", &session, &args.work_dir).await {
        return transient(e);
    }
    let reports = session.progress.reports.clone();
    let weights_key = match save_weights(&out, &prefix, "last", session.ema_var_store(), &info, &args.work_dir).await {
        Ok(k) => k,
        Err(e) => return transient(e),
    };
    let _ = std::fs::remove_dir_all(&args.work_dir);
    let last = reports.last();
    emit(
        json!({"event": "done", "epochs": reports.len(), "resultsUri": out.uri(&results_key), "weightsUri": out.uri(&weights_key),
                "metrics": last}),
    );
    ExitCode::SUCCESS
}
