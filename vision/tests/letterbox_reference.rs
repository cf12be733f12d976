//! `letterbox` and `letterbox_dataset` against Ultralytics' own output (ultralytics 8.4 with
//! opencv-python 5.0: `LetterBox` for prediction, `load_image` + `LetterBox` for datasets), stored
//! by `bench/letterbox_reference.py` in `tests/data/letterbox`.
//!
//! Tolerance: 0. `resize_linear` is OpenCV's integer arithmetic step for step (fixed-point
//! weights, the same truncations and rounding), not an approximation of it, so any difference is
//! a bug. (OpenCV 4.x rounds the last few bytes of each row with its scalar code instead of the
//! SIMD formula; references regenerated with it could differ by 1 there.)

use std::path::{Path, PathBuf};

use image::RgbImage;
use ocellus_vision::letterbox::{Letterbox, letterbox, letterbox_dataset};
use serde_json::Value;

const TOLERANCE: u8 = 0;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/letterbox")
}

fn png(name: &str) -> RgbImage {
    let path = data().join(format!("{name}.png"));
    image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

fn cases() -> Value {
    let text = std::fs::read_to_string(data().join("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json parses")
}

fn u32_of(v: &Value) -> u32 {
    v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or_else(|| panic!("not a u32: {v}"))
}

/// `[new_w, new_h, pad_left, pad_top]`.
fn dims(lb: &Letterbox) -> [u32; 4] {
    [lb.new_w, lb.new_h, lb.pad_left, lb.pad_top]
}

#[test]
fn pixels_match_ultralytics() {
    let all = cases();
    let cases = all["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5);
    for c in cases {
        let name = c["name"].as_str().expect("name");
        let mut src = png(c["source"].as_str().expect("source"));
        if let Some(crop) = c["crop"].as_array() {
            let [x, y, w, h] = [0, 1, 2, 3].map(|i| u32_of(&crop[i]));
            src = image::imageops::crop_imm(&src, x, y, w, h).to_image();
        }
        let size = u32_of(&c["size"]);
        let (got, lb) = match c["path"].as_str() {
            Some("predict") => letterbox(&src, size),
            Some("dataset") => letterbox_dataset(&src, size),
            other => panic!("{name}: unknown path {other:?}"),
        };
        let want_dims = ["new_w", "new_h", "pad_left", "pad_top"].map(|k| u32_of(&c[k]));
        assert_eq!(dims(&lb), want_dims, "{name}: geometry");
        let want = png(name);
        assert_eq!(got.dimensions(), want.dimensions(), "{name}");
        let diffs: Vec<u8> = got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| a.abs_diff(*b)).collect();
        let max = diffs.iter().copied().max().unwrap_or(0);
        let off = diffs.iter().filter(|d| **d > 0).count();
        #[allow(clippy::absurd_extreme_comparisons, reason = "the tolerance is a named bound, 0 today")]
        let within = max <= TOLERANCE;
        assert!(within, "{name}: max abs difference {max}, {off} of {} values differ", diffs.len());
    }
}

#[test]
fn geometry_matches_ultralytics() {
    let all = cases();
    let geo = all["geometry"].as_array().expect("geometry");
    assert!(geo.len() >= 100);
    for g in geo {
        let [w, h, size] = [0, 1, 2].map(|i| u32_of(&g[i]));
        let want = |i: usize| -> [u32; 4] { [0, 1, 2, 3].map(|k| u32_of(&g[i][k])) };
        assert_eq!(dims(&Letterbox::new(w, h, size)), want(3), "predict {w}x{h} into {size}");
        assert_eq!(dims(&Letterbox::dataset(w, h, size)), want(4), "dataset {w}x{h} into {size}");
    }
}
