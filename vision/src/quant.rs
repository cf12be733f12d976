//! INT8 post-training quantisation of an ONNX [`Graph`], in the explicit (QDQ) form that ONNX
//! Runtime runs with integer kernels and TensorRT builds explicit-precision engines from:
//!
//! 1. [`targets`] names the activations to quantise: the image input and every float output of
//!    `Conv`, `Sigmoid`, `Mul`, `Add`, `Concat`, `MaxPool`, `Resize` and `Split` outside the
//!    graph's float region ([`crate::onnx::Node::keep_float`]);
//! 2. an [`Observer`] per target collects a histogram of `|x|` (and the signed extremes) over
//!    calibration images, which the model exposes as extra outputs; a [`Method`] turns it into a
//!    clipping range;
//! 3. [`rewrite`] inserts `QuantizeLinear → DequantizeLinear` after each target and stores every
//!    quantised `Conv`'s weights as per-output-channel symmetric INT8;
//! 4. a [`Gate`] compares the float and INT8 models' validation mAP and refuses a quantised model
//!    that lost more than allowed.
//!
//! The same calibration serves two runtimes, which want different encodings ([`Target`]):
//! ONNX Runtime's x86 integer kernels multiply *unsigned* 8-bit activations by signed weights
//! (U8S8; with signed activations it leaves the convolutions in float — measured, 2× slower than
//! float), with INT32 biases; TensorRT accepts only symmetric signed activations (zero point 0)
//! and wants float biases.
//!
//! Nodes in the float region stay float: a detector's final box and class convolutions (they
//! carry the regression distribution and the class logits whose small differences decide NMS
//! order) and the decoding after them, a classifier's linear layer and softmax — as Ultralytics'
//! and NVIDIA's INT8 YOLO recipes leave them.

use std::collections::{HashMap, HashSet};

use crate::onnx::{Attr, Data, Graph, Node};

/// Bins of an [`Observer`]'s histogram.
pub const BINS: usize = 2048;
/// Largest quantised magnitude (symmetric INT8: −127..=127).
const QMAX: f32 = 127.0;
/// Operators whose float outputs are quantised (outside the float region).
const QUANTISED_OPS: [&str; 8] = ["Conv", "Sigmoid", "Mul", "Add", "Concat", "MaxPool", "Resize", "Split"];

/// How an activation's clipping threshold is chosen from its `|x|` histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The largest `|x|` seen: nothing clips, outliers cost resolution.
    MinMax,
    /// The given percentile of `|x|` (e.g. 99.99): the rarest outliers clip.
    Percentile(f64),
    /// The threshold that minimises the KL divergence between the histogram and its 128-level
    /// quantisation (TensorRT's entropy calibration).
    Entropy,
}

impl Method {
    /// Parses `minmax`, `percentile` (with `percentile`) or `entropy`.
    pub fn parse(name: &str, percentile: f64) -> Result<Method, String> {
        match name {
            "minmax" => Ok(Method::MinMax),
            "percentile" if (90.0..=100.0).contains(&percentile) => Ok(Method::Percentile(percentile)),
            "percentile" => Err(format!("percentile {percentile} must be between 90 and 100")),
            "entropy" => Ok(Method::Entropy),
            other => Err(format!("unknown calibration method {other:?}: use minmax, percentile or entropy")),
        }
    }

    /// The method's name.
    pub fn name(&self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::Percentile(_) => "percentile",
            Method::Entropy => "entropy",
        }
    }
}

/// Histogram of `|x|` over `[0, BINS × width)` that doubles its range (merging bin pairs, which
/// is exact) whenever a larger value arrives, so one pass over the calibration images suffices;
/// plus the smallest and largest values seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Observer {
    bins: Vec<u64>,
    width: f32,
    abs_max: f32,
    min: f32,
    max: f32,
    /// Zeros seen before any non-zero value fixed the range.
    zeros: u64,
}

impl Default for Observer {
    fn default() -> Self {
        Observer { bins: vec![0; BINS], width: 0.0, abs_max: 0.0, min: 0.0, max: 0.0, zeros: 0 }
    }
}

impl Observer {
    /// Adds values (non-finite ones are ignored).
    pub fn observe(&mut self, xs: &[f32]) {
        for x in xs.iter().filter(|x| x.is_finite()) {
            self.min = self.min.min(*x);
            self.max = self.max.max(*x);
        }
        let m = xs.iter().filter(|x| x.is_finite()).fold(0f32, |m, x| m.max(x.abs()));
        if m == 0.0 && self.width == 0.0 {
            self.zeros += xs.iter().filter(|x| x.is_finite()).count() as u64;
            return;
        }
        if self.width == 0.0 {
            self.width = m / BINS as f32;
            self.bins[0] += std::mem::take(&mut self.zeros);
        }
        while m >= self.width * BINS as f32 {
            for i in 0..BINS / 2 {
                self.bins[i] = self.bins[2 * i] + self.bins[2 * i + 1];
            }
            self.bins[BINS / 2..].fill(0);
            self.width *= 2.0;
        }
        self.abs_max = self.abs_max.max(m);
        let inv = 1.0 / self.width;
        for x in xs.iter().filter(|x| x.is_finite()) {
            let i = ((x.abs() * inv) as usize).min(BINS - 1);
            self.bins[i] += 1;
        }
    }

    /// Largest `|x|` seen.
    pub fn abs_max(&self) -> f32 {
        self.abs_max
    }

    /// The clipping range by `method`: the magnitude threshold applied to both signs, bounded
    /// by the values seen (so a non-negative activation keeps `lo = 0`). Always contains 0.
    pub fn range(&self, method: Method) -> (f32, f32) {
        let t = self.threshold(method);
        (self.min.max(-t).min(0.0), self.max.min(t).max(0.0))
    }

    /// The clipping threshold of `|x|` by `method` (0 when only zeros were seen).
    pub fn threshold(&self, method: Method) -> f32 {
        let total: u64 = self.bins.iter().sum();
        if self.width == 0.0 || total == 0 {
            return 0.0;
        }
        let t = match method {
            Method::MinMax => self.abs_max,
            Method::Percentile(p) => {
                let want = (total as f64 * p / 100.0).ceil() as u64;
                let mut acc = 0;
                let mut edge = BINS;
                for (i, c) in self.bins.iter().enumerate() {
                    acc += c;
                    if acc >= want {
                        edge = i + 1;
                        break;
                    }
                }
                edge as f32 * self.width
            }
            Method::Entropy => entropy_edge(&self.bins) as f32 * self.width,
        };
        t.min(self.abs_max)
    }
}

/// TensorRT's entropy calibration over a `|x|` histogram: for each candidate edge `i`, the
/// reference distribution is the first `i` bins with everything above folded into the last, the
/// candidate is it merged into 128 levels and expanded back over its non-empty bins; the edge
/// with the smallest KL divergence wins.
fn entropy_edge(bins: &[u64]) -> usize {
    const LEVELS: usize = 128;
    let last = bins.iter().rposition(|c| *c > 0).map_or(LEVELS, |i| i + 1);
    if last <= LEVELS {
        return last.max(1);
    }
    let mut best = (f64::INFINITY, last);
    let mut p = vec![0f64; bins.len()];
    let mut q = vec![0f64; bins.len()];
    for i in (LEVELS..=last).step_by(4) {
        let outliers: u64 = bins[i..].iter().sum();
        for (d, s) in p[..i].iter_mut().zip(&bins[..i]) {
            *d = *s as f64;
        }
        p[i - 1] += outliers as f64;
        // Quantise bins[..i] (without the outliers, as TensorRT) into LEVELS levels.
        let per = i as f64 / LEVELS as f64;
        for l in 0..LEVELS {
            let (a, b) = ((l as f64 * per) as usize, (((l + 1) as f64 * per) as usize).min(i));
            let b = if l == LEVELS - 1 { i } else { b };
            let sum: f64 = bins[a..b].iter().map(|c| *c as f64).sum();
            let nonzero = bins[a..b].iter().filter(|c| **c > 0).count();
            for j in a..b {
                q[j] = if bins[j] > 0 && nonzero > 0 { sum / nonzero as f64 } else { 0.0 };
            }
        }
        let (ps, qs): (f64, f64) = (p[..i].iter().sum(), q[..i].iter().sum());
        if ps == 0.0 || qs == 0.0 {
            continue;
        }
        let mut kl = 0.0;
        for j in 0..i {
            let pj = p[j] / ps;
            if pj > 0.0 {
                // Empty candidate bins get a small mass so the divergence stays finite.
                let qj = (q[j] / qs).max(1e-12);
                kl += pj * (pj / qj).ln();
            }
        }
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1
}

/// The activations to quantise, in graph order: the graph input `input` and every float output
/// of a quantisable operator outside the float region.
pub fn targets(g: &Graph, input: &str) -> Vec<String> {
    let mut out = vec![input.to_string()];
    for n in &g.nodes {
        if !n.keep_float && n.domain.is_empty() && QUANTISED_OPS.contains(&n.op.as_str()) {
            out.extend(n.outputs.iter().cloned());
        }
    }
    out
}

/// The runtime a QDQ model is encoded for (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// ONNX Runtime: asymmetric UINT8 activations, INT32 biases (scale = input scale × weight
    /// scale), so each `Conv` fuses into an integer kernel.
    OnnxRuntime,
    /// TensorRT: symmetric INT8 activations (zero point 0), float biases.
    TensorRt,
}

/// What [`rewrite`] quantised.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rewritten {
    /// Activations that got a `QuantizeLinear → DequantizeLinear` pair.
    pub activations: usize,
    /// `Conv`s whose weights are INT8.
    pub convs: usize,
    /// `Conv`s left in float (float region, or an input that is not quantised).
    pub float_convs: usize,
}

/// Errors of [`rewrite`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    /// A threshold is missing or not a positive finite number.
    #[error("no usable calibration range for {0}")]
    Range(String),
    /// The graph is not what the pass expects.
    #[error("cannot quantise: {0}")]
    Graph(String),
}

/// The accuracy gate's verdict: the float and INT8 models' validation mAP50-95 (fractions) and
/// the largest drop allowed in points (0 to 100).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    /// Validation mAP50-95 of the float model.
    pub fp32_map: f64,
    /// Validation mAP50-95 of the INT8 model.
    pub int8_map: f64,
    /// Largest drop allowed, in points of mAP50-95.
    pub max_drop: f64,
}

impl Gate {
    /// How many points of mAP50-95 INT8 lost (negative when it gained).
    pub fn drop_points(&self) -> f64 {
        (self.fp32_map - self.int8_map) * 100.0
    }

    /// `Ok` when the drop is within the allowance (a NaN figure never passes), else the message
    /// to fail the export with, naming both figures.
    pub fn check(&self) -> Result<(), String> {
        let d = self.drop_points();
        // A hair of slack for float rounding: 0.60 − 0.59 is 1.0000000000000009 points.
        if d <= self.max_drop + 1e-9 {
            return Ok(());
        }
        Err(format!(
            "INT8 validation mAP50-95 {:.4} is {d:.2} points below the float model's {:.4} (allowed: {} points); \
             try another calibration method or more calibration images",
            self.int8_map, self.fp32_map, self.max_drop
        ))
    }
}

/// A default-domain quantisation node (`QuantizeLinear` or `DequantizeLinear`) reading `inputs`
/// (value, scale, zero point), per-channel along `axis` when given; returns it and its output.
fn qdq_node(g: &mut Graph, op: &str, inputs: [String; 3], axis: Option<i64>, hint: &str) -> (Node, String) {
    let output = g.fresh(hint);
    let node = Node {
        op: op.into(),
        domain: String::new(),
        name: g.fresh(&format!("{op}_node")),
        inputs: inputs.into(),
        outputs: vec![output.clone()],
        attrs: axis.map(|a| vec![Attr::Int("axis", a)]).unwrap_or_default(),
        keep_float: false,
    };
    (node, output)
}

/// Symmetric scale for a threshold (a threshold of 0, a value that was always zero, gets a tiny
/// scale so the tensor stays exactly zero).
fn scale_of(threshold: f32) -> f32 {
    if threshold > 0.0 { threshold / QMAX } else { f32::MIN_POSITIVE.sqrt() }
}

/// Scale and zero point of an activation range for `target`.
fn activation_params(lo: f32, hi: f32, target: Target) -> (f32, Data) {
    match target {
        Target::TensorRt => (scale_of(lo.abs().max(hi.abs())), Data::Int8(vec![0])),
        Target::OnnxRuntime => {
            let (lo, hi) = (lo.min(0.0), hi.max(0.0));
            if hi - lo <= 0.0 {
                return (f32::MIN_POSITIVE.sqrt(), Data::Uint8(vec![0]));
            }
            let scale = (hi - lo) / 255.0;
            let zero = (-lo / scale).round().clamp(0.0, 255.0) as u8;
            (scale, Data::Uint8(vec![zero]))
        }
    }
}

/// Quantises `g` in place for `target` with the activation `ranges` (`(lo, hi)` by value name,
/// from [`Observer::range`]). Every range must be finite and contain 0.
pub fn rewrite(g: &mut Graph, ranges: &HashMap<String, (f32, f32)>, target: Target) -> Result<Rewritten, QuantError> {
    let mut stats = Rewritten::default();
    // 1. Q → DQ after every activation with a threshold; consumers read the DQ output, whose
    //    scale a quantised Conv's bias needs (keyed by the DQ output's name).
    let mut scales: HashMap<String, f32> = HashMap::new();
    let mut renamed: HashMap<String, String> = HashMap::new();
    let mut inserted: Vec<(usize, Vec<Node>)> = Vec::new();
    let producer: HashMap<&str, usize> =
        g.nodes.iter().enumerate().flat_map(|(i, n)| n.outputs.iter().map(move |o| (o.as_str(), i))).collect();
    let mut order: Vec<(&String, &(f32, f32))> = ranges.iter().collect();
    order.sort_by(|a, b| a.0.cmp(b.0));
    let mut pending = Vec::new();
    for (name, (lo, hi)) in order {
        if !lo.is_finite() || !hi.is_finite() || *lo > 0.0 || *hi < 0.0 {
            return Err(QuantError::Range(name.clone()));
        }
        // Graph inputs have no producer: their pair goes first.
        let at = producer.get(name.as_str()).map_or(0, |i| i + 1);
        let (scale, zero) = activation_params(*lo, *hi, target);
        pending.push((at, name.clone(), scale, zero));
    }
    for (at, name, scale, zero) in pending {
        let s = g.init("qscale", &[], Data::Float { values: vec![scale], exact: true });
        let z = g.init("qzero", &[], zero);
        let (qn, q) = qdq_node(g, "QuantizeLinear", [name.clone(), s.clone(), z.clone()], None, "q");
        let (dqn, dq) = qdq_node(g, "DequantizeLinear", [q, s, z], None, "dq");
        scales.insert(dq.clone(), scale);
        renamed.insert(name, dq);
        inserted.push((at, vec![qn, dqn]));
        stats.activations += 1;
    }
    for n in g.nodes.iter_mut() {
        for i in n.inputs.iter_mut() {
            if let Some(r) = renamed.get(i) {
                *i = r.clone();
            }
        }
    }
    // 2. Weights (and biases) of every Conv whose input is quantised.
    let mut weight_nodes: Vec<(usize, Vec<Node>)> = Vec::new();
    for idx in 0..g.nodes.len() {
        if g.nodes[idx].op != "Conv" || g.nodes[idx].keep_float {
            continue;
        }
        let Some(sx) = scales.get(&g.nodes[idx].inputs[0]).copied() else {
            stats.float_convs += 1;
            continue;
        };
        let w_name =
            g.nodes[idx].inputs.get(1).cloned().ok_or_else(|| QuantError::Graph("Conv without weights".into()))?;
        let w =
            g.initializer(&w_name).cloned().ok_or_else(|| QuantError::Graph(format!("{w_name} is not constant")))?;
        let Data::Float { values, .. } = &w.data else {
            return Err(QuantError::Graph(format!("{w_name} is not float")));
        };
        let oc = *w.dims.first().ok_or_else(|| QuantError::Graph(format!("{w_name} has no shape")))? as usize;
        if oc == 0 || values.len() % oc != 0 {
            return Err(QuantError::Graph(format!("{w_name}: {} values for {oc} channels", values.len())));
        }
        let per = values.len() / oc;
        let mut sw = Vec::with_capacity(oc);
        let mut q = Vec::with_capacity(values.len());
        for ch in values.chunks(per) {
            let m = ch.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = scale_of(m);
            sw.push(s);
            q.extend(ch.iter().map(|v| (v / s).round().clamp(-QMAX, QMAX) as i8));
        }
        let wq = g.init("wq", &w.dims, Data::Int8(q));
        let ws = g.init("wscale", &[oc as i64], Data::Float { values: sw.clone(), exact: true });
        let wz = g.init("wzero", &[oc as i64], Data::Int8(vec![0; oc]));
        let (wdqn, wdq) = qdq_node(g, "DequantizeLinear", [wq, ws, wz], Some(0), "wdq");
        let mut new_nodes = vec![wdqn];
        g.nodes[idx].inputs[1] = wdq;
        if target == Target::OnnxRuntime
            && let Some(b_name) = g.nodes[idx].inputs.get(2).cloned()
        {
            let b = g
                .initializer(&b_name)
                .cloned()
                .ok_or_else(|| QuantError::Graph(format!("{b_name} is not constant")))?;
            let Data::Float { values, .. } = &b.data else {
                return Err(QuantError::Graph(format!("{b_name} is not float")));
            };
            if values.len() != oc {
                return Err(QuantError::Graph(format!("{b_name}: {} values for {oc} channels", values.len())));
            }
            let bs: Vec<f32> = sw.iter().map(|s| s * sx).collect();
            let bq: Vec<i32> = values
                .iter()
                .zip(&bs)
                .map(|(v, s)| (f64::from(*v) / f64::from(*s)).round().clamp(i32::MIN as f64, i32::MAX as f64) as i32)
                .collect();
            let bq = g.init("bq", &[oc as i64], Data::Int32(bq));
            let bsn = g.init("bscale", &[oc as i64], Data::Float { values: bs, exact: true });
            let bz = g.init("bzero", &[oc as i64], Data::Int32(vec![0; oc]));
            let (bdqn, bdq) = qdq_node(g, "DequantizeLinear", [bq, bsn, bz], Some(0), "bdq");
            new_nodes.push(bdqn);
            g.nodes[idx].inputs[2] = bdq;
        }
        weight_nodes.push((idx, new_nodes));
        stats.convs += 1;
    }
    let float_region = g.nodes.iter().filter(|n| n.op == "Conv" && n.keep_float).count();
    stats.float_convs += float_region;
    // 3. Splice the new nodes in, keeping topological order: activation pairs right after their
    //    producer, weight dequantisation right before its Conv.
    let mut after: HashMap<usize, Vec<Node>> = HashMap::new();
    for (at, nodes) in inserted {
        after.entry(at).or_default().extend(nodes);
    }
    let mut before: HashMap<usize, Vec<Node>> = weight_nodes.into_iter().collect();
    let old = std::mem::take(&mut g.nodes);
    let mut nodes = after.remove(&0).unwrap_or_default();
    for (i, n) in old.into_iter().enumerate() {
        nodes.extend(before.remove(&i).unwrap_or_default());
        nodes.push(n);
        nodes.extend(after.remove(&(i + 1)).unwrap_or_default());
    }
    g.nodes = nodes;
    // Drop the float weights (and biases) no node reads any more.
    let used: HashSet<&str> = g.nodes.iter().flat_map(|n| n.inputs.iter().map(String::as_str)).collect();
    g.initializers.retain(|i| used.contains(i.name.as_str()));
    Ok(stats)
}

#[cfg(test)]
mod tests;
