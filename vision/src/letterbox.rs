//! Letterboxing: resize keeping the aspect ratio, pad to a square with grey (114), as
//! Ultralytics does; and the inverse mapping of boxes back to the original image.

use image::RgbImage;
use image::imageops::FilterType;

use crate::boxes::BBox;

/// The geometry of a letterbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Scale applied to the original image.
    pub scale: f32,
    /// Left padding in pixels.
    pub pad_left: u32,
    /// Top padding in pixels.
    pub pad_top: u32,
    /// Resized width (before padding).
    pub new_w: u32,
    /// Resized height.
    pub new_h: u32,
    /// Output side.
    pub size: u32,
    /// Original width.
    pub orig_w: u32,
    /// Original height.
    pub orig_h: u32,
}

/// Padding value, as Ultralytics.
pub const PAD: u8 = 114;

impl Letterbox {
    /// Geometry for fitting `w`x`h` into a `size`x`size` square.
    pub fn new(w: u32, h: u32, size: u32) -> Letterbox {
        let scale = (size as f32 / w.max(1) as f32).min(size as f32 / h.max(1) as f32);
        let new_w = ((w as f32 * scale).round() as u32).clamp(1, size);
        let new_h = ((h as f32 * scale).round() as u32).clamp(1, size);
        let dw = (size - new_w) as f32 / 2.0;
        let dh = (size - new_h) as f32 / 2.0;
        Letterbox {
            scale,
            pad_left: (dw - 0.1).round().max(0.0) as u32,
            pad_top: (dh - 0.1).round().max(0.0) as u32,
            new_w,
            new_h,
            size,
            orig_w: w,
            orig_h: h,
        }
    }

    /// Maps a box from letterboxed to original pixel coordinates, clipped to the image.
    pub fn unmap(&self, b: &BBox) -> BBox {
        let f = |v: f32, pad: u32| (v - pad as f32) / self.scale;
        BBox {
            x1: f(b.x1, self.pad_left),
            y1: f(b.y1, self.pad_top),
            x2: f(b.x2, self.pad_left),
            y2: f(b.y2, self.pad_top),
        }
        .clip(self.orig_w as f32, self.orig_h as f32)
    }

    /// Maps a box from original to letterboxed coordinates.
    pub fn map(&self, b: &BBox) -> BBox {
        let f = |v: f32, pad: u32| v * self.scale + pad as f32;
        BBox {
            x1: f(b.x1, self.pad_left),
            y1: f(b.y1, self.pad_top),
            x2: f(b.x2, self.pad_left),
            y2: f(b.y2, self.pad_top),
        }
    }
}

/// Letterboxes `img` into a `size` square; returns the padded image and its geometry.
pub fn letterbox(img: &RgbImage, size: u32) -> (RgbImage, Letterbox) {
    let lb = Letterbox::new(img.width(), img.height(), size);
    let resized = if (lb.new_w, lb.new_h) == img.dimensions() {
        img.clone()
    } else {
        image::imageops::resize(img, lb.new_w, lb.new_h, FilterType::Triangle)
    };
    let mut out = RgbImage::from_pixel(size, size, image::Rgb([PAD, PAD, PAD]));
    image::imageops::replace(&mut out, &resized, i64::from(lb.pad_left), i64::from(lb.pad_top));
    (out, lb)
}

/// RGB bytes (HWC) to a normalised CHW `f32` tensor in `[0, 1]`, appended to `out`.
pub fn to_chw(img: &RgbImage, out: &mut Vec<f32>) {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[start + c * plane + i] = f32::from(p[c]) / 255.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_ultralytics() {
        // 640x480 into 320: scale 0.5, 320x240, 40 px top and bottom.
        let lb = Letterbox::new(640, 480, 320);
        assert_eq!((lb.new_w, lb.new_h, lb.pad_left, lb.pad_top), (320, 240, 0, 40));
        // Odd padding: the extra pixel goes bottom/right.
        let lb = Letterbox::new(100, 61, 64);
        assert_eq!((lb.new_w, lb.new_h), (64, 39));
        assert_eq!(lb.pad_top, 12);
    }

    #[test]
    fn boxes_round_trip() {
        let lb = Letterbox::new(1280, 720, 640);
        let b = BBox { x1: 100.0, y1: 50.0, x2: 400.0, y2: 700.0 };
        let back = lb.unmap(&lb.map(&b));
        for (x, y) in [(back.x1, b.x1), (back.y1, b.y1), (back.x2, b.x2), (back.y2, b.y2)] {
            assert!((x - y).abs() < 1e-3);
        }
        // Boxes in the padding are clipped to the image.
        let outside = lb.unmap(&BBox { x1: 0.0, y1: 0.0, x2: 10.0, y2: 10.0 });
        assert_eq!((outside.y1, outside.y2), (0.0, 0.0));
    }

    #[test]
    fn pads_with_grey_and_normalises() {
        let img = RgbImage::from_pixel(4, 2, image::Rgb([255, 0, 0]));
        let (out, lb) = letterbox(&img, 4);
        assert_eq!(lb.pad_top, 1);
        assert_eq!(out.get_pixel(0, 0).0, [PAD; 3]);
        assert_eq!(out.get_pixel(0, 1).0, [255, 0, 0]);
        let mut t = Vec::new();
        to_chw(&out, &mut t);
        assert_eq!(t.len(), 48);
        assert_eq!(t[4], 1.0); // R plane, (0, 1)
        assert_eq!(t[16 + 4], 0.0); // G plane, (0, 1)
        assert!((t[0] - 114.0 / 255.0).abs() < 1e-6);
    }
}
