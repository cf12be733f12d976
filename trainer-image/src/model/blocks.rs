//! Building blocks: Conv (conv + BN + SiLU), Bottleneck, C2f, SPPF.

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use ocellus_vision::onnx::{Attr, Graph};

/// A float tensor's values, row-major (export only: every variable of these models is float).
pub(crate) fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view(-1))
        .expect("float tensor")
}

/// Emits `conv` (with its bias, if any) as an ONNX `Conv`.
pub(crate) fn conv_onnx(g: &mut Graph, x: &str, w: &Tensor, b: Option<&Tensor>, stride: i64) -> String {
    let dims = w.size();
    let k = dims[2];
    let wn = g.init_f32("w", &dims, &values(w));
    let attrs = [
        Attr::Ints("kernel_shape", vec![k, k]),
        Attr::Ints("strides", vec![stride, stride]),
        Attr::Ints("pads", vec![k / 2; 4]),
    ];
    match b {
        Some(b) => {
            let bn = g.init_f32("b", &[dims[0]], &values(b));
            g.node("Conv", &[x, &wn, &bn], &attrs)
        }
        None => g.node("Conv", &[x, &wn], &attrs),
    }
}

/// PyTorch's default initialisation for a layer with `fan_in` inputs, which Ultralytics keeps:
/// `kaiming_uniform_(a=√5)`, i.e. U(±1/√fan_in), for weights, and the same bound for biases.
/// tch's own default (Kaiming with the ReLU gain) draws weights √6 times wider; behind batch norm
/// the scale of a convolution's weights does not change its output, but it divides every
/// relative update by that factor. With batch norm's scale (1, not tch's U(0, 1)), the
/// initialisation was the whole of a gap to Ultralytics: from the same data and recipe, 0.371
/// mAP50-95 after 10 epochs from tch's start, 0.710 from Ultralytics' (issue 17; docs/benchmarks.md).
pub fn torch_default_init(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    nn::Init::Uniform { lo: -bound, up: bound }
}

/// A convolution configured and initialised as PyTorch's `nn.Conv2d` (see [`torch_default_init`]).
pub fn conv_config(c1: i64, k: i64, stride: i64, bias: bool) -> nn::ConvConfig {
    let init = torch_default_init(c1 * k * k);
    nn::ConvConfig { stride, padding: k / 2, bias, ws_init: init, bs_init: init, ..Default::default() }
}

/// Convolution without bias, batch norm (eps 1e-3, momentum 0.03) and SiLU.
#[derive(Debug)]
pub struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    stride: i64,
}

impl ConvBn {
    /// `c1` → `c2` channels, kernel `k`, stride `s`, "same" padding.
    pub fn new(p: &nn::Path, c1: i64, c2: i64, k: i64, s: i64) -> ConvBn {
        let conv = nn::conv2d(p / "conv", c1, c2, k, conv_config(c1, k, s, false));
        // Scale 1 and shift 0, as PyTorch's `BatchNorm2d` (tch's default scale is U(0, 1)).
        let bn = nn::batch_norm2d(
            p / "bn",
            c2,
            nn::BatchNormConfig {
                eps: 1e-3,
                momentum: 0.03,
                ws_init: nn::Init::Const(1.0),
                bs_init: nn::Init::Const(0.0),
                ..Default::default()
            },
        );
        ConvBn { conv, bn, stride: s }
    }

    /// ONNX: the batch norm folded into the convolution (inference statistics), then SiLU.
    pub(crate) fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let (w, b) = tch::no_grad(|| {
            let gamma = self.bn.ws.as_ref().expect("affine batch norm");
            let beta = self.bn.bs.as_ref().expect("affine batch norm");
            let scale = gamma / (&self.bn.running_var + 1e-3).sqrt();
            (&self.conv.ws * scale.view([-1, 1, 1, 1]), beta - &self.bn.running_mean * &scale)
        });
        let y = conv_onnx(g, x, &w, Some(&b), self.stride);
        let s = g.node("Sigmoid", &[&y], &[]);
        g.node("Mul", &[&y, &s], &[])
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train).silu()
    }
}

/// Two 3x3 convolutions with an optional residual connection.
#[derive(Debug)]
pub struct Bottleneck {
    cv1: ConvBn,
    cv2: ConvBn,
    add: bool,
}

impl Bottleneck {
    /// Ultralytics' `Bottleneck(c1, c2, shortcut, k=(3, 3), e=1.0)`.
    pub fn new(p: &nn::Path, c1: i64, c2: i64, shortcut: bool) -> Bottleneck {
        Bottleneck {
            cv1: ConvBn::new(&(p / "cv1"), c1, c2, 3, 1),
            cv2: ConvBn::new(&(p / "cv2"), c2, c2, 3, 1),
            add: shortcut && c1 == c2,
        }
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let y = self.cv2.forward_t(&self.cv1.forward_t(xs, train), train);
        if self.add { xs + y } else { y }
    }
}

impl Bottleneck {
    fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let y = self.cv1.onnx(g, x);
        let y = self.cv2.onnx(g, &y);
        if self.add { g.node("Add", &[x, &y], &[]) } else { y }
    }
}

/// CSP bottleneck with two convolutions (`C2f`): split, `n` bottlenecks on the second half,
/// concatenate every intermediate, fuse.
#[derive(Debug)]
pub struct C2f {
    cv1: ConvBn,
    cv2: ConvBn,
    m: Vec<Bottleneck>,
}

impl C2f {
    /// Ultralytics' `C2f(c1, c2, n, shortcut, e=0.5)`.
    pub fn new(p: &nn::Path, c1: i64, c2: i64, n: i64, shortcut: bool) -> C2f {
        let c = c2 / 2;
        C2f {
            cv1: ConvBn::new(&(p / "cv1"), c1, 2 * c, 1, 1),
            cv2: ConvBn::new(&(p / "cv2"), (2 + n) * c, c2, 1, 1),
            m: (0..n).map(|i| Bottleneck::new(&(p / "m" / i), c, c, shortcut)).collect(),
        }
    }
}

impl ModuleT for C2f {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = self.cv1.forward_t(xs, train).chunk(2, 1);
        for m in &self.m {
            let next = m.forward_t(ys.last().expect("chunk"), train);
            ys.push(next);
        }
        Tensor::cat(&ys, 1).apply_t(&self.cv2, train)
    }
}

impl C2f {
    /// ONNX: `Split` in halves, the bottlenecks, `Concat`, fuse.
    pub(crate) fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let y = self.cv1.onnx(g, x);
        let c = self.cv2.conv.ws.size()[1] / (2 + self.m.len() as i64);
        let split = g.init_i64("split", &[c, c]);
        let mut ys = g.node_n("Split", &[&y, &split], 2, &[Attr::Int("axis", 1)]);
        for m in &self.m {
            let next = m.onnx(g, ys.last().expect("split"));
            ys.push(next);
        }
        let refs: Vec<&str> = ys.iter().map(String::as_str).collect();
        let cat = g.node("Concat", &refs, &[Attr::Int("axis", 1)]);
        self.cv2.onnx(g, &cat)
    }
}

/// Spatial pyramid pooling, fast: three chained 5x5 max-pools.
#[derive(Debug)]
pub struct Sppf {
    cv1: ConvBn,
    cv2: ConvBn,
}

impl Sppf {
    /// Ultralytics' `SPPF(c1, c2, k=5)`.
    pub fn new(p: &nn::Path, c1: i64, c2: i64) -> Sppf {
        let c = c1 / 2;
        Sppf { cv1: ConvBn::new(&(p / "cv1"), c1, c, 1, 1), cv2: ConvBn::new(&(p / "cv2"), c * 4, c2, 1, 1) }
    }
}

impl ModuleT for Sppf {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let x = self.cv1.forward_t(xs, train);
        let pool = |t: &Tensor| t.max_pool2d([5, 5], [1, 1], [2, 2], [1, 1], false);
        let y1 = pool(&x);
        let y2 = pool(&y1);
        let y3 = pool(&y2);
        Tensor::cat(&[x, y1, y2, y3], 1).apply_t(&self.cv2, train)
    }
}

impl Sppf {
    /// ONNX: three chained `MaxPool`s.
    pub(crate) fn onnx(&self, g: &mut Graph, x: &str) -> String {
        let x = self.cv1.onnx(g, x);
        let pool = [
            Attr::Ints("kernel_shape", vec![5, 5]),
            Attr::Ints("strides", vec![1, 1]),
            Attr::Ints("pads", vec![2, 2, 2, 2]),
        ];
        let y1 = g.node("MaxPool", &[&x], &pool);
        let y2 = g.node("MaxPool", &[&y1], &pool);
        let y3 = g.node("MaxPool", &[&y2], &pool);
        let cat = g.node("Concat", &[&x, &y1, &y2, &y3], &[Attr::Int("axis", 1)]);
        self.cv2.onnx(g, &cat)
    }
}
