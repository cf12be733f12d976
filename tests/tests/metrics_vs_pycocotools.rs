//! Our COCO-style mAP against pycocotools' COCOeval on the same ground truth and detections.

use ocellus_tests::fixtures::Rng;
use ocellus_tests::require_tool;
use ocellus_vision::metrics::{COCO_MAX_DETS, GroundTruth, ImageResult, evaluate};
use ocellus_vision::{BBox, Detection};
use serde_json::json;

const CLASSES: usize = 3;

fn unit(rng: &mut Rng) -> f32 {
    (rng.next_u64() % 1_000_000) as f32 / 1_000_000.0
}

/// Random scenes: jittered true positives, misses, class confusions and false positives.
fn scenes(seed: u64, n: usize, jitter: f32, fp_rate: u32) -> Vec<ImageResult> {
    let mut rng = Rng::from_state(seed);
    (0..n)
        .map(|_| {
            let mut img = ImageResult::default();
            for _ in 0..rng.range(1, 7) {
                let (w, h) = (rng.range(8, 120) as f32, rng.range(8, 120) as f32);
                let (x, y) = (rng.range(0, 500) as f32, rng.range(0, 360) as f32);
                let class = rng.range(0, CLASSES as u32) as usize;
                img.gts.push(GroundTruth { bbox: BBox::from_xywh(x, y, w, h), class });
                if rng.range(0, 100) < 85 {
                    let j = |rng: &mut Rng, s: f32| (unit(rng) - 0.5) * 2.0 * jitter * s;
                    let bbox = BBox::from_xywh(
                        x + j(&mut rng, w),
                        y + j(&mut rng, h),
                        w * (1.0 + j(&mut rng, 1.0)),
                        h * (1.0 + j(&mut rng, 1.0)),
                    );
                    let class = if rng.range(0, 100) < 5 { (class + 1) % CLASSES } else { class };
                    img.dets.push(Detection { bbox, score: unit(&mut rng), class });
                }
            }
            for _ in 0..rng.range(0, fp_rate + 1) {
                let bbox = BBox::from_xywh(
                    rng.range(0, 560) as f32,
                    rng.range(0, 400) as f32,
                    rng.range(5, 80) as f32,
                    rng.range(5, 80) as f32,
                );
                img.dets.push(Detection {
                    bbox,
                    score: unit(&mut rng) * 0.7,
                    class: rng.range(0, CLASSES as u32) as usize,
                });
            }
            img
        })
        .collect()
}

fn pycocotools(images: &[ImageResult]) -> (f64, f64) {
    let mut anns = vec![];
    let mut dets = vec![];
    for (i, img) in images.iter().enumerate() {
        for g in &img.gts {
            anns.push(json!({"id": anns.len() + 1, "image_id": i + 1, "category_id": g.class + 1, "iscrowd": 0,
                "bbox": [g.bbox.x1, g.bbox.y1, g.bbox.width(), g.bbox.height()], "area": g.bbox.area()}));
        }
        for d in &img.dets {
            dets.push(json!({"image_id": i + 1, "category_id": d.class + 1, "score": d.score,
                "bbox": [d.bbox.x1, d.bbox.y1, d.bbox.width(), d.bbox.height()]}));
        }
    }
    let gt = json!({
        "images": (1..=images.len()).map(|i| json!({"id": i, "width": 640, "height": 480})).collect::<Vec<_>>(),
        "annotations": anns,
        "categories": (1..=CLASSES).map(|c| json!({"id": c, "name": format!("c{c}")})).collect::<Vec<_>>(),
    });
    let dir = std::env::temp_dir().join(format!("ocellus-cocoeval-{}-{}", std::process::id(), images.len()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("gt.json"), gt.to_string()).expect("gt");
    std::fs::write(dir.join("dt.json"), serde_json::Value::Array(dets).to_string()).expect("dt");
    let script = "import json,sys\nfrom pycocotools.coco import COCO\nfrom pycocotools.cocoeval import COCOeval\n\
        gt=COCO(sys.argv[1]); dt=gt.loadRes(sys.argv[2]); e=COCOeval(gt,dt,'bbox'); e.evaluate(); e.accumulate(); e.summarize()\n\
        print(json.dumps([e.stats[0], e.stats[1]]))\n";
    let out = std::process::Command::new(require_tool("ocellus-python"))
        .args(["-c", script, &dir.join("gt.json").display().to_string(), &dir.join("dt.json").display().to_string()])
        .output()
        .expect("run python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = serde_json::from_str(stdout.lines().last().expect("line")).expect("json");
    let _ = std::fs::remove_dir_all(dir);
    (v[0], v[1])
}

#[test]
fn map_agrees_with_pycocotools() {
    for (seed, n, jitter, fps) in [(1, 80, 0.15, 2), (2, 40, 0.05, 0), (3, 120, 0.3, 6), (4, 10, 0.2, 1)] {
        let images = scenes(seed, n, jitter, fps);
        let ours = evaluate(&images, CLASSES, COCO_MAX_DETS);
        let (map, map50) = pycocotools(&images);
        assert!(
            (ours.map50_95 - map).abs() < 0.005,
            "seed {seed}: mAP50-95 ours {} vs pycocotools {map}",
            ours.map50_95
        );
        assert!((ours.map50 - map50).abs() < 0.005, "seed {seed}: mAP50 ours {} vs pycocotools {map50}", ours.map50);
        // The scenes are not trivial.
        assert!(map > 0.01 && map < 0.99, "seed {seed}: {map}");
        eprintln!("seed {seed}: ours {:.6}/{:.6} pycocotools {map:.6}/{map50:.6}", ours.map50_95, ours.map50);
    }
}
