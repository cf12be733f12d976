//! A model trained and exported by the real trainer CLI on the synthetic shapes dataset (once per
//! test binary), and a predictor process around it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ocellus_dataset::Task;
use ocellus_dataset::fetch::Source;
use ocellus_dataset::ingest::{self, Options};
use ocellus_storage::s3::Store;
use ocellus_tests::fixtures;
use ocellus_tests::s3::S3Server;
use serde_json::Value;

/// Everything the tests share.
pub struct Fixture {
    pub s3: S3Server,
    pub dir: PathBuf,
    /// Local ONNX export (dynamic batch) with its sidecar.
    pub onnx: PathBuf,
    /// The same weights as an INT8 (QDQ) ONNX export.
    pub int8: PathBuf,
    /// Local TorchScript export.
    pub torchscript: PathBuf,
    /// The trainer's `val` predictions (conf 0.05) for the val images.
    pub val_predictions: Vec<Value>,
    /// The val images' bytes, by manifest `file`.
    pub images: Vec<(String, Vec<u8>)>,
}

pub const CONF: &str = "0.05";

fn trainer(s3: &S3Server, args: &[&str]) -> Vec<Value> {
    let (code, lines, stderr) =
        ocellus_tests::run_json_cli(&ocellus_tests::workspace_binary("ocellus-trainer"), args, s3);
    assert!(
        code == 0,
        "ocellus-trainer {args:?} failed ({code}): {lines:?} {stderr} — the predictor tests need the trainer built with libtorch (`--features ocellus-trainer/torch`, as hack/test.sh does)"
    );
    lines
}

/// The shared fixture (trained on first use, ~20 s on CPU).
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    // Built on its own thread: the tests calling this are async.
    F.get_or_init(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("rt");
            rt.block_on(build())
        })
        .join()
        .expect("fixture")
    })
}

async fn build() -> Fixture {
    let s3 = S3Server::start().expect("s3");
    // Under cargo's target/tmp, replaced by each run.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("predictor-fixture");
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::new(&s3.config(), "platform");
    store.ensure_bucket().await.expect("bucket");
    // 128 px images, trained and served at 96: letterboxing rescales, so box mapping is exercised.
    fixtures::write_yolo(&dir.join("ds"), &fixtures::samples(11, 200, 128), 128);
    let opts = Options::new("shapes", Task::Detect, "team/datasets/shapes", dir.join("ingest"));
    ingest::ingest(&store, &Source::Local(dir.join("ds")), &opts, &|_| {}).await.expect("ingest");
    let work = dir.join("work").display().to_string();
    let manifest = "s3://platform/team/datasets/shapes/manifest.ndjson";
    let lines = trainer(
        &s3,
        &[
            "train",
            "--manifest",
            manifest,
            "--output-prefix",
            "team/trainingjobs/p",
            "--epochs",
            "10",
            "--imgsz",
            "96",
            "--batch",
            "16",
            "--nbs",
            "16",
            "--warmup-epochs",
            "1",
            "--device",
            "cpu",
            "--work-dir",
            &work,
        ],
    );
    eprintln!("fixture model: {}", lines.last().map(|l| l["metrics"].to_string()).unwrap_or_default());
    let weights = "s3://platform/team/trainingjobs/p/weights/last.safetensors";
    let onnx = dir.join("export/model.onnx");
    let torchscript = dir.join("export/model.torchscript");
    // `export` of the weights to `output` with `flags`; returns its JSON lines.
    let export = |output: &str, flags: &[&str]| {
        let mut args = vec!["export", "--weights", weights, "--output", output, "--work-dir", &work];
        args.extend_from_slice(flags);
        trainer(&s3, &args)
    };
    export(&onnx.display().to_string(), &["--format", "onnx", "--dynamic"]);
    export("s3://platform/team/exports/p/model.onnx", &["--format", "onnx", "--dynamic"]);
    export(&torchscript.display().to_string(), &["--format", "torchscript", "--device", "cpu"]);
    // INT8 (QDQ) export of the same weights, calibrated and gated on the dataset (the gate is the
    // trainer tests' subject; this one only leaves room for CPUs whose float rounding differs).
    let int8 = dir.join("export/int8.onnx");
    let int8_flags =
        ["--format", "onnx", "--dynamic", "--int8", "--calibration", manifest, "--calibration-images", "64"];
    let done = export(&int8.display().to_string(), &[&int8_flags[..], &["--max-accuracy-drop", "3"]].concat());
    assert_eq!(done.last().map(|l| l["precision"].clone()), Some(serde_json::json!("int8")), "{done:?}");
    let preds = dir.join("val.json");
    trainer(
        &s3,
        &[
            "val",
            "--weights",
            weights,
            "--manifest",
            manifest,
            "--conf",
            CONF,
            "--iou",
            "0.7",
            "--device",
            "cpu",
            "--predictions",
            &preds.display().to_string(),
            "--work-dir",
            &work,
        ],
    );
    let val_predictions: Vec<Value> = serde_json::from_slice(&std::fs::read(&preds).expect("preds")).expect("json");

    // The val images, byte for byte as the trainer read them.
    let text = String::from_utf8(store.get("team/datasets/shapes/manifest.ndjson").await.expect("manifest").to_vec())
        .expect("utf8");
    let (_, records) = ocellus_dataset::manifest::from_ndjson(&text).expect("manifest");
    let mut images = Vec::new();
    for r in records.iter().filter(|r| r.split.as_str() == "val") {
        let key = r.url.trim_start_matches("s3://platform/");
        images.push((r.file.clone(), store.get(key).await.expect("image").to_vec()));
    }
    Fixture { s3, dir, onnx, int8, torchscript, val_predictions, images }
}

impl Fixture {
    /// Indices (into `images`) of images on which the trainer's validation found something.
    pub fn with_detections(&self) -> Vec<usize> {
        self.images
            .iter()
            .enumerate()
            .filter(|(_, (file, _))| {
                self.val_predictions
                    .iter()
                    .any(|v| v["file"] == file.as_str() && v["detections"].as_array().is_some_and(|d| !d.is_empty()))
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// A running predictor.
pub struct Predictor {
    child: Child,
    pub url: String,
    pub log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Predictor {
    /// Starts `ocellus-predictor serve` with `args`; waits until ready (or panics with its log).
    pub fn start(model: &Path, args: &[&str]) -> Predictor {
        Self::start_with(&model.display().to_string(), args, &[])
    }

    /// Like [`Predictor::start`] with a model URI and environment.
    pub fn start_with(model: &str, args: &[&str], env: &[(&str, &str)]) -> Predictor {
        let p = Self::spawn(model, args, env);
        p.wait_ready();
        p
    }

    /// Starts without waiting.
    pub fn spawn(model: &str, args: &[&str], env: &[(&str, &str)]) -> Predictor {
        let port = free_port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("predictor-{port}.log"));
        let f = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ocellus-predictor"));
        cmd.arg("serve")
            .arg("--model")
            .arg(model)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env("ORT_DYLIB_PATH", ocellus_tests::cache_dir().join("lib/libonnxruntime.so"))
            .env(
                "OCELLUS_MODEL_DIR",
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("predictor-model-{port}")),
            )
            .stdout(Stdio::from(f.try_clone().expect("log")))
            .stderr(Stdio::from(f));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn ocellus-predictor");
        Predictor { child, url: format!("http://127.0.0.1:{port}"), log }
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&self) {
        let url = format!("{}/readyz", self.url);
        // A blocking client on its own thread (callers may be inside a runtime).
        let ready = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let client = reqwest::blocking::Client::new();
            while Instant::now() < deadline {
                if client.get(&url).send().is_ok_and(|r| r.status().is_success()) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        })
        .join()
        .unwrap_or(false);
        assert!(ready, "predictor not ready in 60 s:\n{}", self.log());
    }

    /// Waits for the process to exit; returns its code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
    }
}

impl Drop for Predictor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        if let Some(port) = self.url.rsplit(':').next() {
            let _ = std::fs::remove_dir_all(
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("predictor-model-{port}")),
            );
        }
    }
}

/// A multipart form with one image and optional fields.
pub fn form(image: &[u8], fields: &[(&str, &str)]) -> reqwest::multipart::Form {
    let mut f = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(image.to_vec()).file_name("image.jpg").mime_str("image/jpeg").expect("mime"),
    );
    for (k, v) in fields {
        f = f.text(k.to_string(), v.to_string());
    }
    f
}
