//! Class-aware non-maximum suppression.

use crate::boxes::Detection;

/// Keeps the highest-scoring detections, dropping any whose IoU with a kept detection of the
/// same class exceeds `iou`; at most `max_det` are returned, best first.
pub fn nms(mut dets: Vec<Detection>, iou: f32, max_det: usize) -> Vec<Detection> {
    dets.retain(|d| d.score.is_finite());
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut keep: Vec<Detection> = Vec::new();
    for d in dets {
        if keep.len() >= max_det {
            break;
        }
        if keep.iter().all(|k| k.class != d.class || k.bbox.iou(&d.bbox) <= iou) {
            keep.push(d);
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boxes::BBox;

    fn d(x: f32, score: f32, class: usize) -> Detection {
        Detection { bbox: BBox { x1: x, y1: 0.0, x2: x + 10.0, y2: 10.0 }, score, class }
    }

    #[test]
    fn suppresses_overlaps_within_a_class_only() {
        let out =
            nms(vec![d(0.0, 0.9, 0), d(1.0, 0.8, 0), d(1.0, 0.7, 1), d(50.0, 0.6, 0), d(0.0, f32::NAN, 0)], 0.5, 300);
        assert_eq!(out, vec![d(0.0, 0.9, 0), d(1.0, 0.7, 1), d(50.0, 0.6, 0)]);
        assert_eq!(nms(vec![d(0.0, 0.9, 0), d(50.0, 0.8, 0)], 0.5, 1).len(), 1);
    }
}
