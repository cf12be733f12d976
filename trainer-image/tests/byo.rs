//! Bring your own Ultralytics model: a `.pt` checkpoint written by the pinned Ultralytics
//! (`hack/setup.sh ultralytics`) imports without Python into a model whose forward pass equals
//! Ultralytics' own, validates to Ultralytics' accuracy, and fine-tunes from there; hostile
//! checkpoints are refused with a clear message and nothing in them runs.
#![cfg(feature = "torch")]

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use ocellus_tests::ultralytics::{Labelled, fixture};
use ocellus_trainer::import;
use ocellus_trainer::loss::Target;
use ocellus_trainer::model::{Architecture, Detector};
use ocellus_trainer::train::TrainConfig;
use ocellus_trainer::train::data::Sample;
use ocellus_trainer::train::detect::validate;
use ocellus_trainer::train::session::Session;
use tch::{Device, Tensor, nn};

/// Decoded boxes, in input pixels (up to 160), against Ultralytics' float32 forward pass of the
/// same (float16-stored) weights: float32 rounding through ~60 layers is ~1e-4 px here (as in
/// `parity.rs`); a wrong layer or a mis-mapped tensor moves boxes by pixels.
const BOX_TOL: f64 = 1e-2;
/// Class probabilities.
const SCORE_TOL: f64 = 1e-4;

fn samples(set: &[Labelled]) -> Vec<Sample> {
    set.iter()
        .map(|l| Sample {
            path: l.path.clone(),
            targets: l.boxes.iter().map(|(c, xywh)| Target { class: *c as i64, xywh: *xywh }).collect(),
        })
        .collect()
}

fn imported() -> import::Imported {
    import::import(&fixture().path("best.pt"), 640).expect("import best.pt")
}

/// A detector of the imported architecture holding the imported weights.
fn detector(imp: &import::Imported) -> (nn::VarStore, Detector) {
    let arch: Architecture = imp.info.architecture.parse().expect("arch");
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = Detector::new(&(vs.root() / "model"), &arch, imp.info.names.len() as i64);
    vs.copy(&imp.vs).expect("copy weights");
    (vs, model)
}

#[test]
fn imports_a_checkpoint_whose_forward_pass_equals_ultralytics() {
    let f = fixture();
    let imp = imported();
    assert_eq!(imp.info.architecture, "yolov8n");
    assert_eq!(imp.info.names, ["circle", "square", "triangle"]);
    assert_eq!(imp.info.imgsz, 160, "the checkpoint's train_args.imgsz");
    assert_eq!(imp.version.as_deref(), f.val["ultralytics"].as_str());

    let fwd: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("forward.json")).expect("forward.json")).expect("json");
    let floats =
        |k: &str| -> Vec<f32> { fwd[k].as_array().expect(k).iter().map(|v| v.as_f64().expect("f") as f32).collect() };
    let (input, want) = (floats("input"), floats("output"));
    let shape: Vec<i64> =
        fwd["output_shape"].as_array().expect("shape").iter().map(|v| v.as_i64().expect("i")).collect();
    let (_vs, model) = detector(&imp);
    let x = Tensor::from_slice(&input).view([1, 3, 160, 160]);
    let y = tch::no_grad(|| model.predict(&x)).squeeze_dim(0);
    assert_eq!(y.size(), shape);
    let got = Vec::<f32>::try_from(y.flatten(0, -1)).expect("vec");
    let anchors = shape[1] as usize;
    let (mut box_err, mut score_err) = (0f64, 0f64);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let d = f64::from((g - w).abs());
        if i < 4 * anchors { box_err = box_err.max(d) } else { score_err = score_err.max(d) }
    }
    assert!(box_err <= BOX_TOL, "boxes differ by up to {box_err} px");
    assert!(score_err <= SCORE_TOL, "scores differ by up to {score_err}");
    // The comparison means something: the model is confident somewhere and not everywhere.
    let scores = &want[4 * anchors..];
    let max = scores.iter().copied().fold(0f32, f32::max);
    let mean = scores.iter().sum::<f32>() / scores.len() as f32;
    assert!(max > 0.5 && mean < 0.05, "degenerate reference output (max {max}, mean {mean})");
}

#[test]
fn validates_to_ultralytics_accuracy_and_fine_tunes_from_it() {
    let f = fixture();
    let imp = imported();
    let val = Arc::new(samples(&f.split("val")));
    let (_vs, model) = detector(&imp);
    let ours = validate(&model, &val, 160, 16, Device::Cpu, 2).expect("validate");
    let (their50, their50_95) = (f.val["map50"].as_f64().expect("map50"), f.val["map50_95"].as_f64().expect("map"));
    eprintln!(
        "imported: ours mAP50 {:.4} mAP50-95 {:.4}; Ultralytics {their50:.4} {their50_95:.4}",
        ours.map50, ours.map50_95
    );
    // The two validators differ in letterboxing (Ultralytics' val batches are rectangular) and in
    // AP integration; on the benchmark they agree within 0.02 mAP50-95.
    assert!((ours.map50_95 - their50_95).abs() <= 0.05, "ours {} vs Ultralytics {their50_95}", ours.map50_95);
    assert!(ours.map50 >= 0.9, "mAP50 {}", ours.map50);

    // One epoch of fine-tuning from the checkpoint keeps that accuracy; from scratch it is ~0. At a
    // fine-tuning rate (1e-4): without a warm-up, AdamW's fresh moments at 1e-3 take big first
    // steps — Ultralytics itself, so fine-tuned from this best.pt for one epoch, drops to mAP50 0.29.
    let dir = std::env::temp_dir().join(format!("ocellus-byo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let start = dir.join("start.safetensors");
    imp.vs.save(&start).expect("save");
    let cfg = TrainConfig { epochs: 1, imgsz: 160, nbs: 16, warmup_epochs: 0.0, lr0: 1e-4, ..Default::default() };
    let arch: Architecture = "yolov8n".parse().expect("arch");
    let train = Arc::new(samples(&f.split("train")));
    let never = std::sync::atomic::AtomicBool::new(false);
    let epoch = |init: bool| {
        let mut s = Session::new(&arch, 3, &cfg).expect("session");
        if init {
            let report = s.init_from(&start).expect("init");
            assert!(report.reinitialized.is_empty(), "{:?}", report.reinitialized);
        }
        let mut last = None;
        s.run(train.clone(), val.clone(), &cfg, &never, &mut |r, _| last = Some(r.clone())).expect("run");
        last.expect("one epoch")
    };
    let tuned = epoch(true);
    let scratch = epoch(false);
    let _ = std::fs::remove_dir_all(dir);
    eprintln!("after one epoch: fine-tuned mAP50 {:.4}, from scratch {:.4}", tuned.map50, scratch.map50);
    assert!(tuned.map50 >= their50 - 0.1, "fine-tuning lost the checkpoint's accuracy: {tuned:?}");
    assert!(scratch.map50 < 0.5 * tuned.map50, "scratch {} vs fine-tuned {}", scratch.map50, tuned.map50);
}

/// `ocellus-trainer import` on a local path; returns the exit code and the last JSON line.
fn import_cli(from: &Path, out: &Path) -> (i32, serde_json::Value) {
    let o = Command::new(env!("CARGO_BIN_EXE_ocellus-trainer"))
        .args(["import", "--from"])
        .arg(from)
        .arg("--output")
        .arg(out)
        .arg("--work-dir")
        .arg(out.with_extension("work"))
        .output()
        .expect("run ocellus-trainer");
    let last = String::from_utf8_lossy(&o.stdout).lines().rev().find_map(|l| serde_json::from_str(l).ok());
    (o.status.code().unwrap_or(-1), last.unwrap_or_default())
}

/// The fixture's `.pt` with entries replaced (`Some`) or removed (`None`).
fn rewrite(src: &Path, dest: &Path, change: &dyn Fn(&str) -> Option<Option<Vec<u8>>>) {
    let mut zin = zip::ZipArchive::new(std::fs::File::open(src).expect("open")).expect("zip");
    let mut zout = zip::ZipWriter::new(std::fs::File::create(dest).expect("create"));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut e = zin.by_index(i).expect("entry");
        let name = e.name().to_string();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).expect("read");
        match change(&name) {
            Some(None) => continue,
            Some(Some(b)) => bytes = b,
            None => {}
        }
        zout.start_file(name, opts).expect("start");
        zout.write_all(&bytes).expect("write");
    }
    zout.finish().expect("finish");
}

#[test]
fn the_cli_imports_and_refuses_hostile_checkpoints() {
    let f = fixture();
    let dir = std::env::temp_dir().join(format!("ocellus-byo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pt = f.path("best.pt");

    let out = dir.join("weights/best.safetensors");
    let (code, done) = import_cli(&pt, &out);
    assert_eq!(code, 0, "{done}");
    assert_eq!((done["architecture"].as_str(), done["classes"].as_u64()), (Some("yolov8n"), Some(3)));
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("weights/best.json")).expect("info")).expect("json");
    assert_eq!(info["format"], "safetensors");
    assert_eq!(info["names"], serde_json::json!(["circle", "square", "triangle"]));

    // A pickle that names os.system: refused by name, and the command did not run.
    let marker = dir.join("pwned");
    let cmd = format!("touch {}", marker.display());
    let mut evil = b"\x80\x02cos\nsystem\nX".to_vec();
    evil.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
    evil.extend_from_slice(cmd.as_bytes());
    evil.extend_from_slice(b"\x85R.");
    let hostile = dir.join("hostile.pt");
    rewrite(&pt, &hostile, &|n| n.ends_with("/data.pkl").then(|| Some(evil.clone())));
    let (code, err) = import_cli(&hostile, &dir.join("h.safetensors"));
    assert_eq!(code, 2, "{err}");
    assert_eq!(err["reason"], "InvalidCheckpoint");
    assert!(err["message"].as_str().is_some_and(|m| m.contains("`os.system`")), "{err}");
    assert!(!marker.exists(), "the pickle ran");

    // Truncated: refused as not a whole archive.
    let bytes = std::fs::read(&pt).expect("read");
    let cut = dir.join("cut.pt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let (code, err) = import_cli(&cut, &dir.join("c.safetensors"));
    assert_eq!(code, 2, "{err}");
    assert!(err["message"].as_str().is_some_and(|m| m.contains("not a PyTorch zip archive")), "{err}");

    // A storage shorter than its tensors claim (a claim of a huge allocation looks the same).
    let short = dir.join("short.pt");
    rewrite(&pt, &short, &|n| n.ends_with("/data/0").then(|| Some(vec![0u8; 8])));
    let (code, err) = import_cli(&short, &dir.join("s.safetensors"));
    assert_eq!(code, 2, "{err}");
    assert!(err["message"].as_str().is_some_and(|m| m.contains("claims")), "{err}");

    // A storage the pickle names but the archive lacks.
    let missing = dir.join("missing.pt");
    rewrite(&pt, &missing, &|n| n.ends_with("/data/1").then_some(None));
    let (code, err) = import_cli(&missing, &dir.join("m.safetensors"));
    assert_eq!(code, 2, "{err}");
    assert!(err["message"].as_str().is_some_and(|m| m.contains("data/1")), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
