//! Building blocks: Conv (conv + BN + SiLU), Bottleneck, C2f, SPPF.

use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Convolution without bias, batch norm (eps 1e-3, momentum 0.03) and SiLU.
#[derive(Debug)]
pub struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ConvBn {
    /// `c1` → `c2` channels, kernel `k`, stride `s`, "same" padding.
    pub fn new(p: &nn::Path, c1: i64, c2: i64, k: i64, s: i64) -> ConvBn {
        let conv = nn::conv2d(p / "conv", c1, c2, k, nn::ConvConfig { stride: s, padding: k / 2, bias: false, ..Default::default() });
        let bn = nn::batch_norm2d(p / "bn", c2, nn::BatchNormConfig { eps: 1e-3, momentum: 0.03, ..Default::default() });
        ConvBn { conv, bn }
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
        Bottleneck { cv1: ConvBn::new(&(p / "cv1"), c1, c2, 3, 1), cv2: ConvBn::new(&(p / "cv2"), c2, c2, 3, 1), add: shortcut && c1 == c2 }
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let y = self.cv2.forward_t(&self.cv1.forward_t(xs, train), train);
        if self.add { xs + y } else { y }
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
