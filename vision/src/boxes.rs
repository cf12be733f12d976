//! Boxes and detections.

use serde::{Deserialize, Serialize};

/// An axis-aligned box in pixels, corners `(x1, y1)`–`(x2, y2)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct BBox {
    /// Left.
    pub x1: f32,
    /// Top.
    pub y1: f32,
    /// Right.
    pub x2: f32,
    /// Bottom.
    pub y2: f32,
}

impl BBox {
    /// From centre, width and height.
    pub fn from_cxcywh(cx: f32, cy: f32, w: f32, h: f32) -> BBox {
        BBox { x1: cx - w / 2.0, y1: cy - h / 2.0, x2: cx + w / 2.0, y2: cy + h / 2.0 }
    }

    /// From top-left corner, width and height (COCO).
    pub fn from_xywh(x: f32, y: f32, w: f32, h: f32) -> BBox {
        BBox { x1: x, y1: y, x2: x + w, y2: y + h }
    }

    /// Width (never negative).
    pub fn width(&self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }

    /// Height (never negative).
    pub fn height(&self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }

    /// Area.
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    /// Intersection over union (0 when both are empty).
    pub fn iou(&self, o: &BBox) -> f32 {
        let iw = (self.x2.min(o.x2) - self.x1.max(o.x1)).max(0.0);
        let ih = (self.y2.min(o.y2) - self.y1.max(o.y1)).max(0.0);
        let inter = iw * ih;
        let union = self.area() + o.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }

    /// Clipped to `0..w` x `0..h`.
    pub fn clip(&self, w: f32, h: f32) -> BBox {
        BBox {
            x1: self.x1.clamp(0.0, w),
            y1: self.y1.clamp(0.0, h),
            x2: self.x2.clamp(0.0, w),
            y2: self.y2.clamp(0.0, h),
        }
    }
}

/// A detection: box, confidence and class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Box in pixels.
    pub bbox: BBox,
    /// Confidence in `[0, 1]`.
    pub score: f32,
    /// Class index.
    pub class: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_cases() {
        let a = BBox { x1: 0.0, y1: 0.0, x2: 10.0, y2: 10.0 };
        assert_eq!(a.iou(&a), 1.0);
        let b = BBox { x1: 5.0, y1: 0.0, x2: 15.0, y2: 10.0 };
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        let c = BBox { x1: 20.0, y1: 20.0, x2: 30.0, y2: 30.0 };
        assert_eq!(a.iou(&c), 0.0);
        assert_eq!(BBox::default().iou(&BBox::default()), 0.0);
        assert_eq!(BBox::from_cxcywh(5.0, 5.0, 10.0, 10.0), a);
    }
}
