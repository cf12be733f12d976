//! The YOLOv8 detector and classifier at Ultralytics' scales.

use std::str::FromStr;

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use super::blocks::{C2f, ConvBn, Sppf, conv_config, conv_onnx, torch_default_init};
use crate::error::ParseError;
use ocellus_vision::onnx::{Attr, Graph};

/// Detector or classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Anchor-free detector.
    Detect,
    /// Image classifier.
    Classify,
}

/// Depth and width multipliers and the channel cap of a scale (n, s, m, l, x).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    /// Repeat multiplier.
    pub depth: f64,
    /// Channel multiplier.
    pub width: f64,
    /// Channel cap before the multiplier.
    pub max_channels: i64,
}

impl Scale {
    /// Ultralytics' `scales` of `yolov8.yaml` and `yolov8-cls.yaml`.
    pub fn of(letter: char, kind: ModelKind) -> Option<Scale> {
        let (depth, width, max_det) = match letter {
            'n' => (0.33, 0.25, 1024),
            's' => (0.33, 0.50, 1024),
            'm' => (0.67, 0.75, 768),
            'l' => (1.00, 1.00, 512),
            'x' => (1.00, 1.25, 512),
            _ => return None,
        };
        Some(Scale { depth, width, max_channels: if kind == ModelKind::Classify { 1024 } else { max_det } })
    }

    /// Channels of a layer declared with `c` (`make_divisible(min(c, max) * width, 8)`).
    pub fn ch(&self, c: i64) -> i64 {
        let x = c.min(self.max_channels) as f64 * self.width;
        ((x / 8.0).ceil() as i64) * 8
    }

    /// Repeats of a block declared with `n`.
    pub fn n(&self, n: i64) -> i64 {
        ((n as f64 * self.depth).round() as i64).max(1)
    }
}

/// A parsed architecture name such as `yolov8n` or `yolov8s-cls`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Architecture {
    /// Detector or classifier.
    pub kind: ModelKind,
    /// Scale letter.
    pub letter: char,
    /// Scale.
    pub scale: Scale,
}

impl FromStr for Architecture {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let rest = s
            .strip_prefix("yolov8")
            .ok_or_else(|| ParseError(format!("unknown architecture {s:?}: expected yolov8{{n,s,m,l,x}}[-cls]")))?;
        let mut chars = rest.chars();
        let letter = chars.next().ok_or_else(|| ParseError(format!("architecture {s:?} has no scale letter")))?;
        let kind = match chars.as_str() {
            "" => ModelKind::Detect,
            "-cls" => ModelKind::Classify,
            "-seg" | "-pose" | "-obb" => {
                return Err(ParseError(format!(
                    "architecture {s:?}: segment, pose and OBB training are not supported yet; use yolov8{letter} (detect) or yolov8{letter}-cls"
                )));
            }
            other => return Err(ParseError(format!("unknown architecture suffix {other:?} in {s:?}"))),
        };
        let scale = Scale::of(letter, kind)
            .ok_or_else(|| ParseError(format!("unknown scale {letter:?} in {s:?}: expected n, s, m, l or x")))?;
        Ok(Architecture { kind, letter, scale })
    }
}

/// Number of distribution bins per box side.
pub const REG_MAX: i64 = 16;
/// Strides of the three detection levels.
pub const STRIDES: [i64; 3] = [8, 16, 32];

/// The decoupled detection head (Ultralytics' `Detect`).
#[derive(Debug)]
struct DetectHead {
    nc: i64,
    cv2: Vec<(ConvBn, ConvBn, nn::Conv2D)>,
    cv3: Vec<(ConvBn, ConvBn, nn::Conv2D)>,
    dfl: Tensor,
}

impl DetectHead {
    fn new(p: &nn::Path, nc: i64, ch: [i64; 3]) -> DetectHead {
        let c2 = 16.max(ch[0] / 4).max(REG_MAX * 4);
        let c3 = ch[0].max(nc.min(100));
        let branch = |name: &str, i: usize, x: i64, c: i64, out: i64, bias: f64| {
            let q = p / name / i;
            let last = nn::conv2d(&q / 2, c, out, 1, conv_config(c, 1, 1, true));
            if let Some(b) = &last.bs {
                tch::no_grad(|| {
                    let _ = b.shallow_clone().fill_(bias);
                });
            }
            (ConvBn::new(&(&q / 0), x, c, 3, 1), ConvBn::new(&(&q / 1), c, c, 3, 1), last)
        };
        // Box bias 2.0, as `Detect.bias_init` of the pinned Ultralytics (8.4; 8.3 and earlier used 1.0).
        let cv2 = (0..3).map(|i| branch("cv2", i, ch[i], c2, 4 * REG_MAX, 2.0)).collect();
        // Class bias prior: 5 objects per 640x640 image at this stride.
        let cv3 = (0..3)
            .map(|i| {
                let s = STRIDES[i] as f64;
                branch("cv3", i, ch[i], c3, nc, (5.0 / nc as f64 / (640.0 / s).powi(2)).ln())
            })
            .collect();
        // The DFL projection: fixed weights 0..16 (a buffer-like, non-trainable variable).
        let dfl = (p / "dfl" / "conv").zeros_no_train("weight", &[1, REG_MAX, 1, 1]);
        tch::no_grad(|| {
            let arange = Tensor::arange(REG_MAX, (Kind::Float, dfl.device())).view([1, REG_MAX, 1, 1]);
            dfl.shallow_clone().copy_(&arange);
        });
        DetectHead { nc, cv2, cv3, dfl }
    }

    fn levels(&self, feats: &[Tensor], train: bool) -> Vec<Tensor> {
        let run =
            |b: &(ConvBn, ConvBn, nn::Conv2D), x: &Tensor| b.1.forward_t(&b.0.forward_t(x, train), train).apply(&b.2);
        feats.iter().enumerate().map(|(i, x)| Tensor::cat(&[run(&self.cv2[i], x), run(&self.cv3[i], x)], 1)).collect()
    }

    /// `[B, 4 + nc, anchors]`: boxes (cx, cy, w, h in input pixels) and class probabilities.
    fn decode(&self, levels: &[Tensor]) -> Tensor {
        // The batch dimension is always `-1` so that traced (TorchScript) graphs keep it dynamic.
        let no = REG_MAX * 4 + self.nc;
        let flat: Vec<Tensor> = levels.iter().map(|l| l.view([-1, no, l.size()[2] * l.size()[3]])).collect();
        let x = Tensor::cat(&flat, 2);
        let parts = x.split_with_sizes([REG_MAX * 4, self.nc], 1);
        let a = x.size()[2];
        // Expected distance per side: softmax over the bins, weighted by 0..16.
        let dist = parts[0]
            .view([-1, 4, REG_MAX, a])
            .softmax(2, Kind::Float)
            .transpose(1, 2)
            .conv2d(&self.dfl, None::<&Tensor>, [1, 1], [0, 0], [1, 1], 1)
            .view([-1, 4, a]);
        let (anchors, strides) = make_anchors(levels, x.device());
        let lt = dist.narrow(1, 0, 2);
        let rb = dist.narrow(1, 2, 2);
        let anchors = anchors.transpose(0, 1).unsqueeze(0);
        let x1y1 = &anchors - lt;
        let x2y2 = &anchors + rb;
        let cxy = (&x1y1 + &x2y2) / 2.0;
        let wh = x2y2 - x1y1;
        let boxes = Tensor::cat(&[cxy, wh], 1) * strides.transpose(0, 1).unsqueeze(0);
        Tensor::cat(&[boxes, parts[1].sigmoid()], 1)
    }
}

impl DetectHead {
    /// ONNX: the branches, then decoding with anchors precomputed for a `imgsz` square input
    /// (the batch stays dynamic). Same arithmetic as [`DetectHead::decode`].
    fn onnx(&self, g: &mut Graph, feats: &[String], imgsz: i64) -> String {
        let no = REG_MAX * 4 + self.nc;
        let branch = |g: &mut Graph, b: &(ConvBn, ConvBn, nn::Conv2D), x: &str| {
            let y = b.0.onnx(g, x);
            let y = b.1.onnx(g, &y);
            // The final box-distribution and class-logit convolutions stay float when quantised.
            g.keep_float = true;
            let out = conv_onnx(g, &y, &b.2.ws, b.2.bs.as_ref(), 1);
            g.keep_float = false;
            out
        };
        let shape = g.init_i64("shape", &[0, no, -1]);
        let mut flat = Vec::new();
        for (i, x) in feats.iter().enumerate() {
            let a = branch(g, &self.cv2[i], x);
            let c = branch(g, &self.cv3[i], x);
            g.keep_float = true;
            let cat = g.node("Concat", &[&a, &c], &[Attr::Int("axis", 1)]);
            flat.push(g.node("Reshape", &[&cat, &shape], &[]));
            g.keep_float = false;
        }
        // Decoding (DFL, anchors, sigmoid) stays float when quantised.
        g.keep_float = true;
        let refs: Vec<&str> = flat.iter().map(String::as_str).collect();
        let x = g.node("Concat", &refs, &[Attr::Int("axis", 2)]);
        let split = g.init_i64("split", &[REG_MAX * 4, self.nc]);
        let parts = g.node_n("Split", &[&x, &split], 2, &[Attr::Int("axis", 1)]);
        let shape = g.init_i64("shape", &[0, 4, REG_MAX, -1]);
        let bins = g.node("Reshape", &[&parts[0], &shape], &[]);
        let soft = g.node("Softmax", &[&bins], &[Attr::Int("axis", 2)]);
        let proj: Vec<f32> = (0..REG_MAX).map(|i| i as f32).collect();
        let proj = g.init_f32("dfl", &[1, 1, REG_MAX, 1], &proj);
        let weighted = g.node("Mul", &[&soft, &proj], &[]);
        let axes = g.init_i64("axes", &[2]);
        let dist = g.node("ReduceSum", &[&weighted, &axes], &[Attr::Int("keepdims", 0)]);
        let halves = g.init_i64("split", &[2, 2]);
        let lr = g.node_n("Split", &[&dist, &halves], 2, &[Attr::Int("axis", 1)]);
        // Anchors and strides for the fixed input size.
        let sizes: Vec<(i64, i64)> = STRIDES.iter().map(|s| (imgsz / s, *s)).collect();
        let (mut ax, mut ay, mut st) = (Vec::new(), Vec::new(), Vec::new());
        for (n, s) in sizes {
            for y in 0..n {
                for x in 0..n {
                    ax.push(x as f32 + 0.5);
                    ay.push(y as f32 + 0.5);
                    st.push(s as f32);
                }
            }
        }
        let a = ax.len() as i64;
        ax.extend(ay);
        let anchors = g.init_f32("anchors", &[1, 2, a], &ax);
        let strides = g.init_f32("strides", &[1, 1, a], &st);
        let x1y1 = g.node("Sub", &[&anchors, &lr[0]], &[]);
        let x2y2 = g.node("Add", &[&anchors, &lr[1]], &[]);
        let sum = g.node("Add", &[&x1y1, &x2y2], &[]);
        let two = g.init_f32("two", &[1], &[2.0]);
        let cxy = g.node("Div", &[&sum, &two], &[]);
        let wh = g.node("Sub", &[&x2y2, &x1y1], &[]);
        let boxes = g.node("Concat", &[&cxy, &wh], &[Attr::Int("axis", 1)]);
        let boxes = g.node("Mul", &[&boxes, &strides], &[]);
        let cls = g.node("Sigmoid", &[&parts[1]], &[]);
        g.node("Concat", &[&boxes, &cls], &[Attr::Int("axis", 1)])
    }
}

/// Anchor points (cell centres, in grid units) and their strides, for every level.
pub fn make_anchors(levels: &[Tensor], device: Device) -> (Tensor, Tensor) {
    let mut points = Vec::new();
    let mut strides = Vec::new();
    for (l, s) in levels.iter().zip(STRIDES) {
        let (h, w) = (l.size()[2], l.size()[3]);
        let sx = Tensor::arange(w, (Kind::Float, device)) + 0.5;
        let sy = Tensor::arange(h, (Kind::Float, device)) + 0.5;
        let grid = Tensor::meshgrid_indexing(&[sy, sx], "ij");
        points.push(Tensor::stack(&[grid[1].flatten(0, -1), grid[0].flatten(0, -1)], 1));
        strides.push(Tensor::full([h * w, 1], s as f64, (Kind::Float, device)));
    }
    (Tensor::cat(&points, 0), Tensor::cat(&strides, 0))
}

/// A backbone layer.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "a few per model, built once")]
enum Layer {
    Conv(ConvBn),
    C2f(C2f),
}

impl Layer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            Layer::Conv(l) => l.forward_t(xs, train),
            Layer::C2f(l) => l.forward_t(xs, train),
        }
    }

    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        match self {
            Layer::Conv(l) => l.onnx(g, x),
            Layer::C2f(l) => l.onnx(g, x),
        }
    }
}

/// The backbone shared by detector and classifier (layers 0–8).
#[derive(Debug)]
struct Backbone {
    layers: Vec<Layer>,
}

fn backbone(p: &nn::Path, s: &Scale) -> (Backbone, [i64; 3]) {
    let (c64, c128, c256, c512, c1024) = (s.ch(64), s.ch(128), s.ch(256), s.ch(512), s.ch(1024));
    let layers = vec![
        Layer::Conv(ConvBn::new(&(p / 0), 3, c64, 3, 2)),
        Layer::Conv(ConvBn::new(&(p / 1), c64, c128, 3, 2)),
        Layer::C2f(C2f::new(&(p / 2), c128, c128, s.n(3), true)),
        Layer::Conv(ConvBn::new(&(p / 3), c128, c256, 3, 2)),
        Layer::C2f(C2f::new(&(p / 4), c256, c256, s.n(6), true)),
        Layer::Conv(ConvBn::new(&(p / 5), c256, c512, 3, 2)),
        Layer::C2f(C2f::new(&(p / 6), c512, c512, s.n(6), true)),
        Layer::Conv(ConvBn::new(&(p / 7), c512, c1024, 3, 2)),
        Layer::C2f(C2f::new(&(p / 8), c1024, c1024, s.n(3), true)),
    ];
    (Backbone { layers }, [c256, c512, c1024])
}

/// The YOLOv8 detector: backbone, SPPF, PAN neck and decoupled head.
#[derive(Debug)]
pub struct Detector {
    backbone: Backbone,
    sppf: Sppf,
    neck: [C2f; 4],
    down: [ConvBn; 2],
    head: DetectHead,
    /// Number of classes.
    pub nc: i64,
}

impl Detector {
    /// Builds the detector under `p` (use `vs.root() / "model"` for Ultralytics names).
    pub fn new(p: &nn::Path, arch: &Architecture, nc: i64) -> Detector {
        let s = &arch.scale;
        let (backbone, [c256, c512, c1024]) = backbone(p, s);
        let n3 = s.n(3);
        Detector {
            backbone,
            sppf: Sppf::new(&(p / 9), c1024, c1024),
            neck: [
                C2f::new(&(p / 12), c1024 + c512, c512, n3, false),
                C2f::new(&(p / 15), c512 + c256, c256, n3, false),
                C2f::new(&(p / 18), c256 + c512, c512, n3, false),
                C2f::new(&(p / 21), c512 + c1024, c1024, n3, false),
            ],
            down: [ConvBn::new(&(p / 16), c256, c256, 3, 2), ConvBn::new(&(p / 19), c512, c512, 3, 2)],
            head: DetectHead::new(&(p / 22), nc, [c256, c512, c1024]),
            nc,
        }
    }

    /// Raw head outputs per level, `[B, 64 + nc, H, W]` (what the loss consumes).
    pub fn forward_levels(&self, xs: &Tensor, train: bool) -> Vec<Tensor> {
        let mut x = xs.shallow_clone();
        let mut saved = Vec::new();
        for (i, l) in self.backbone.layers.iter().enumerate() {
            x = l.forward_t(&x, train);
            if i == 4 || i == 6 {
                saved.push(x.shallow_clone());
            }
        }
        let p5 = self.sppf.forward_t(&x, train);
        let up = |t: &Tensor| t.upsample_nearest2d([t.size()[2] * 2, t.size()[3] * 2], Some(2.0), Some(2.0));
        let h12 = self.neck[0].forward_t(&Tensor::cat(&[up(&p5), saved[1].shallow_clone()], 1), train);
        let p3 = self.neck[1].forward_t(&Tensor::cat(&[up(&h12), saved[0].shallow_clone()], 1), train);
        let p4 = self.neck[2].forward_t(&Tensor::cat(&[self.down[0].forward_t(&p3, train), h12], 1), train);
        let p5 = self.neck[3].forward_t(&Tensor::cat(&[self.down[1].forward_t(&p4, train), p5], 1), train);
        self.head.levels(&[p3, p4, p5], train)
    }

    /// Decoded predictions `[B, 4 + nc, anchors]` (eval mode), the layout `ocellus_vision::decode` reads.
    pub fn predict(&self, xs: &Tensor) -> Tensor {
        self.head.decode(&self.forward_levels(xs, false))
    }

    /// Decodes raw level outputs.
    pub fn decode(&self, levels: &[Tensor]) -> Tensor {
        self.head.decode(levels)
    }

    /// Emits the inference graph (eval mode, batch norm folded) for an `imgsz` square input;
    /// returns the name of the `[B, 4 + nc, anchors]` output.
    pub fn onnx(&self, g: &mut Graph, input: &str, imgsz: i64) -> String {
        let mut x = input.to_string();
        let mut saved = Vec::new();
        for (i, l) in self.backbone.layers.iter().enumerate() {
            x = l.onnx(g, &x);
            if i == 4 || i == 6 {
                saved.push(x.clone());
            }
        }
        let p5 = self.sppf.onnx(g, &x);
        let scales = g.init_f32_exact("scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
        let up = |g: &mut Graph, t: &str| {
            g.node(
                "Resize",
                &[t, "", &scales],
                &[
                    Attr::Str("mode", "nearest"),
                    Attr::Str("coordinate_transformation_mode", "asymmetric"),
                    Attr::Str("nearest_mode", "floor"),
                ],
            )
        };
        let u = up(g, &p5);
        let cat = g.node("Concat", &[&u, &saved[1]], &[Attr::Int("axis", 1)]);
        let h12 = self.neck[0].onnx(g, &cat);
        let u = up(g, &h12);
        let cat = g.node("Concat", &[&u, &saved[0]], &[Attr::Int("axis", 1)]);
        let p3 = self.neck[1].onnx(g, &cat);
        let d = self.down[0].onnx(g, &p3);
        let cat = g.node("Concat", &[&d, &h12], &[Attr::Int("axis", 1)]);
        let p4 = self.neck[2].onnx(g, &cat);
        let d = self.down[1].onnx(g, &p4);
        let cat = g.node("Concat", &[&d, &p5], &[Attr::Int("axis", 1)]);
        let p5 = self.neck[3].onnx(g, &cat);
        self.head.onnx(g, &[p3, p4, p5], imgsz)
    }
}

/// The YOLOv8 classifier: the backbone and a 1280-channel pooled linear head.
#[derive(Debug)]
pub struct Classifier {
    backbone: Backbone,
    conv: ConvBn,
    linear: nn::Linear,
}

impl Classifier {
    /// Builds the classifier under `p`.
    pub fn new(p: &nn::Path, arch: &Architecture, nc: i64) -> Classifier {
        let (backbone, [_, _, c1024]) = backbone(p, &arch.scale);
        let head = p / 9;
        Classifier {
            backbone,
            conv: ConvBn::new(&(&head / "conv"), c1024, 1280, 1, 1),
            linear: nn::linear(
                &head / "linear",
                1280,
                nc,
                nn::LinearConfig {
                    ws_init: torch_default_init(1280),
                    bs_init: Some(torch_default_init(1280)),
                    bias: true,
                },
            ),
        }
    }

    /// Logits `[B, nc]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = xs.shallow_clone();
        for l in &self.backbone.layers {
            x = l.forward_t(&x, train);
        }
        self.conv.forward_t(&x, train).adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.linear)
    }

    /// Class probabilities `[B, nc]` (softmax of the logits), as exported.
    pub fn probabilities(&self, xs: &Tensor) -> Tensor {
        self.forward_t(xs, false).softmax(1, Kind::Float)
    }

    /// Emits the inference graph; returns the name of the `[B, nc]` probabilities.
    pub fn onnx(&self, g: &mut Graph, input: &str) -> String {
        let mut x = input.to_string();
        for l in &self.backbone.layers {
            x = l.onnx(g, &x);
        }
        let y = self.conv.onnx(g, &x);
        // Pooling, the linear layer and the softmax stay float when quantised.
        g.keep_float = true;
        let pooled = g.node("GlobalAveragePool", &[&y], &[]);
        let flat = g.node("Flatten", &[&pooled], &[Attr::Int("axis", 1)]);
        let w = g.init_f32("w", &self.linear.ws.size(), &super::blocks::values(&self.linear.ws));
        let b = self.linear.bs.as_ref().expect("linear bias");
        let b = g.init_f32("b", &b.size(), &super::blocks::values(b));
        let logits = g.node("Gemm", &[&flat, &w, &b], &[Attr::Int("transB", 1)]);
        g.node("Softmax", &[&logits], &[Attr::Int("axis", 1)])
    }
}

/// Parameters as PyTorch counts them: trainable variables plus the fixed DFL weights (batch-norm
/// running statistics are buffers, not parameters).
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    let vars = vs.variables();
    let trainable: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    let dfl: i64 = vars.iter().filter(|(k, _)| k.ends_with("dfl.conv.weight")).map(|(_, t)| t.numel() as i64).sum();
    trainable + dfl
}
