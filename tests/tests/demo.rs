//! The main job, `hack/demo.sh`, in short: `ocellus-demo --exit` with 3 epochs. Its report
//! must hold a real validation mAP, a cold start through the gateway whose detections are the
//! predictor's own, and the prediction drawn on the held-out image. Needs the libtorch trainer
//! binary (`hack/test.sh` builds it before running this test with `--features demo`).

use std::process::Command;

#[test]
fn the_demo_uploads_trains_exports_serves_and_reports() {
    let out = std::env::temp_dir().join(format!("ocellus-demo-test-{}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_ocellus-demo"))
        .args(["--exit", "--epochs", "3", "--images", "60", "--out"])
        .arg(&out)
        .output()
        .expect("run ocellus-demo");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "the demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    for step in ["uploaded shapes.zip", "dataset shapes ready: 60 images", "train [", "cold start", "done in"] {
        assert!(stdout.contains(step), "no '{step}' in the demo's output:\n{stdout}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json")).expect("json");
    assert_eq!(report["detections_match_direct"], true);
    assert_eq!(report["epochs"], 3);
    assert_eq!(report["dataset"]["imageCount"], 60);
    let map = report["map50_95"].as_f64().expect("a validation mAP50-95");
    assert!((0.0..=1.0).contains(&map), "{map}");
    let cold = report["cold_start_seconds"].as_f64().expect("cold start");
    assert!(cold > 0.0 && cold < 120.0, "{cold}");
    assert!(report["epoch_seconds"].as_f64().is_some_and(|s| s > 0.0), "{report}");
    let png = image::open(out.join("prediction.png")).expect("prediction.png").to_rgb8();
    assert_eq!(png.dimensions(), (640, 640), "the 160-pixel held-out image, 4x");
    // Red pixels are the detections' boxes: as many boxes drawn as detected (none, none drawn).
    let red = png.pixels().filter(|p| p.0 == [230, 20, 20]).count();
    let detected = report["detections"].as_array().expect("detections").len();
    assert_eq!(red > 0, detected > 0, "{red} red pixels for {detected} detections");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("mAP50-95") && md.contains("curl"), "{md}");
    assert!(!out.join("kubeconfig").exists(), "the kubeconfig of a stopped cluster is left behind");
    // Nothing the cluster started outlives the demo (its processes carry the cluster's marker).
    let stderr = String::from_utf8_lossy(&run.stderr);
    let id = stderr
        .lines()
        .find_map(|l| l.split("local cluster ").nth(1)?.split_whitespace().next())
        .expect("the cluster's id in the demo's output");
    let left = ocellus_tests::proc::processes_with_marker(id);
    assert!(left.is_empty(), "processes of the demo's cluster left running: {left:?}");
    let _ = std::fs::remove_dir_all(&out);
}
