//! The YOLOv8 detection loss: task-aligned assignment (TAL: alpha 0.5, beta 6, top-10), CIoU box
//! loss, distribution focal loss and BCE classification loss, with Ultralytics' gains
//! (box 7.5, cls 0.5, dfl 1.5).

use tch::{Kind, Reduction, Tensor};

use crate::model::yolo::{REG_MAX, STRIDES, make_anchors};

/// One ground-truth box: class and normalised centre-x, centre-y, width, height.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// Class index.
    pub class: i64,
    /// Normalised `cx, cy, w, h`.
    pub xywh: [f32; 4],
}

/// Loss settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    /// Box (CIoU) gain.
    pub box_gain: f64,
    /// Classification gain.
    pub cls_gain: f64,
    /// DFL gain.
    pub dfl_gain: f64,
    /// Candidates per ground truth.
    pub topk: i64,
    /// Score exponent of the alignment metric.
    pub alpha: f64,
    /// IoU exponent of the alignment metric.
    pub beta: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig { box_gain: 7.5, cls_gain: 0.5, dfl_gain: 1.5, topk: 10, alpha: 0.5, beta: 6.0 }
    }
}

const EPS: f64 = 1e-9;

/// Complete IoU of `(..., 4)` xyxy boxes, broadcast; returns `(..., 1)`.
pub fn ciou(b1: &Tensor, b2: &Tensor) -> Tensor {
    let eps = 1e-7;
    let p = |t: &Tensor| t.chunk(4, -1);
    let (a, b) = (p(b1), p(b2));
    let (w1, h1) = (&a[2] - &a[0], &a[3] - &a[1] + eps);
    let (w2, h2) = (&b[2] - &b[0], &b[3] - &b[1] + eps);
    let inter = (a[2].minimum(&b[2]) - a[0].maximum(&b[0])).clamp_min(0.0)
        * (a[3].minimum(&b[3]) - a[1].maximum(&b[1])).clamp_min(0.0);
    let union = &w1 * &h1 + &w2 * &h2 - &inter + eps;
    let iou = inter / union;
    let cw = a[2].maximum(&b[2]) - a[0].minimum(&b[0]);
    let ch = a[3].maximum(&b[3]) - a[1].minimum(&b[1]);
    let c2 = cw.square() + ch.square() + eps;
    let rho2 = ((&b[0] + &b[2] - &a[0] - &a[2]).square() + (&b[1] + &b[3] - &a[1] - &a[3]).square()) / 4.0;
    let v = ((w2 / h2).atan() - (w1 / h1).atan()).square() * (4.0 / std::f64::consts::PI.powi(2));
    let alpha = tch::no_grad(|| &v / (&v - &iou + (1.0 + eps)));
    iou - (rho2 / c2 + v * alpha)
}

/// Outputs of the assigner.
#[derive(Debug)]
pub struct Assignment {
    /// `(B, A, 4)` assigned boxes (pixels, xyxy).
    pub target_bboxes: Tensor,
    /// `(B, A, nc)` soft targets.
    pub target_scores: Tensor,
    /// `(B, A)` foreground anchors.
    pub fg_mask: Tensor,
}

/// Task-aligned assignment. `pd_scores` `(B, A, nc)` probabilities, `pd_bboxes` `(B, A, 4)` and
/// `anchors` `(A, 2)` in pixels, `gt_labels` `(B, n, 1)`, `gt_bboxes` `(B, n, 4)` pixels xyxy,
/// `mask_gt` `(B, n, 1)`.
#[allow(clippy::too_many_arguments, reason = "the tensors of Ultralytics' TaskAlignedAssigner.forward, in its order")]
pub fn assign(
    cfg: &LossConfig,
    nc: i64,
    pd_scores: &Tensor,
    pd_bboxes: &Tensor,
    anchors: &Tensor,
    gt_labels: &Tensor,
    gt_bboxes: &Tensor,
    mask_gt: &Tensor,
) -> Assignment {
    let (b, a) = (pd_scores.size()[0], pd_scores.size()[1]);
    let n = gt_bboxes.size()[1];
    let dev = pd_scores.device();
    if n == 0 {
        return Assignment {
            target_bboxes: pd_bboxes.zeros_like(),
            target_scores: pd_scores.zeros_like(),
            fg_mask: Tensor::zeros([b, a], (Kind::Bool, dev)),
        };
    }
    // Anchors strictly inside each ground truth (sides under the middle stride are widened to it).
    let stride_val = STRIDES[1] as f64;
    let cxy = (gt_bboxes.narrow(2, 0, 2) + gt_bboxes.narrow(2, 2, 2)) / 2.0;
    let wh = gt_bboxes.narrow(2, 2, 2) - gt_bboxes.narrow(2, 0, 2);
    let small = wh.lt(stride_val).logical_and(&mask_gt.to_kind(Kind::Bool));
    let wh = wh.where_self(&small.logical_not(), &Tensor::from(stride_val).to_kind(wh.kind()).to_device(dev));
    let lt = (&cxy - &wh / 2.0).unsqueeze(2);
    let rb = (&cxy + &wh / 2.0).unsqueeze(2);
    let ax = anchors.narrow(1, 0, 1).view([1, 1, a]);
    let ay = anchors.narrow(1, 1, 1).view([1, 1, a]);
    let mask_in = (&ax - lt.select(3, 0))
        .gt(EPS)
        .logical_and(&(&ay - lt.select(3, 1)).gt(EPS))
        .logical_and(&(rb.select(3, 0) - &ax).gt(EPS))
        .logical_and(&(rb.select(3, 1) - &ay).gt(EPS));
    let mask_gt_b = mask_gt.to_kind(Kind::Bool); // (B, n, 1)
    let valid = mask_in.logical_and(&mask_gt_b); // (B, n, A)

    // Alignment metric: score^alpha * CIoU^beta on the candidates.
    let labels = gt_labels.to_kind(Kind::Int64).expand([b, n, a], false);
    let scores = pd_scores.permute([0, 2, 1]).gather(1, &labels, false); // (B, n, A)
    let overlaps = ciou(&gt_bboxes.unsqueeze(2), &pd_bboxes.unsqueeze(1)).squeeze_dim(-1).clamp_min(0.0);
    let zeros = overlaps.zeros_like();
    let overlaps = overlaps.where_self(&valid, &zeros);
    let align = (scores.pow_tensor_scalar(cfg.alpha) * overlaps.pow_tensor_scalar(cfg.beta)).where_self(&valid, &zeros);

    // Top-k candidates per ground truth; an anchor picked twice by one row is dropped.
    let (_, topk_idx) = align.topk(cfg.topk, -1, true, true);
    let topk_idx = topk_idx.masked_fill(&mask_gt_b.expand([b, n, cfg.topk], false).logical_not(), 0);
    let count = Tensor::zeros([b, n, a], (Kind::Int8, dev)).scatter_add(
        -1,
        &topk_idx,
        &topk_idx.ones_like().to_kind(Kind::Int8),
    );
    let mask_topk = count.masked_fill(&count.gt(1), 0);
    let mask_pos = (mask_topk * mask_in.to_kind(Kind::Int8)) * mask_gt_b.to_kind(Kind::Int8);

    // Anchors claimed by several ground truths keep the one they overlap most.
    let fg = mask_pos.sum_dim_intlist(-2, false, Kind::Int64);
    let multi = fg.unsqueeze(1).gt(1).expand([b, n, a], false);
    let max_idx = overlaps.argmax(1, false);
    let is_max = Tensor::zeros([b, n, a], (Kind::Int8, dev)).scatter_value(1, &max_idx.unsqueeze(1), 1);
    let mask_pos = is_max.where_self(&multi, &mask_pos);
    let (fg_mask, target_gt_idx) = mask_pos.max_dim(-2, false);

    // Targets.
    let batch_ind = Tensor::arange(b, (Kind::Int64, dev)).unsqueeze(-1);
    let flat_idx = &target_gt_idx + batch_ind * n;
    let target_labels = gt_labels
        .to_kind(Kind::Int64)
        .flatten(0, -1)
        .index_select(0, &flat_idx.flatten(0, -1))
        .view([b, a])
        .clamp_min(0);
    let target_bboxes = gt_bboxes.view([-1, 4]).index_select(0, &flat_idx.flatten(0, -1)).view([b, a, 4]);
    let fg_bool = fg_mask.gt(0);
    let target_scores =
        target_labels.one_hot(nc).to_kind(pd_scores.kind()) * fg_bool.unsqueeze(-1).to_kind(pd_scores.kind());

    // Normalise by the best alignment and overlap of each ground truth.
    let mp = mask_pos.to_kind(align.kind());
    let align = &align * &mp;
    let pos_align = align.amax([-1], true);
    let pos_overlaps = (&overlaps * &mp).amax([-1], true);
    let norm = (align * pos_overlaps / (pos_align + EPS)).amax([-2], false).unsqueeze(-1);
    Assignment { target_bboxes, target_scores: target_scores * norm, fg_mask: fg_bool }
}

/// The loss of a batch: `levels` are the detector's raw outputs, `targets[i]` the boxes of image
/// `i`. Returns `[box, cls, dfl]` (gains applied) times the batch size, as Ultralytics does.
pub fn detection_loss(cfg: &LossConfig, nc: i64, levels: &[Tensor], targets: &[Vec<Target>]) -> Tensor {
    let dev = levels[0].device();
    let b = levels[0].size()[0];
    let no = REG_MAX * 4 + nc;
    let flat: Vec<Tensor> = levels.iter().map(|l| l.view([b, no, -1])).collect();
    let x = Tensor::cat(&flat, 2);
    let parts = x.split_with_sizes([REG_MAX * 4, nc], 1);
    let pred_distri = parts[0].permute([0, 2, 1]).contiguous();
    let pred_scores = parts[1].permute([0, 2, 1]).contiguous();
    let a = pred_scores.size()[1];
    let (anchors, stride) = make_anchors(levels, dev);
    let imgsz_h = (levels[0].size()[2] * STRIDES[0]) as f32;
    let imgsz_w = (levels[0].size()[3] * STRIDES[0]) as f32;

    // Padded ground truth: (B, n, 1) labels, (B, n, 4) pixel xyxy.
    let n = targets.iter().map(Vec::len).max().unwrap_or(0) as i64;
    let mut labels = vec![0f32; (b * n) as usize];
    let mut boxes = vec![0f32; (b * n * 4) as usize];
    for (i, t) in targets.iter().enumerate().take(b as usize) {
        for (j, g) in t.iter().enumerate() {
            let k = i * n as usize + j;
            labels[k] = g.class as f32;
            let [cx, cy, w, h] = g.xywh;
            let (cx, cy, w, h) = (cx * imgsz_w, cy * imgsz_h, w * imgsz_w, h * imgsz_h);
            boxes[k * 4..k * 4 + 4].copy_from_slice(&[cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]);
        }
    }
    let gt_labels = Tensor::from_slice(&labels).view([b, n, 1]).to_device(dev);
    let gt_bboxes = Tensor::from_slice(&boxes).view([b, n, 4]).to_device(dev);
    let mask_gt = gt_bboxes.sum_dim_intlist(2, true, Kind::Float).gt(0.0);

    // Predicted boxes in grid units: expected distance per side.
    let proj = Tensor::arange(REG_MAX, (Kind::Float, dev));
    let dist = pred_distri.view([b, a, 4, REG_MAX]).softmax(3, Kind::Float).matmul(&proj);
    let anc = anchors.unsqueeze(0);
    let pred_bboxes = Tensor::cat(&[&anc - dist.narrow(2, 0, 2), &anc + dist.narrow(2, 2, 2)], -1);

    let asg = tch::no_grad(|| {
        assign(
            cfg,
            nc,
            &pred_scores.sigmoid(),
            &(&pred_bboxes * &stride),
            &(&anchors * &stride),
            &gt_labels,
            &gt_bboxes,
            &mask_gt,
        )
    });
    let tss = asg.target_scores.sum(Kind::Float).clamp_min(1.0);
    let cls = pred_scores
        .binary_cross_entropy_with_logits(&asg.target_scores, None::<Tensor>, None::<Tensor>, Reduction::None)
        .sum(Kind::Float)
        / &tss;

    let fg = asg.fg_mask.nonzero();
    let (bi, ai) = (fg.select(1, 0), fg.select(1, 1));
    let target_bboxes = &asg.target_bboxes / &stride;
    let pick = |t: &Tensor| t.index(&[Some(&bi), Some(&ai)]);
    let weight = pick(&asg.target_scores).sum_dim_intlist(-1, true, Kind::Float);
    let iou = ciou(&pick(&pred_bboxes), &pick(&target_bboxes));
    let box_loss = (iou.neg() + 1.0).multiply(&weight).sum(Kind::Float) / &tss;

    // DFL: cross-entropy against the two bins around each target distance.
    let tb = pick(&target_bboxes);
    let ap = anchors.index_select(0, &ai);
    let ltrb =
        Tensor::cat(&[&ap - tb.narrow(1, 0, 2), tb.narrow(1, 2, 2) - &ap], -1).clamp(0.0, (REG_MAX - 1) as f64 - 0.01);
    let tl = ltrb.to_kind(Kind::Int64);
    let tr = &tl + 1;
    let wl = tr.to_kind(Kind::Float) - &ltrb;
    let wr = wl.neg() + 1.0;
    let logp = pick(&pred_distri).view([-1, REG_MAX]).log_softmax(1, Kind::Float);
    let nl = tl.size()[0];
    let gl = logp.gather(1, &tl.view([-1, 1]), false).view([nl, 4]);
    let gr = logp.gather(1, &tr.view([-1, 1]), false).view([nl, 4]);
    let dfl = (-(gl * wl + gr * wr)).mean_dim(-1, true, Kind::Float);
    let dfl_loss = (dfl * weight).sum(Kind::Float) / &tss;

    Tensor::stack(&[box_loss * cfg.box_gain, cls * cfg.cls_gain, dfl_loss * cfg.dfl_gain], 0) * b as f64
}
