//! Decoding of YOLOv8-style detection outputs: one `[4 + classes, anchors]` tensor per image,
//! rows `cx, cy, w, h` in input pixels, then per-class scores (already sigmoid).

use crate::boxes::{BBox, Detection};
use crate::letterbox::Letterbox;
use crate::nms::nms;

/// Post-processing thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Minimum confidence.
    pub conf: f32,
    /// NMS IoU.
    pub iou: f32,
    /// Most detections per image.
    pub max_det: usize,
}

/// Largest number of candidates passed to NMS (as Ultralytics' `max_nms`).
pub const MAX_NMS: usize = 30_000;

/// Decodes one image's output (`data` is `[4 + classes][anchors]`, row-major) into detections
/// in input (letterboxed) pixels, after confidence filtering and class-aware NMS.
pub fn decode(data: &[f32], classes: usize, anchors: usize, t: Thresholds) -> Vec<Detection> {
    if data.len() < (4 + classes) * anchors {
        return vec![];
    }
    let row = |r: usize| &data[r * anchors..(r + 1) * anchors];
    let (cx, cy, w, h) = (row(0), row(1), row(2), row(3));
    let mut cands = Vec::new();
    for a in 0..anchors {
        let (mut best, mut class) = (f32::MIN, 0);
        for c in 0..classes {
            let s = data[(4 + c) * anchors + a];
            if s > best {
                best = s;
                class = c;
            }
        }
        if best > t.conf {
            cands.push(Detection { bbox: BBox::from_cxcywh(cx[a], cy[a], w[a], h[a]), score: best, class });
        }
    }
    if cands.len() > MAX_NMS {
        cands.sort_by(|a, b| b.score.total_cmp(&a.score));
        cands.truncate(MAX_NMS);
    }
    nms(cands, t.iou, t.max_det)
}

/// [`decode`], then boxes mapped back from the letterboxed input to the original image and
/// clipped to it (what pycocotools scores when it is given exported predictions).
pub fn decode_to_original(
    data: &[f32],
    classes: usize,
    anchors: usize,
    t: Thresholds,
    lb: &Letterbox,
) -> Vec<Detection> {
    decode(data, classes, anchors, t).into_iter().map(|d| Detection { bbox: to_original(&d.bbox, lb), ..d }).collect()
}

/// Decodes one image's NMS-free end-to-end output (`data` is `[rows][6]`: `x1, y1, x2, y2, score,
/// class` in input pixels, best first, as Ultralytics' `nms=True` and YOLO26 exports write it):
/// rows above `conf` with a valid class, at most `max_det`, boxes mapped to the original image.
/// No NMS: the model did it (or needs none).
pub fn decode_end2end(data: &[f32], classes: usize, t: Thresholds, lb: &Letterbox) -> Vec<Detection> {
    data.chunks_exact(6)
        .filter(|r| r[4] > t.conf && r[5] >= 0.0 && (r[5] as usize) < classes && r[5].fract() == 0.0)
        .take(t.max_det)
        .map(|r| Detection {
            bbox: to_original(&BBox { x1: r[0], y1: r[1], x2: r[2], y2: r[3] }, lb),
            score: r[4],
            class: r[5] as usize,
        })
        .collect()
}

/// A box from letterboxed to original pixels, clipped to the image. Each axis is divided by its
/// own resize ratio (`new_w / orig_w`, `new_h / orig_h`), as Ultralytics' `scale_boxes` does with
/// the dataset's `ratio_pad`: the resized sides are whole pixels, so one `scale` for both axes
/// stretches the rounded one (240x160 into 160 is resized to 160x107, not 160x106.67).
pub fn to_original(b: &BBox, lb: &Letterbox) -> BBox {
    let gx = lb.new_w as f32 / lb.orig_w.max(1) as f32;
    let gy = lb.new_h as f32 / lb.orig_h.max(1) as f32;
    let (px, py) = (lb.pad_left as f32, lb.pad_top as f32);
    BBox { x1: (b.x1 - px) / gx, y1: (b.y1 - py) / gy, x2: (b.x2 - px) / gx, y2: (b.y2 - py) / gy }
        .clip(lb.orig_w as f32, lb.orig_h as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_filters_and_suppresses() {
        // 3 anchors, 2 classes: rows cx, cy, w, h, s0, s1.
        let data = [
            10.0, 11.0, 50.0, // cx
            10.0, 10.0, 50.0, // cy
            8.0, 8.0, 8.0, // w
            8.0, 8.0, 8.0, // h
            0.9, 0.8, 0.1, // class 0
            0.1, 0.2, 0.6, // class 1
        ];
        let out = decode(&data, 2, 3, Thresholds { conf: 0.25, iou: 0.5, max_det: 300 });
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].class, out[0].score), (0, 0.9));
        assert_eq!((out[1].class, out[1].bbox.x1), (1, 46.0));
        assert!(decode(&data[..5], 2, 3, Thresholds { conf: 0.0, iou: 0.5, max_det: 1 }).is_empty());
    }

    /// One detection per anchor, its best class, as Ultralytics' predictor (its validator's
    /// `multi_label=True` would also keep class 1 at 0.4 here). On the benchmark's models the
    /// validator's choice moves mAP50-95 by less than 0.0002.
    #[test]
    fn keeps_the_best_class_of_an_anchor_only() {
        let data = [10.0, 10.0, 8.0, 8.0, 0.5, 0.4];
        let out = decode(&data, 2, 1, Thresholds { conf: 0.001, iou: 0.7, max_det: 300 });
        assert_eq!(out.iter().map(|d| (d.class, d.score)).collect::<Vec<_>>(), vec![(0, 0.5)]);
    }

    #[test]
    fn end2end_rows_are_filtered_not_suppressed() {
        let lb = Letterbox::new(64, 64, 64);
        // Two overlapping boxes of one class (kept: the model did NMS), one below conf, one with a
        // class past the names, then the zero padding.
        let data = [
            10.0, 10.0, 30.0, 30.0, 0.9, 1.0, //
            11.0, 10.0, 31.0, 30.0, 0.8, 1.0, //
            0.0, 0.0, 5.0, 5.0, 0.1, 0.0, //
            0.0, 0.0, 5.0, 5.0, 0.7, 7.0, //
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        let t = Thresholds { conf: 0.25, iou: 0.7, max_det: 300 };
        let d = decode_end2end(&data, 2, t, &lb);
        assert_eq!(d.iter().map(|d| (d.class, d.score)).collect::<Vec<_>>(), vec![(1, 0.9), (1, 0.8)]);
        assert_eq!(d[0].bbox, BBox { x1: 10.0, y1: 10.0, x2: 30.0, y2: 30.0 });
        assert_eq!(decode_end2end(&data, 2, Thresholds { max_det: 1, ..t }, &lb).len(), 1);
    }

    #[test]
    fn maps_each_axis_back_by_its_own_resize_ratio() {
        // 240x160 into 160: resized to 160x107 (ratio 2/3 across, 107/160 down), 26 px on top.
        let lb = Letterbox::new(240, 160, 160);
        assert_eq!((lb.new_w, lb.new_h, lb.pad_left, lb.pad_top), (160, 107, 0, 26));
        // A box centred on the resized image, 20x10.7 px: in the original, centred and 30x16.
        let (cy, h) = (26.0 + 53.5, 10.7);
        let data = [80.0, cy, 20.0, h, 0.9];
        let d = decode_to_original(&data, 1, 1, Thresholds { conf: 0.25, iou: 0.7, max_det: 300 }, &lb);
        let b = d[0].bbox;
        for (got, want) in [(b.x1, 105.0), (b.x2, 135.0), (b.y1, 72.0), (b.y2, 88.0)] {
            assert!((got - want).abs() < 1e-3, "{b:?}");
        }
        // Past the image into the padding: clipped.
        let b = to_original(&BBox { x1: 0.0, y1: 0.0, x2: 160.0, y2: 160.0 }, &lb);
        assert_eq!((b.y1, b.y2), (0.0, 160.0));
    }
}
