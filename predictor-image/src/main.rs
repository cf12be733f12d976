//! `ocellus-predictor`: the predictor image's entry point (one model per server).
//!
//! `serve` fetches the model, starts its threads, serves the APIs at once (readiness stays false
//! until the model is loaded and warmed up), and on SIGTERM stops being ready, drains in-flight
//! requests and exits. Exit codes: 0 clean stop, 2 the model or the flags are invalid, 3 the model
//! could not be fetched (transient).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ocellus_common::{Health, LogArgs};
use ocellus_predictor::api::{AppState, LabelStudioConfig, Model, Settings};
use ocellus_predictor::backend::{self, ModelSpec};
use ocellus_predictor::batcher::{BatchConfig, Batcher, Lanes};
use ocellus_predictor::metrics::Metrics;
use ocellus_predictor::pipeline::ImageLimits;
use ocellus_predictor::source::{self, SourceError};
use ocellus_vision::decode::Thresholds;

#[derive(Parser, Debug)]
#[command(name = "ocellus-predictor", version, about = "Inference server for exported Ocellus models")]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve one model over Ultralytics, Open Inference Protocol v2, Label Studio and Roboflow APIs.
    Serve(Box<ServeArgs>),
    /// Print the build and runtime versions as JSON.
    Version,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// The artifact: `s3://bucket/.../model.onnx` or a local path (its `<artifact>.json` beside it).
    #[arg(long, env = "OCELLUS_MODEL")]
    model: String,
    /// Milliseconds to keep serving after SIGTERM while reporting not ready, so that load
    /// balancers stop sending before the listener closes (then in-flight requests finish).
    #[arg(long, env = "OCELLUS_DRAIN_DELAY_MS", default_value_t = 5000)]
    drain_delay_ms: u64,
    /// SHA-256 the artifact must have (64 hex digits); it is not served if it differs.
    #[arg(long, env = "OCELLUS_MODEL_SHA256")]
    model_sha256: Option<String>,
    /// Name in URLs and responses (default: the architecture).
    #[arg(long, env = "OCELLUS_MODEL_NAME")]
    model_name: Option<String>,
    /// `auto` (by extension), `onnx`, `torch` or `tensorrt`.
    #[arg(long, env = "OCELLUS_BACKEND", default_value = "auto")]
    backend: String,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, env = "OCELLUS_DEVICE", default_value = "cpu")]
    device: String,
    /// Address to serve on.
    #[arg(long, env = "OCELLUS_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Most images per model run (the elastic CPU setup of auto instances runs one per core).
    #[arg(long, env = "OCELLUS_MAX_BATCH", default_value_t = 8)]
    max_batch: usize,
    /// Longest wait for a batch to fill, in milliseconds.
    #[arg(long, env = "OCELLUS_MAX_DELAY_MS", default_value_t = 5)]
    max_delay_ms: u64,
    /// Images that may wait; beyond this requests get 429.
    #[arg(long, env = "OCELLUS_QUEUE_CAPACITY", default_value_t = 64)]
    queue_capacity: usize,
    /// Model threads, each with its own copy of the model. 0 (auto): on a CPU with ONNX Runtime,
    /// one copy per core for load plus one over all cores for a lone request; else one.
    #[arg(long, env = "OCELLUS_INSTANCES", default_value_t = 0)]
    instances: usize,
    /// Intra-op threads per model thread (0: the runtime's default); with auto instances, the
    /// cores to use (0: those the process may use, at most 8).
    #[arg(long, env = "OCELLUS_THREADS", default_value_t = 0)]
    threads: usize,
    /// Default confidence threshold.
    #[arg(long, env = "OCELLUS_CONF", default_value_t = 0.25)]
    conf: f32,
    /// Default NMS IoU threshold.
    #[arg(long, env = "OCELLUS_IOU", default_value_t = 0.7)]
    iou: f32,
    /// Most detections per image.
    #[arg(long, env = "OCELLUS_MAX_DET", default_value_t = 300)]
    max_det: usize,
    /// Largest encoded image, in bytes.
    #[arg(long, env = "OCELLUS_MAX_IMAGE_BYTES", default_value_t = 20 << 20)]
    max_image_bytes: usize,
    /// Largest image, in pixels (width × height).
    #[arg(long, env = "OCELLUS_MAX_IMAGE_PIXELS", default_value_t = 50_000_000)]
    max_image_pixels: u64,
    /// Download timeout per attempt, in seconds.
    #[arg(long, env = "OCELLUS_DOWNLOAD_TIMEOUT", default_value_t = 300)]
    download_timeout: u64,
    /// Download retries.
    #[arg(long, env = "OCELLUS_DOWNLOAD_RETRIES", default_value_t = 4)]
    download_retries: u32,
    /// Where S3 models are downloaded, each server in its own subdirectory (by process id): a
    /// directory shared with another server (another model) never mixes their files.
    #[arg(long, env = "OCELLUS_MODEL_DIR", default_value = "/tmp/ocellus-model")]
    model_dir: PathBuf,
    /// Label Studio's URL, for task images given as relative URLs.
    #[arg(long, env = "LABEL_STUDIO_URL")]
    label_studio_url: Option<String>,
    /// Label Studio API token (sent only to Label Studio's host).
    #[arg(long, env = "LABEL_STUDIO_API_KEY", hide_env_values = true)]
    label_studio_api_key: Option<String>,
    /// Basic-auth user required on the Label Studio routes.
    #[arg(long, env = "BASIC_AUTH_USER")]
    basic_auth_user: Option<String>,
    /// Basic-auth password.
    #[arg(long, env = "BASIC_AUTH_PASS", hide_env_values = true)]
    basic_auth_pass: Option<String>,
    /// Hosts task images may be fetched from even if they resolve to private addresses.
    #[arg(long = "allow-fetch-host", env = "OCELLUS_ALLOW_FETCH_HOSTS", value_delimiter = ',')]
    allow_fetch_hosts: Vec<String>,
    /// Allow fetching task images from any private address (disables the SSRF check).
    #[arg(long, env = "OCELLUS_ALLOW_PRIVATE_FETCH")]
    allow_private_fetch: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ocellus_common::init_tracing(&cli.log);
    match cli.command {
        Command::Version => {
            println!("{}", serde_json::json!({ "predictor": env!("CARGO_PKG_VERSION") }));
            ExitCode::SUCCESS
        }
        Command::Serve(args) => match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(rt) => rt.block_on(serve(*args)),
            Err(e) => {
                eprintln!("cannot start the runtime: {e}");
                ExitCode::from(3)
            }
        },
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    tracing::error!(error = message, "predictor failed");
    ExitCode::from(code)
}

async fn serve(args: ServeArgs) -> ExitCode {
    if !(0.0..=1.0).contains(&args.conf) || !(0.0..=1.0).contains(&args.iou) {
        return fail(2, "--conf and --iou must be between 0 and 1");
    }
    let device = match backend::Device::parse(&args.device) {
        Ok(d) => d,
        Err(e) => return fail(2, &e),
    };
    let metrics = match Metrics::new() {
        Ok(m) => m,
        Err(e) => return fail(3, &e.to_string()),
    };
    let model_dir = args.model_dir.join(std::process::id().to_string());
    let (path, info) = match source::fetch(
        &args.model,
        &model_dir,
        Duration::from_secs(args.download_timeout),
        args.download_retries,
        args.model_sha256.as_deref(),
    )
    .await
    {
        Ok(x) => x,
        Err(SourceError::Permanent(e)) => return fail(2, &e),
        Err(SourceError::Transient(e)) => return fail(3, &e),
    };
    let kind = match backend::Kind::parse(&args.backend, &path) {
        Ok(k) => k,
        Err(e) => return fail(2, &e),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lanes = Lanes::resolve(args.instances, args.threads, kind, &device, cores);
    let on_cpu = matches!(device, backend::Device::Cpu);
    let spec = ModelSpec { path, info: info.clone(), kind, device, threads: args.threads, spin: true };
    let cfg = BatchConfig {
        max_batch: args.max_batch,
        max_delay: Duration::from_millis(args.max_delay_ms),
        queue_capacity: args.queue_capacity,
        lanes,
    };
    let (batcher, loaded) = Batcher::start(spec, cfg, metrics.clone());
    let version = info.sha256.as_deref().map(|s| s[..12.min(s.len())].to_string()).unwrap_or_else(|| "1".into());
    let model = Model {
        name: args.model_name.clone().unwrap_or_else(|| info.architecture.clone()),
        version,
        info,
        batcher,
        backend: Default::default(),
        cpu_int8: ocellus_predictor::cpu::Int8Support::detect(),
    };
    if model.info.quantization.is_some() && on_cpu && !model.cpu_int8.accelerated() {
        tracing::warn!(
            cpu_int8 = %model.cpu_int8,
            "an INT8 model on a CPU without VNNI, AMX or Arm dot-product instructions runs about as fast as float"
        );
    }
    let settings = Settings {
        limits: ImageLimits { max_bytes: args.max_image_bytes, max_pixels: args.max_image_pixels },
        defaults: Thresholds { conf: args.conf, iou: args.iou, max_det: args.max_det },
        label_studio: LabelStudioConfig {
            url: args.label_studio_url.clone(),
            api_key: args.label_studio_api_key.clone(),
            basic_auth: args.basic_auth_user.clone().zip(args.basic_auth_pass.clone()),
            allowed_hosts: args.allow_fetch_hosts.clone(),
            allow_private: args.allow_private_fetch,
        },
    };
    let health = Health::new(metrics.registry.clone());
    let state = AppState::new(model, settings, metrics, health.clone());
    let router = ocellus_predictor::app(state.clone());

    // Serve at once (liveness, metrics); ready once the model threads have loaded and warmed up.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => return fail(3, &format!("cannot listen on {}: {e}", args.listen)),
    };
    tracing::info!(addr = %args.listen, "listening");
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    match loaded.await {
        Ok(Ok(name)) => {
            let _ = state.model.backend.set(name);
            health.set_ready(true);
            let c = state.model.batcher.config();
            tracing::info!(
                backend = name, model = %state.model.name, precision = state.model.info.precision(),
                cpu_int8 = %state.model.cpu_int8, max_batch = c.max_batch, lanes = ?c.lanes, "model ready"
            );
        }
        Ok(Err(e)) => {
            let _ = stop_tx.send(());
            let code = if matches!(e, backend::BackendError::Run(_)) { 3 } else { 2 };
            return fail(code, &e.to_string());
        }
        Err(_) => {
            let _ = stop_tx.send(());
            return fail(3, "the model threads stopped while loading");
        }
    }
    ocellus_common::shutdown_signal().await;
    // Leave the load balancer first (not ready, still serving while endpoints update), then
    // close the listener and finish what is in flight.
    health.set_ready(false);
    tracing::info!(delay_ms = args.drain_delay_ms, "terminating: not ready, draining");
    tokio::time::sleep(Duration::from_millis(args.drain_delay_ms)).await;
    let _ = stop_tx.send(());
    match server.await {
        Ok(Ok(())) => {
            tracing::info!("drained; exiting");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => fail(3, &e.to_string()),
        Err(e) => fail(3, &e.to_string()),
    }
}
