use std::collections::{HashMap, HashSet};

use super::*;
use crate::onnx::{Dim, Graph};

fn observed(xs: &[f32]) -> Observer {
    let mut o = Observer::default();
    o.observe(xs);
    o
}

#[test]
fn growing_range_merges_bins_exactly() {
    let mut grown = Observer::default();
    grown.observe(&[0.0, 0.0]);
    grown.observe(&[0.25, -0.5]);
    grown.observe(&[3.0, -7.5]);
    // The same values seen at once, in the final range, land in the same bins.
    let mut once = Observer::default();
    once.observe(&[7.5]);
    let mut direct = Observer { width: grown.width, abs_max: 0.0, ..once.clone() };
    direct.bins.fill(0);
    direct.observe(&[0.0, 0.0, 0.25, -0.5, 3.0, -7.5]);
    assert_eq!(grown.bins, direct.bins);
    assert_eq!(grown.bins.iter().sum::<u64>(), 6);
    assert_eq!(grown.abs_max(), 7.5);
    assert!(grown.width * BINS as f32 > 7.5);
}

#[test]
fn methods_differ_on_outliers() {
    // 10 000 values spread over [0, 1), one outlier at 100.
    let mut xs: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
    xs.push(-100.0);
    let o = observed(&xs);
    assert_eq!(o.threshold(Method::MinMax), 100.0);
    let p = o.threshold(Method::Percentile(99.9));
    assert!((0.99..=1.1).contains(&p), "{p}");
    let p50 = o.threshold(Method::Percentile(50.0));
    assert!((0.45..=0.6).contains(&p50), "{p50}");
    let e = o.threshold(Method::Entropy);
    assert!(e > 0.5 && e < 100.0, "entropy clips the outlier but keeps the bulk: {e}");
}

#[test]
fn entropy_keeps_a_gaussian_bulk_and_clips_its_tail() {
    // A deterministic standard normal sample (Box–Muller over a fixed lattice).
    let mut xs = Vec::new();
    for i in 1..200 {
        for j in 0..100 {
            let (u, v) = (i as f32 / 200.0, j as f32 / 100.0);
            xs.push((-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos());
        }
    }
    xs.push(40.0);
    let o = observed(&xs);
    let e = o.threshold(Method::Entropy);
    assert!((2.0..10.0).contains(&e), "threshold {e} should lie between 2σ and the outlier");
}

#[test]
fn only_zeros_give_a_zero_threshold() {
    let o = observed(&[0.0; 16]);
    for m in [Method::MinMax, Method::Percentile(99.99), Method::Entropy] {
        assert_eq!(o.threshold(m), 0.0);
    }
    let mut o = o;
    o.observe(&[f32::NAN, 2.0]);
    assert_eq!(o.bins[0], 16, "earlier zeros are counted once a range exists");
    assert_eq!(o.threshold(Method::MinMax), 2.0);
}

#[test]
fn parses_methods() {
    assert_eq!(Method::parse("percentile", 99.99), Ok(Method::Percentile(99.99)));
    assert_eq!(Method::parse("entropy", 0.0), Ok(Method::Entropy));
    assert!(Method::parse("percentile", 101.0).is_err());
    assert!(Method::parse("kl", 99.0).expect_err("unknown").contains("minmax, percentile or entropy"));
}

/// input → Conv(w, b) → SiLU → Conv(w2, b2) in the float region → output.
fn tiny() -> Graph {
    let mut g = Graph::default();
    let w = g.init_f32("w", &[2, 1, 1, 1], &[0.5, -2.0]);
    let b = g.init_f32("b", &[2], &[0.1, -0.31]);
    let c = g.node("Conv", &["x", &w, &b], &[]);
    let s = g.node("Sigmoid", &[&c], &[]);
    let m = g.node("Mul", &[&c, &s], &[]);
    g.keep_float = true;
    let w2 = g.init_f32("w", &[1, 2, 1, 1], &[1.0, 1.0]);
    let b2 = g.init_f32("b", &[1], &[0.0]);
    let y = g.node("Conv", &[&m, &w2, &b2], &[]);
    g.output_as(&y, "y");
    g
}

fn topologically_sorted(g: &Graph, input: &str) -> bool {
    let mut known: HashSet<&str> = g.initializers.iter().map(|i| i.name.as_str()).collect();
    known.insert(input);
    for n in &g.nodes {
        if !n.inputs.iter().all(|i| known.contains(i.as_str())) {
            return false;
        }
        known.extend(n.outputs.iter().map(String::as_str));
    }
    true
}

#[test]
fn rewrite_quantises_activations_weights_and_biases() {
    let mut g = tiny();
    let t = targets(&g, "x");
    assert_eq!(t.len(), 4, "input, conv, sigmoid and mul outputs: {t:?}");
    let ranges: HashMap<String, (f32, f32)> = t.iter().map(|n| (n.clone(), (-1.0, 4.1))).collect();
    let stats = rewrite(&mut g, &ranges, Target::OnnxRuntime).expect("rewrite");
    assert_eq!(stats, Rewritten { activations: 4, convs: 1, float_convs: 1 });
    assert!(topologically_sorted(&g, "x"));

    let conv = g.nodes.iter().find(|n| n.op == "Conv" && !n.keep_float).expect("quantised conv");
    let producer = |v: &str| g.nodes.iter().find(|n| n.outputs.iter().any(|o| o == v)).expect("producer");
    let adq = producer(&conv.inputs[0]);
    assert_eq!(adq.op, "DequantizeLinear");
    // Unsigned activations for ONNX Runtime: [-1, 4.1] over 0..=255 (scale 0.02), zero at 50.
    assert_eq!(g.initializer(&adq.inputs[2]).expect("zero point").data, Data::Uint8(vec![50]));
    let wdq = producer(&conv.inputs[1]);
    assert_eq!(wdq.attrs, vec![Attr::Int("axis", 0)]);
    assert_eq!(g.initializer(&wdq.inputs[0]).expect("int8 weights").data, Data::Int8(vec![127, -127]));
    let Data::Float { values: ws, .. } = &g.initializer(&wdq.inputs[1]).expect("scales").data else {
        panic!("float scales")
    };
    assert_eq!(ws, &vec![0.5 / 127.0, 2.0 / 127.0]);
    // Bias in INT32 at input scale × weight scale: 0.1 / (0.02 × 0.5/127) = 1270.
    let bdq = producer(&conv.inputs[2]);
    assert_eq!(g.initializer(&bdq.inputs[0]).expect("int32 bias").data, Data::Int32(vec![1270, -984]));

    // The float-region conv keeps float weights but reads a dequantised input.
    let float = g.nodes.iter().find(|n| n.op == "Conv" && n.keep_float).expect("float conv");
    assert_eq!(producer(&float.inputs[0]).op, "DequantizeLinear");
    assert!(matches!(g.initializer(&float.inputs[1]).expect("float weights").data, Data::Float { .. }));
    // No orphaned float weights remain, and the model still serialises.
    let used: HashSet<&str> = g.nodes.iter().flat_map(|n| n.inputs.iter().map(String::as_str)).collect();
    assert!(g.initializers.iter().all(|i| used.contains(i.name.as_str())));
    assert!(!g.into_model(("x", &[Dim::Fixed(1)]), ("y", &[Dim::Fixed(1)]), 17, &[]).is_empty());
}

#[test]
fn tensorrt_gets_symmetric_activations_and_float_biases_and_bad_ranges_are_refused() {
    let mut g = tiny();
    let t = targets(&g, "x");
    let ranges: HashMap<String, (f32, f32)> = t.iter().map(|n| (n.clone(), (-0.5, 1.27))).collect();
    rewrite(&mut g, &ranges, Target::TensorRt).expect("rewrite");
    let conv = g.nodes.iter().find(|n| n.op == "Conv" && !n.keep_float).expect("conv");
    assert!(matches!(g.initializer(&conv.inputs[2]).expect("float bias").data, Data::Float { .. }));
    let adq = g.nodes.iter().find(|n| n.outputs.contains(&conv.inputs[0])).expect("input DQ");
    assert_eq!(g.initializer(&adq.inputs[2]).expect("zero point").data, Data::Int8(vec![0]));
    assert_eq!(g.initializer(&adq.inputs[1]).expect("scale").data, Data::Float { values: vec![0.01], exact: true });

    for bad in [(f32::NAN, 1.0), (0.5, 1.0), (-1.0, -0.5)] {
        let mut g = tiny();
        let mut ranges: HashMap<String, (f32, f32)> = targets(&g, "x").into_iter().map(|n| (n, (-1.0, 1.0))).collect();
        ranges.insert("x".into(), bad);
        assert_eq!(rewrite(&mut g, &ranges, Target::OnnxRuntime), Err(QuantError::Range("x".into())), "{bad:?}");
    }
}

#[test]
fn ranges_clip_both_signs_within_what_was_seen() {
    // A SiLU-like activation: small negatives, a long positive tail.
    let mut xs: Vec<f32> = (0..10_000).map(|i| i as f32 / 1000.0 - 0.25).collect();
    xs.push(1000.0);
    let o = observed(&xs);
    assert_eq!(o.range(Method::MinMax), (-0.25, 1000.0));
    let (lo, hi) = o.range(Method::Percentile(99.9));
    assert_eq!(lo, -0.25, "the negative side never reaches the threshold");
    assert!((9.5..10.5).contains(&hi), "{hi}");
    assert_eq!(observed(&[0.0, 0.5, 1.0]).range(Method::MinMax), (0.0, 1.0), "non-negative stays non-negative");
}

#[test]
fn a_conv_without_a_quantised_input_stays_float() {
    let mut g = tiny();
    let stats = rewrite(&mut g, &HashMap::new(), Target::OnnxRuntime).expect("rewrite");
    assert_eq!(stats, Rewritten { activations: 0, convs: 0, float_convs: 2 });
    assert!(g.nodes.iter().all(|n| n.op != "DequantizeLinear"));
}

#[test]
fn the_gate_allows_the_configured_drop_and_names_both_figures() {
    let gate = |fp32, int8, max_drop| Gate { fp32_map: fp32, int8_map: int8, max_drop };
    assert!(gate(0.60, 0.595, 1.0).check().is_ok());
    assert!(gate(0.60, 0.61, 0.0).check().is_ok(), "a gain always passes");
    assert!(gate(0.60, 0.59, 1.0).check().is_ok(), "exactly the allowance passes");
    let e = gate(0.6123, 0.5012, 1.0).check().expect_err("11 points lost");
    assert!(
        e.contains("0.5012") && e.contains("0.6123") && e.contains("11.11 points") && e.contains("allowed: 1 points"),
        "{e}"
    );
    assert!(gate(0.6, f64::NAN, 100.0).check().is_err(), "a NaN figure never passes");
}
