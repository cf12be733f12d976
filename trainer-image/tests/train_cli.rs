//! `ocellus-trainer train` end to end: a dataset ingested into a real S3 server (moto), trained
//! from its manifest; results and weights land in S3.
#![cfg(feature = "torch")]

use std::process::Command;

use ocellus_dataset::Task;
use ocellus_dataset::fetch::Source;
use ocellus_dataset::ingest::{self, Options};
use ocellus_storage::s3::Store;
use ocellus_tests::fixtures;
use ocellus_tests::s3::S3Server;

fn trainer(s3: &S3Server, args: &[&str]) -> (i32, Vec<serde_json::Value>) {
    run(s3, "train", args)
}

fn run(s3: &S3Server, command: &str, args: &[&str]) -> (i32, Vec<serde_json::Value>) {
    let mut all = vec![command];
    all.extend_from_slice(args);
    let (code, lines, _) =
        ocellus_tests::run_json_cli(std::path::Path::new(env!("CARGO_BIN_EXE_ocellus-trainer")), &all, s3);
    (code, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trains_from_an_ingested_manifest() {
    let s3 = S3Server::start().expect("s3");
    let dir = std::env::temp_dir().join(format!("ocellus-train-cli-{}", std::process::id()));
    let store = ingest_shapes(&s3, "team/datasets/shapes", &dir).await;
    let work = dir.join("train").display().to_string();
    let (code, lines) = trainer(
        &s3,
        &[
            "--manifest",
            "s3://platform/team/datasets/shapes/manifest.ndjson",
            "--output-prefix",
            "team/trainingjobs/t1",
            "--epochs",
            "2",
            "--imgsz",
            "96",
            "--batch",
            "16",
            "--nbs",
            "16",
            "--warmup-epochs",
            "0",
            "--device",
            "cpu",
            "--work-dir",
            &work,
        ],
    );
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l["event"] == "epoch").count(), 2);
    let done = lines.last().expect("done");
    assert_eq!(done["event"], "done");
    assert_eq!(done["weightsUri"], "s3://platform/team/trainingjobs/t1/weights/last.safetensors");
    let results = store.get("team/trainingjobs/t1/results.jsonl").await.expect("results");
    let epochs: Vec<serde_json::Value> =
        String::from_utf8_lossy(&results).lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(epochs.iter().map(|e| e["epoch"].as_u64()).collect::<Vec<_>>(), vec![Some(1), Some(2)]);
    assert!(epochs.iter().all(|e| e["box_loss"].as_f64().is_some_and(f64::is_finite) && e["map50"].as_f64().is_some()));
    assert!(
        epochs.iter().all(|e| e["per_class_ap"].as_array().is_some_and(|a| a.len() == 3)),
        "per-class AP each epoch"
    );
    assert!(
        store.head("team/trainingjobs/t1/weights/last.safetensors").await.expect("head").is_some_and(|n| n > 1_000_000)
    );
    let info: serde_json::Value =
        serde_json::from_slice(&store.get("team/trainingjobs/t1/weights/last.json").await.expect("info"))
            .expect("json");
    assert_eq!(
        (info["architecture"].as_str(), info["imgsz"].as_u64(), info["names"].as_array().map(Vec::len)),
        (Some("yolov8n"), Some(96), Some(3))
    );

    // val: metrics with per-class AP, predictions saved.
    let weights = "s3://platform/team/trainingjobs/t1/weights/last.safetensors";
    let (code, lines) = run(
        &s3,
        "val",
        &[
            "--weights",
            weights,
            "--manifest",
            "s3://platform/team/datasets/shapes/manifest.ndjson",
            "--predictions",
            "s3://platform/team/trainingjobs/t1/val/predictions.json",
            "--device",
            "cpu",
            "--work-dir",
            &work,
        ],
    );
    assert_eq!(code, 0, "{lines:?}");
    let done = lines.last().expect("done");
    assert_eq!(done["perClass"].as_array().map(Vec::len), Some(3), "{done}");
    assert!(done["metrics"]["map50"].as_f64().is_some_and(|m| (0.0..=1.0).contains(&m)));
    let preds: Vec<serde_json::Value> =
        serde_json::from_slice(&store.get("team/trainingjobs/t1/val/predictions.json").await.expect("preds"))
            .expect("json");
    assert_eq!(preds.len() as u64, done["images"].as_u64().expect("images"));

    // export: ONNX to S3 and TorchScript to a local path, each with a sidecar carrying its SHA-256.
    let (code, lines) = run(
        &s3,
        "export",
        &[
            "--weights",
            weights,
            "--format",
            "onnx",
            "--dynamic",
            "--output",
            "s3://platform/team/exports/e1/model.onnx",
            "--work-dir",
            &work,
        ],
    );
    assert_eq!(code, 0, "{lines:?}");
    let onnx = store.get("team/exports/e1/model.onnx").await.expect("onnx");
    let sidecar: serde_json::Value =
        serde_json::from_slice(&store.get("team/exports/e1/model.onnx.json").await.expect("sidecar")).expect("json");
    assert_eq!(sidecar["sha256"], lines.last().expect("done")["sha256"]);
    assert_eq!((sidecar["format"].as_str(), sidecar["dynamic"].as_bool()), (Some("onnx"), Some(true)));
    assert_eq!(lines.last().expect("done")["sizeBytes"].as_u64(), Some(onnx.len() as u64));
    let ts = dir.join("out/model.torchscript").display().to_string();
    let (code, lines) = run(
        &s3,
        "export",
        &["--weights", weights, "--format", "torchscript", "--output", &ts, "--device", "cpu", "--work-dir", &work],
    );
    assert_eq!(code, 0, "{lines:?}");
    assert!(tch::CModule::load(&ts).is_ok());
    // Refusals: unknown format, int8 for TorchScript or without calibration images, half TorchScript on CPU, TensorRT absent.
    for (args, reason) in [
        (vec!["--format", "tflite"], "UnsupportedFormat"),
        (vec!["--format", "torchscript", "--int8"], "InvalidOptions"),
        (vec!["--format", "onnx", "--int8"], "InvalidOptions"),
        (vec!["--format", "torchscript", "--half", "--device", "cpu"], "InvalidOptions"),
        (vec!["--format", "engine"], "TensorRTUnavailable"),
    ] {
        let mut a = vec!["--weights", weights, "--output", "s3://platform/x/model", "--work-dir", &work];
        a.extend(args);
        let (code, lines) = run(&s3, "export", &a);
        assert_eq!(
            (code, lines.last().map(|l| l["reason"].clone())),
            (2, Some(serde_json::json!(reason))),
            "{lines:?}"
        );
    }
    // A tampered sidecar hash is refused.
    let mut bad = info.clone();
    bad["sha256"] = serde_json::json!("00");
    store
        .put(
            "team/trainingjobs/t1/weights/last.json",
            serde_json::to_vec(&bad).expect("json").into(),
            "application/json",
        )
        .await
        .expect("put");
    let (code, lines) = run(
        &s3,
        "export",
        &["--weights", weights, "--format", "onnx", "--output", "s3://platform/x/m.onnx", "--work-dir", &work],
    );
    assert_eq!((code, lines.last().map(|l| l["reason"].clone())), (2, Some(serde_json::json!("ChecksumMismatch"))));

    // Bad input: exit 2 with a reason, nothing trained.
    let (code, lines) = trainer(
        &s3,
        &["--manifest", "s3://platform/nope/manifest.ndjson", "--output-prefix", "x", "--work-dir", &work],
    );
    assert_eq!(code, 2);
    assert_eq!(lines.last().expect("error")["reason"], "ManifestNotFound");
    let (code, lines) = trainer(
        &s3,
        &[
            "--manifest",
            "s3://platform/team/datasets/shapes/manifest.ndjson",
            "--output-prefix",
            "x",
            "--architecture",
            "yolov8n-seg",
            "--work-dir",
            &work,
        ],
    );
    assert_eq!(code, 2);
    assert!(lines.last().expect("error")["message"].as_str().is_some_and(|m| m.contains("not supported yet")));
    let _ = std::fs::remove_dir_all(dir);
}

/// Ingests a small shapes dataset into `platform/<prefix>`.
async fn ingest_shapes(s3: &S3Server, prefix: &str, dir: &std::path::Path) -> Store {
    let store = Store::new(&s3.config(), "platform");
    store.ensure_bucket().await.expect("bucket");
    fixtures::write_yolo(&dir.join("ds"), &fixtures::samples(5, 60, 96), 96);
    let opts = Options::new("shapes", Task::Detect, prefix, dir.join("ingest"));
    ingest::ingest(&store, &Source::Local(dir.join("ds")), &opts, &|_| {}).await.expect("ingest");
    store
}

fn train_args<'a>(output: &'a str, work: &'a str) -> Vec<&'a str> {
    vec![
        "--manifest",
        "s3://platform/team/datasets/pr/manifest.ndjson",
        "--output-prefix",
        output,
        "--epochs",
        "4",
        "--imgsz",
        "96",
        "--batch",
        "8",
        "--nbs",
        "8",
        "--warmup-epochs",
        "0",
        "--device",
        "cpu",
        "--work-dir",
        work,
        "--workers",
        "1",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_pauses_and_resume_finishes_like_an_uninterrupted_run() {
    use std::io::{BufRead, BufReader};
    let s3 = S3Server::start().expect("s3");
    let dir = std::env::temp_dir().join(format!("ocellus-pause-{}", std::process::id()));
    let store = ingest_shapes(&s3, "team/datasets/pr", &dir).await;
    let work = dir.join("work").display().to_string();

    // Reference: uninterrupted.
    let (code, lines) = trainer(&s3, &train_args("team/trainingjobs/full", &work));
    assert_eq!(code, 0, "{lines:?}");
    let full = lines.last().expect("done")["metrics"].clone();

    // Paused after the first epoch by SIGTERM.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ocellus-trainer"))
        .arg("train")
        .args(train_args("team/trainingjobs/paused", &work))
        .envs(s3.env())
        .env("OCELLUS_S3_BUCKET", "platform")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut seen = vec![];
    let reader = BufReader::new(child.stdout.take().expect("stdout"));
    for line in reader.lines() {
        let v: serde_json::Value = serde_json::from_str(&line.expect("line")).expect("json");
        if v["event"] == "epoch" && seen.iter().all(|l: &serde_json::Value| l["event"] != "epoch") {
            Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        }
        seen.push(v);
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(4), "{seen:?}");
    let paused = seen.last().expect("paused line");
    assert_eq!(paused["event"], "paused", "{seen:?}");
    assert!(store.head("team/trainingjobs/paused/checkpoints/last.json").await.expect("head").is_some());

    // Tensors damaged in storage, beside their own sidecar (same position), are refused.
    let mut resume = train_args("team/trainingjobs/paused", &work);
    resume.push("--resume");
    let tensors = "team/trainingjobs/paused/checkpoints/last.safetensors";
    let good = store.get(tensors).await.expect("tensors");
    let mut bad = good.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    store.put(tensors, bad.into(), "application/octet-stream").await.expect("put");
    let (code, lines) = trainer(&s3, &resume);
    assert_eq!(code, 2, "{lines:?}");
    assert!(lines.last().expect("failure").to_string().contains("SHA-256"), "{lines:?}");
    store.put(tensors, good, "application/octet-stream").await.expect("put");

    // A kill between a checkpoint's two writes leaves the sidecar of an earlier one beside the
    // newer tensors: those carry their own position, which wins (the checks below fail if the
    // run restarts from the sidecar's epoch 0, and a hash mismatch would stop it).
    let key = "team/trainingjobs/paused/checkpoints/last.json";
    let mut stale: serde_json::Value = serde_json::from_slice(&store.get(key).await.expect("sidecar")).expect("json");
    stale["progress"]["epoch"] = 0.into();
    stale["progress"]["reports"] = serde_json::json!([]);
    stale["sha256"] = "0".repeat(64).into();
    store.put(key, serde_json::to_vec(&stale).expect("json").into(), "application/json").await.expect("put");

    // Resumed: continues the epoch numbering and finishes.
    let (code, lines) = trainer(&s3, &resume);
    assert_eq!(code, 0, "{lines:?}");
    let epochs: Vec<u64> =
        lines.iter().filter(|l| l["event"] == "epoch").filter_map(|l| l["metrics"]["epoch"].as_u64()).collect();
    assert!(!epochs.is_empty() && epochs[0] >= 2 && *epochs.last().expect("last") == 4, "{epochs:?}");
    let results = store.get("team/trainingjobs/paused/results.jsonl").await.expect("results");
    let numbered: Vec<u64> = String::from_utf8_lossy(&results)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["epoch"].as_u64())
        .collect();
    assert_eq!(numbered, vec![1, 2, 3, 4]);
    let resumed = lines.last().expect("done")["metrics"].clone();
    // Model, EMA, optimiser moments, RNG and schedule are restored: the run is reproduced exactly.
    for k in ["box_loss", "cls_loss", "dfl_loss"] {
        let (a, b) = (full[k].as_f64().expect("loss"), resumed[k].as_f64().expect("loss"));
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{k}: uninterrupted {a} vs resumed {b}");
    }
    let (a, b) = (full["map50"].as_f64().expect("map"), resumed["map50"].as_f64().expect("map"));
    assert!((a - b).abs() < 0.05, "uninterrupted mAP50 {a} vs paused-and-resumed {b}");
    eprintln!("uninterrupted {full}\nresumed {resumed}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trains_a_classifier_from_a_classify_dataset() {
    let s3 = S3Server::start().expect("s3");
    let dir = std::env::temp_dir().join(format!("ocellus-train-cls-{}", std::process::id()));
    let store = Store::new(&s3.config(), "platform");
    store.ensure_bucket().await.expect("bucket");
    fixtures::write_folders(&dir.join("ds"), 4, 60, 64);
    let opts = Options::new("shapes-cls", Task::Classify, "team/datasets/cls", dir.join("ingest"));
    ingest::ingest(&store, &Source::Local(dir.join("ds")), &opts, &|_| {}).await.expect("ingest");
    let work = dir.join("train").display().to_string();
    let manifest = "s3://platform/team/datasets/cls/manifest.ndjson";
    // A detector on a classify dataset is refused, clearly.
    let (code, lines) = trainer(
        &s3,
        &[
            "--manifest",
            manifest,
            "--output-prefix",
            "team/trainingjobs/c0",
            "--architecture",
            "yolov8n",
            "--work-dir",
            &work,
        ],
    );
    assert_eq!(code, 2);
    assert!(lines.last().expect("error")["message"].as_str().is_some_and(|m| m.contains("yolov8n-cls")), "{lines:?}");
    let (code, lines) = trainer(
        &s3,
        &[
            "--manifest",
            manifest,
            "--output-prefix",
            "team/trainingjobs/c1",
            "--architecture",
            "yolov8n-cls",
            "--epochs",
            "2",
            "--imgsz",
            "64",
            "--batch",
            "16",
            "--nbs",
            "16",
            "--warmup-epochs",
            "0",
            "--device",
            "cpu",
            "--work-dir",
            &work,
        ],
    );
    assert_eq!(code, 0, "{lines:?}");
    let results = store.get("team/trainingjobs/c1/results.jsonl").await.expect("results");
    let epochs: Vec<serde_json::Value> =
        String::from_utf8_lossy(&results).lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(epochs.len(), 2);
    assert!(epochs.iter().all(|e| e["top1"].as_f64().is_some_and(|t| (0.0..=1.0).contains(&t))
        && e["cls_loss"].as_f64().is_some_and(f64::is_finite)));
    assert!(store.head("team/trainingjobs/c1/checkpoints/last.json").await.expect("head").is_some());
    let info: serde_json::Value =
        serde_json::from_slice(&store.get("team/trainingjobs/c1/weights/last.json").await.expect("info"))
            .expect("json");
    assert_eq!((info["task"].as_str(), info["architecture"].as_str()), (Some("classify"), Some("yolov8n-cls")));
    // And it exports.
    let (code, lines) = run(
        &s3,
        "export",
        &[
            "--weights",
            "s3://platform/team/trainingjobs/c1/weights/last.safetensors",
            "--format",
            "onnx",
            "--output",
            "s3://platform/team/exports/c1/model.onnx",
            "--work-dir",
            &work,
        ],
    );
    assert_eq!(code, 0, "{lines:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `train --start-weights s3://…/best.pt` (a TrainingJob's `model.from.uri` at an Ultralytics
/// checkpoint): imported without Python, every layer loaded, and the first epoch already at the
/// checkpoint's accuracy on the same kind of shapes (the fixture's classes are ours, in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fine_tunes_from_an_ultralytics_checkpoint_in_s3() {
    let s3 = S3Server::start().expect("s3");
    let dir = std::env::temp_dir().join(format!("ocellus-train-pt-{}", std::process::id()));
    let store = Store::new(&s3.config(), "platform");
    store.ensure_bucket().await.expect("bucket");
    fixtures::write_yolo(&dir.join("ds"), &fixtures::samples(11, 60, 160), 160);
    let opts = Options::new("shapes", Task::Detect, "team/datasets/ft", dir.join("ingest"));
    ingest::ingest(&store, &Source::Local(dir.join("ds")), &opts, &|_| {}).await.expect("ingest");
    let pt = ocellus_tests::ultralytics::fixture().path("best.pt");
    store.put_file("team/models/best.pt", &pt, "application/octet-stream").await.expect("upload");
    let work = dir.join("work").display().to_string();
    let (code, lines) = trainer(
        &s3,
        &[
            "--manifest",
            "s3://platform/team/datasets/ft/manifest.ndjson",
            "--output-prefix",
            "team/trainingjobs/ft",
            "--architecture",
            "yolov8n",
            "--start-weights",
            "s3://platform/team/models/best.pt",
            "--epochs",
            "1",
            "--imgsz",
            "160",
            "--batch",
            "16",
            "--nbs",
            "16",
            "--lr0",
            "0.0001",
            "--warmup-epochs",
            "0",
            "--device",
            "cpu",
            "--work-dir",
            &work,
        ],
    );
    assert_eq!(code, 0, "{lines:?}");
    let import = lines.iter().find(|l| l["phase"] == "import").expect("an import line");
    assert_eq!((import["architecture"].as_str(), import["classes"].as_u64()), (Some("yolov8n"), Some(3)), "{import}");
    let tune = lines.iter().find(|l| l["phase"] == "fine-tune").expect("a fine-tune line");
    assert_eq!(tune["reinitialized"], serde_json::json!([]), "{tune}");
    let epoch = lines.iter().find(|l| l["event"] == "epoch").expect("an epoch");
    assert!(epoch["metrics"]["map50"].as_f64().is_some_and(|m| m >= 0.8), "{epoch}");

    int8_export_is_gated_on_validation_map(&s3, &store, &dir, &work).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// INT8 export of the fine-tuned weights: calibrated on the dataset, validated as float and as
/// INT8 in ONNX Runtime on the `val` split; within the gate it succeeds with both figures in the
/// sidecar, and with ranges calibrated on blank images the gate refuses it, naming both.
async fn int8_export_is_gated_on_validation_map(s3: &S3Server, store: &Store, dir: &std::path::Path, work: &str) {
    let weights = "s3://platform/team/trainingjobs/ft/weights/best.safetensors";
    let manifest = "s3://platform/team/datasets/ft/manifest.ndjson";
    let export = |calibration: &'static str, output: &'static str| {
        let args = [
            "--weights",
            weights,
            "--format",
            "onnx",
            "--int8",
            "--calibration",
            calibration,
            "--gate-manifest",
            manifest,
            "--calibration-images",
            "64",
            "--output",
            output,
            "--work-dir",
            work,
        ];
        run(s3, "export", &args)
    };
    let (code, lines) = export(manifest, "s3://platform/team/exports/int8/model.onnx");
    assert_eq!(code, 0, "{lines:?}");
    let done = lines.last().expect("done");
    assert_eq!(done["precision"], "int8", "{done}");
    let sidecar: serde_json::Value =
        serde_json::from_slice(&store.get("team/exports/int8/model.onnx.json").await.expect("sidecar")).expect("json");
    let q = &sidecar["quantization"];
    let (fp32, int8) = (q["fp32Map"].as_f64().expect("fp32Map"), q["int8Map"].as_f64().expect("int8Map"));
    eprintln!("INT8 gate: {q}");
    assert!(fp32 >= 0.5, "a model worth quantising: {q}");
    assert!(fp32 - int8 <= 0.01, "within the default gate of 1 point: {q}");
    assert_eq!((q["method"].as_str(), q["images"].as_u64()), (Some("percentile"), Some(60)), "{q}");
    let onnx = store.get("team/exports/int8/model.onnx").await.expect("onnx");
    let text = String::from_utf8_lossy(&onnx);
    assert!(text.contains("QuantizeLinear") && text.contains("DequantizeLinear"), "a QDQ model");

    // Blank calibration images: every activation range collapses and the gate must refuse.
    let blank = dir.join("blank");
    fixtures::write_yolo(&blank, &fixtures::samples(12, 8, 160), 160);
    for entry in walk(&blank) {
        if let Ok(img) = image::open(&entry) {
            image::RgbImage::new(img.width(), img.height()).save(&entry).expect("blank image");
        }
    }
    let opts = Options::new("shapes", Task::Detect, "team/datasets/blank", dir.join("ingest-blank"));
    ingest::ingest(store, &Source::Local(blank), &opts, &|_| {}).await.expect("ingest blank");
    let (code, lines) =
        export("s3://platform/team/datasets/blank/manifest.ndjson", "s3://platform/team/exports/bad/model.onnx");
    let last = lines.last().expect("error");
    assert_eq!((code, last["reason"].as_str()), (2, Some("AccuracyGateFailed")), "{lines:?}");
    let message = last["message"].as_str().expect("message");
    eprintln!("blank calibration: {message}");
    assert!(message.contains(&format!("{fp32:.4}")) && message.contains("allowed: 1 points"), "{message}");
    assert!(store.head("team/exports/bad/model.onnx").await.expect("head").is_none(), "nothing half-written");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}
