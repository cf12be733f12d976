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

/// [`decode`], then boxes mapped back from the letterboxed input to the original image.
pub fn decode_to_original(
    data: &[f32],
    classes: usize,
    anchors: usize,
    t: Thresholds,
    lb: &Letterbox,
) -> Vec<Detection> {
    decode(data, classes, anchors, t).into_iter().map(|d| Detection { bbox: lb.unmap(&d.bbox), ..d }).collect()
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
}
