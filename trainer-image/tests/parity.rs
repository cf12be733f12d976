//! Numerical parity with Ultralytics' yolov8n (3 classes): the same weights and input give the same
//! raw head outputs (eval and train mode), decoded predictions, training loss and its gradients.
//!
//! The fixture `tests/data/yolov8n_nc3_parity.{safetensors,json}` comes from
//! `bench/parity_reference.py`: Ultralytics' seeded default initialisation, trained for a few steps
//! on two of its sample photos so that outputs vary widely (its untrained eval outputs are nearly
//! constant, which would check little beyond anchor decoding); the weights under Ultralytics'
//! names, the letterboxed input bytes and Ultralytics' outputs, with the Ultralytics and torch
//! versions that produced them. So this runs without Ultralytics and without our letterbox.
#![cfg(feature = "torch")]

use std::collections::{BTreeSet, HashMap};

use ocellus_trainer::loss::{LossConfig, Target, detection_loss};
use ocellus_trainer::model::{Architecture, Detector};
use tch::{Device, Kind, Tensor, nn};

const NC: i64 = 3;
/// Distribution bins per box side.
const BINS: i64 = 16;

// Tolerances, absolute, on every element. The only legitimate difference is float32 rounding: the
// two implementations sum convolutions in different orders through ~60 layers. The generator
// measures that scale on the very same model (Ultralytics in float32 against float64; recorded in
// the JSON: ~1e-5 on logits, ~2e-4 px on boxes, ~1e-6 on scores), two float32 runs differ by at
// most twice it, and `tolerances_cover_float32_rounding` keeps every tolerance at least 10x the
// recorded figure. A real difference (an activation, a skip, a channel order, a bias) moves logits
// by tenths to units and boxes by pixels, orders of magnitude above these.
/// Raw box-bin and class logits of the three levels.
const LOGIT_TOL: f64 = 1e-3;
/// Decoded box centres and sizes, in input pixels (up to 320; one float32 ulp there is 3e-5).
const BOX_TOL: f64 = 1e-2;
/// Class probabilities.
const SCORE_TOL: f64 = 1e-4;
/// Gradients (each parameter's L2 norm, and the first convolution's elementwise against its
/// largest), relative: two float32 runs of the same backward pass agree to ~2e-5; letting the
/// gradient through the assigner's targets (the loss's value unchanged) moves them by ~15%.
const GRAD_RTOL: f64 = 1e-3;
/// Norms under this are compared absolutely, to `GRAD_RTOL x GRAD_FLOOR` (parameters the batch
/// does not reach: in the fixture, the P5 box branch's gradients are 0 on both sides).
const GRAD_FLOOR: f64 = 1e-6;
/// Each loss component, relative: float32 sums over 2100 anchors x 2 images (~1e-6 relative) with
/// margin, while a wrong assignment, gain or IoU term moves it by percent.
const LOSS_RTOL: f64 = 1e-4;

// The near-constant guard, on Ultralytics' outputs in the fixture. Untrained, in eval mode, they
// have class-score spreads of ~4e-3 and uniform box distributions (peak 1/16, expected distances
// equal to 1e-7); untrained with batch-norm statistics calibrated on the images, spreads of ~0.02
// and an expected-distance std of ~0.47 bins; the fixture's have spreads > 0.9, a peak of ~0.98
// and an expected-distance std of ~1.3 bins.
/// Minimum spread (max - min over all anchors of both images) of each class's probability.
const MIN_SCORE_SPREAD: f64 = 0.5;
/// Some anchor's distribution over a side's bins must peak at least this high (uniform is 1/16).
const MIN_PEAK_BIN: f64 = 0.5;
/// Minimum standard deviation, across anchors and sides, of the expected distance, in bins.
const MIN_DISTANCE_STD: f64 = 0.8;

/// The fixture: JSON metadata and the named tensors.
struct Fixture {
    meta: serde_json::Value,
    tensors: HashMap<String, Tensor>,
}

impl Fixture {
    fn load() -> Fixture {
        let meta = serde_json::from_str(include_str!("data/yolov8n_nc3_parity.json")).expect("fixture json");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/yolov8n_nc3_parity.safetensors");
        let tensors = Tensor::read_safetensors(path).expect("fixture safetensors").into_iter().collect();
        Fixture { meta, tensors }
    }

    fn tensor(&self, name: &str) -> &Tensor {
        self.tensors.get(name).unwrap_or_else(|| panic!("fixture lacks {name:?}"))
    }

    /// The letterboxed images as the model takes them, `[2, 3, 320, 320]` in 0..1 (the same
    /// float32 division as the generator's, so bit-identical).
    fn input(&self) -> Tensor {
        self.tensor("input").to_kind(Kind::Float) / 255.0
    }

    /// yolov8n with 3 classes and Ultralytics' weights; the fixture's `model.*` tensors and our
    /// variables must match one to one by name and shape (Ultralytics' state dict, less the
    /// `num_batches_tracked` counters).
    fn model(&self) -> (nn::VarStore, Detector) {
        let vs = nn::VarStore::new(Device::Cpu);
        let arch: Architecture = "yolov8n".parse().expect("arch");
        let model = Detector::new(&(vs.root() / "model"), &arch, NC);
        let ours: BTreeSet<String> = vs.variables().into_keys().collect();
        let theirs: BTreeSet<String> = self.tensors.keys().filter(|k| k.starts_with("model.")).cloned().collect();
        assert_eq!(
            ours.difference(&theirs).chain(theirs.difference(&ours)).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "variables only one side has"
        );
        tch::no_grad(|| {
            for (name, var) in vs.variables() {
                let src = self.tensor(&name);
                assert_eq!(var.size(), src.size(), "shape of {name}");
                var.shallow_clone().copy_(src);
            }
        });
        (vs, model)
    }
}

/// Largest |got - want| over all elements of two `[B, C, anchors]` tensors; panics naming the
/// worst element when it exceeds `tol` (or is NaN).
fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) -> f64 {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let err = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double)).abs();
    let worst = err.max().double_value(&[]);
    if worst.is_nan() || worst > tol {
        let over = err.le(tol).logical_not().sum(Kind::Int64).int64_value(&[]);
        let flat = err.nan_to_num(f64::INFINITY, None, None).flatten(0, -1).argmax(0, false).int64_value(&[]);
        let (c, a) = (got.size()[1], got.size()[2]);
        let at = [flat / (c * a), flat / a % c, flat % a];
        let (g, w) = (got.double_value(&at), want.double_value(&at));
        panic!(
            "{what}: {over} of {} elements differ from Ultralytics by more than {tol:e}; worst {worst:.3e} at \
             [image, channel, anchor] = {at:?}: ours {g} vs Ultralytics {w}",
            err.numel()
        );
    }
    worst
}

/// Fails on a fixture whose outputs are nearly constant across positions and classes, against
/// which a parity test would check little beyond anchor decoding. `raw` is `[B, 64 + nc, A]`
/// logits, `output` `[B, 4 + nc, A]` decoded.
fn assert_far_from_constant(raw: &Tensor, output: &Tensor) {
    for c in 0..NC {
        let s = output.select(1, 4 + c);
        let spread = (s.max() - s.min()).double_value(&[]);
        assert!(
            spread >= MIN_SCORE_SPREAD,
            "fixture is near-constant: class {c} probabilities span only {spread:.2e} (< {MIN_SCORE_SPREAD}); \
             regenerate it (bench/parity_reference.py) from weights whose outputs vary"
        );
    }
    let b = raw.size()[0];
    let bins = raw.narrow(1, 0, 4 * BINS).reshape([b, 4, BINS, -1]).softmax(2, Kind::Float);
    let peak = bins.amax([2], false).max().double_value(&[]);
    let proj = Tensor::arange(BINS, (Kind::Float, Device::Cpu)).view([1, 1, BINS, 1]);
    let dist_std = (bins * proj).sum_dim_intlist([2].as_slice(), false, Kind::Float).std(true).double_value(&[]);
    assert!(
        peak >= MIN_PEAK_BIN && dist_std >= MIN_DISTANCE_STD,
        "fixture is near-constant: box distributions peak at most at {peak:.3} (< {MIN_PEAK_BIN}; uniform is \
         1/16) or their expected distances vary by {dist_std:.2e} bins (< {MIN_DISTANCE_STD}); regenerate it \
         (bench/parity_reference.py) from weights whose outputs vary"
    );
}

#[test]
fn yolov8n_outputs_match_ultralytics_everywhere() {
    let f = Fixture::load();
    let (want_raw, want_out) = (f.tensor("raw"), f.tensor("output"));
    assert_far_from_constant(want_raw, want_out);
    let (_vs, model) = f.model();
    let (raw, out) = tch::no_grad(|| {
        let levels = model.forward_levels(&f.input(), false);
        let flat: Vec<Tensor> = levels.iter().map(|l| l.flatten(2, -1)).collect();
        (Tensor::cat(&flat, 2), model.decode(&levels))
    });
    assert_eq!(out.size(), [2, 4 + NC, 2100]);
    let logits = assert_close("raw logits", &raw, want_raw, LOGIT_TOL);
    let boxes = assert_close("boxes (px)", &out.narrow(1, 0, 4), &want_out.narrow(1, 0, 4), BOX_TOL);
    let scores = assert_close("class probabilities", &out.narrow(1, 4, NC), &want_out.narrow(1, 4, NC), SCORE_TOL);
    eprintln!("largest differences: logits {logits:.2e}, boxes {boxes:.2e} px, scores {scores:.2e}");
}

#[test]
fn detection_loss_matches_ultralytics() {
    let f = Fixture::load();
    let (vs, model) = f.model();
    let x = f.input();
    let mut targets = vec![Vec::new(); x.size()[0] as usize];
    for row in f.meta["targets"].as_array().expect("targets") {
        let v: Vec<f64> = row.as_array().expect("target row").iter().map(|v| v.as_f64().expect("number")).collect();
        let xywh = [v[2] as f32, v[3] as f32, v[4] as f32, v[5] as f32];
        targets[v[0] as usize].push(Target { class: v[1] as i64, xywh });
    }
    let levels = model.forward_levels(&x, true);
    let flat: Vec<Tensor> = levels.iter().map(|l| l.flatten(2, -1)).collect();
    let logits = assert_close("train-mode logits", &Tensor::cat(&flat, 2).detach(), f.tensor("raw_train"), LOGIT_TOL);
    let loss = detection_loss(&LossConfig::default(), NC, &levels, &targets);
    let got: Vec<f64> = (0..3).map(|i| loss.double_value(&[i])).collect();
    let want: Vec<f64> = f.meta["loss"].as_array().expect("loss").iter().map(|v| v.as_f64().expect("f64")).collect();
    for (name, (g, w)) in ["box", "cls", "dfl"].iter().zip(got.iter().zip(&want)) {
        assert!((g - w).abs() <= LOSS_RTOL * w.abs(), "{name} loss: ours {g} vs Ultralytics {w}");
    }
    // The same gradients reach every parameter: what backward gives is what an optimiser step
    // takes, and a value can match while its gradient differs (a target not detached, a
    // normaliser inside the graph).
    loss.sum(Kind::Float).backward();
    let norms = f.meta["grad_norms"].as_object().expect("fixture lacks grad_norms");
    let vars = vs.variables();
    let mut worst = 0.0f64;
    for (name, want) in norms {
        let want = want.as_f64().expect("norm");
        let got = vars[name].grad().norm().double_value(&[]);
        let rel = (got - want).abs() / want.max(GRAD_FLOOR);
        assert!(rel <= GRAD_RTOL, "gradient of {name}: L2 norm ours {got} vs Ultralytics {want}");
        worst = worst.max(rel);
    }
    let trained = vs.trainable_variables().len();
    assert_eq!(norms.len(), trained, "a gradient norm for each of our {trained} trained variables");
    // Flattened to the `[1, 1, n]` layout `assert_close` reports positions in.
    let first = vars["model.0.conv.weight"].grad().reshape([1, 1, -1]);
    let values: Vec<f32> = f.meta["grad_first_conv"]
        .as_array()
        .expect("fixture lacks grad_first_conv")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect();
    let want_first = Tensor::from_slice(&values).reshape([1, 1, -1]);
    let scale = want_first.abs().max().double_value(&[]);
    assert_close("first convolution's gradient", &first, &want_first, GRAD_RTOL * scale);
    eprintln!(
        "train-mode logits within {logits:.2e}; loss ours {got:?} vs Ultralytics {want:?}; gradient norms within {worst:.1e} relative"
    );
}

/// The tolerances stay justified when the fixture is regenerated: each is at least 10x the
/// float32-vs-float64 difference the generator measured on the fixture's model.
#[test]
fn tolerances_cover_float32_rounding() {
    let f = Fixture::load();
    let measured = &f.meta["float32_vs_float64"];
    for (key, tol) in [("raw", LOGIT_TOL), ("raw_train", LOGIT_TOL), ("boxes", BOX_TOL), ("scores", SCORE_TOL)] {
        let m = measured[key].as_f64().unwrap_or_else(|| panic!("fixture lacks float32_vs_float64.{key}"));
        assert!(m > 0.0 && 10.0 * m <= tol, "{key}: float32 rounding {m:e} leaves tolerance {tol:e} under 10x");
    }
}

/// The fixture records the versions that made it, and `bench/setup-peer.sh` installs those.
#[test]
fn fixture_versions_are_pinned() {
    let f = Fixture::load();
    let setup = include_str!("../../bench/setup-peer.sh");
    for key in ["ultralytics", "torch"] {
        let v = f.meta[key].as_str().unwrap_or_else(|| panic!("fixture lacks the {key} version"));
        let release = v.split('+').next().expect("version");
        assert!(setup.contains(&format!("{key}=={release}")), "bench/setup-peer.sh does not pin {key}=={release}");
    }
}
