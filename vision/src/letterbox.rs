//! Letterboxing as Ultralytics does it: resize keeping the aspect ratio with OpenCV's bilinear
//! `cv2.resize(..., INTER_LINEAR)` (bit-exact, see [`resize_linear`]), pad to a square with grey
//! (114) as `cv2.copyMakeBorder`; and the inverse mapping of boxes back to the original image.
//!
//! Two entry points, because Ultralytics resizes differently when serving and when training:
//! [`letterbox`] is its predict-time `LetterBox` (sides rounded), [`letterbox_dataset`] its
//! datasets' `load_image` (long side to the size, short side rounded up) then `LetterBox` padding.

use image::RgbImage;

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
    /// Geometry for fitting `w`x`h` into a `size`x`size` square, as Ultralytics' `LetterBox`
    /// computes it (in `f64` with Python's round-half-to-even, so that sizes agree to the pixel).
    pub fn new(w: u32, h: u32, size: u32) -> Letterbox {
        let r = (f64::from(size) / f64::from(w.max(1))).min(f64::from(size) / f64::from(h.max(1)));
        Letterbox::with_resized(w, h, size, r, resized_side(w, r, size), resized_side(h, r, size))
    }

    /// Geometry of Ultralytics' dataset path (training and validation): `load_image` resizes the
    /// long side to `size` and rounds the other up, then `LetterBox` only pads. The short side can
    /// be one pixel longer than [`Letterbox::new`] makes it; `scale` is the long side's.
    pub fn dataset(w: u32, h: u32, size: u32) -> Letterbox {
        let (new_w, new_h) = long_side_dims(w, h, size);
        let r = f64::from(size) / f64::from(w.max(h).max(1));
        Letterbox::with_resized(w, h, size, r, new_w.min(size), new_h.min(size))
    }

    /// Padding of a `new_w`x`new_h` image (resized from `w`x`h` by `r`) to the `size` square:
    /// `round(d - 0.1)` before and `round(d + 0.1)` after, `d` half the margin.
    fn with_resized(w: u32, h: u32, size: u32, r: f64, new_w: u32, new_h: u32) -> Letterbox {
        let before = |margin: u32| (f64::from(margin) / 2.0 - 0.1).round_ties_even().max(0.0) as u32;
        Letterbox {
            scale: r as f32,
            pad_left: before(size - new_w),
            pad_top: before(size - new_h),
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

/// `max(round(side * r), 1)` with Python's `round` (half to even), at most `size`.
fn resized_side(side: u32, r: f64, size: u32) -> u32 {
    ((f64::from(side) * r).round_ties_even() as u32).clamp(1, size.max(1))
}

/// Letterboxes `img` into a `size` square as Ultralytics' predictor does (`LetterBox`: sides
/// scaled by `min(size / w, size / h)` and rounded, bilinear resize, centred on grey); returns the
/// padded image and its geometry.
pub fn letterbox(img: &RgbImage, size: u32) -> (RgbImage, Letterbox) {
    let lb = Letterbox::new(img.width(), img.height(), size);
    let out = if (lb.new_w, lb.new_h) == img.dimensions() {
        pad(img, &lb)
    } else {
        pad(&resize_linear(img, lb.new_w, lb.new_h), &lb)
    };
    (out, lb)
}

/// Letterboxes `img` into a `size` square as Ultralytics' datasets do for training and
/// validation (see [`Letterbox::dataset`]).
pub fn letterbox_dataset(img: &RgbImage, size: u32) -> (RgbImage, Letterbox) {
    let lb = Letterbox::dataset(img.width(), img.height(), size);
    let out = if (lb.new_w, lb.new_h) == img.dimensions() {
        pad(img, &lb)
    } else {
        pad(&resize_linear(img, lb.new_w, lb.new_h), &lb)
    };
    (out, lb)
}

/// Ultralytics' `BaseDataset.load_image`: the long side to `size`, the other
/// `min(ceil(side * r), size)`, bilinear; unchanged when the long side already is `size`.
pub fn resize_long_side(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = long_side_dims(img.width(), img.height(), size);
    resize_linear(img, w, h)
}

/// The sizes `load_image` resizes `w`x`h` to (in `f64`, as Python computes them).
fn long_side_dims(w: u32, h: u32, size: u32) -> (u32, u32) {
    let r = f64::from(size) / f64::from(w.max(h).max(1));
    if r == 1.0 {
        return (w, h);
    }
    let side = |s: u32| ((f64::from(s) * r).ceil() as u32).clamp(1, size.max(1));
    (side(w), side(h))
}

/// Places `resized` (`lb.new_w`x`lb.new_h`) on a grey `lb.size` square at the letterbox's offset.
fn pad(resized: &RgbImage, lb: &Letterbox) -> RgbImage {
    let size = lb.size as usize;
    let mut out = vec![PAD; size * size * 3];
    let row = 3 * resized.width() as usize;
    let (left, top) = (lb.pad_left as usize, lb.pad_top as usize);
    for (y, src) in resized.as_raw().chunks_exact(row.max(1)).enumerate().take(size - top.min(size)) {
        let at = ((top + y) * size + left) * 3;
        let n = row.min(3 * (size - left.min(size)));
        out[at..at + n].copy_from_slice(&src[..n]);
    }
    RgbImage::from_raw(lb.size, lb.size, out).unwrap_or_else(|| RgbImage::new(lb.size, lb.size))
}

/// One output position of a bilinear pass: the two source pixels and their weights, in OpenCV's
/// fixed point (`INTER_RESIZE_COEF_BITS` = 11: the weights sum to 2048).
#[derive(Debug, Clone, Copy)]
struct Tap {
    s0: usize,
    s1: usize,
    w0: i16,
    w1: i16,
}

/// OpenCV's bilinear taps for resizing `src` samples to `dst`: half-pixel centres
/// (`(d + 0.5) * scale - 0.5`, computed in `f64` and rounded to `f32` as OpenCV does), weights
/// rounded half to even (`saturate_cast<short>`). Beyond an edge OpenCV treats columns and rows
/// differently, and the rounding of the result shows it: a column takes the edge pixel at full
/// weight (`columns`), a row is clamped but keeps its two weights.
fn taps(src: u32, dst: u32, columns: bool) -> Vec<Tap> {
    let scale = 1.0 / (f64::from(dst) / f64::from(src));
    let last = i64::from(src) - 1;
    (0..dst)
        .map(|d| {
            let fx = ((f64::from(d) + 0.5) * scale - 0.5) as f32;
            let mut s = fx.floor() as i64;
            let mut f = fx - s as f32;
            if columns && (s < 0 || s >= last) {
                s = s.clamp(0, last);
                f = 0.0;
            }
            Tap {
                s0: s.clamp(0, last) as usize,
                s1: (s + 1).clamp(0, last) as usize,
                w0: saturate_i16((1.0 - f) * 2048.0),
                w1: saturate_i16(f * 2048.0),
            }
        })
        .collect()
}

/// `saturate_cast<short>(float)`: round half to even, then saturate.
fn saturate_i16(v: f32) -> i16 {
    v.round_ties_even().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
}

/// `cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)` for 8-bit RGB, bit-exact with
/// opencv-python 5.0 (the references in `vision/tests/data` are its output): a horizontal pass
/// into 11-bit fixed point, then a vertical pass with OpenCV's SIMD rounding
/// (`((a >> 4) * wa >> 16) + ((b >> 4) * wb >> 16) + 2 >> 2`). No antialiasing: a downscale by more
/// than 2 samples only two source pixels per output pixel, as OpenCV does. (OpenCV switches an
/// exact 2x downscale to `INTER_AREA`; that is the same arithmetic here.)
pub fn resize_linear(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (sw, sh) = img.dimensions();
    if (w, h) == (sw, sh) || w == 0 || h == 0 || sw == 0 || sh == 0 {
        return if (w, h) == (sw, sh) { img.clone() } else { RgbImage::new(w, h) };
    }
    let xs = taps(sw, w, true);
    let ys = taps(sh, h, false);
    let (src_row, row) = (3 * sw as usize, 3 * w as usize);
    // The last two horizontally resized source rows (already shifted right by 4, as the vertical
    // pass uses them), and which source rows they are.
    let mut rows = [vec![0i16; row], vec![0i16; row]];
    let mut held = [usize::MAX; 2];
    let horizontal = |y: usize, out: &mut [i16]| {
        let (line, _) = img.as_raw()[y * src_row..(y + 1) * src_row].as_chunks::<3>();
        let (out, _) = out.as_chunks_mut::<3>();
        for (o, t) in out.iter_mut().zip(&xs) {
            let (a, b) = (line[t.s0], line[t.s1]);
            for c in 0..3 {
                // At most 255 * 2048 >> 4 = 32640: fits.
                o[c] = ((i32::from(a[c]) * i32::from(t.w0) + i32::from(b[c]) * i32::from(t.w1)) >> 4) as i16;
            }
        }
    };
    let mut out = vec![0u8; row * h as usize];
    for (t, dst) in ys.iter().zip(out.chunks_exact_mut(row)) {
        for s in [t.s0, t.s1] {
            if !held.contains(&s) {
                // Replace the row that this output row does not need.
                let k = usize::from(held[0] == t.s0 || held[0] == t.s1);
                horizontal(s, &mut rows[k]);
                held[k] = s;
            }
        }
        let (r0, r1) = if held[0] == t.s0 { (&rows[0], &rows[1]) } else { (&rows[1], &rows[0]) };
        let r1 = if t.s1 == t.s0 { r0 } else { r1 };
        // OpenCV's `v_mul_hi` (16-bit multiply, high half) and saturating 16-bit adds: written so
        // that the compiler emits the same SIMD instructions (`pmulhw`, `paddsw`, `packuswb`).
        let mul_hi = |a: i16, w: i16| ((i32::from(a) * i32::from(w)) >> 16) as i16;
        let (w0, w1) = (t.w0, t.w1);
        for ((d, &a), &b) in dst.iter_mut().zip(r0.iter()).zip(r1.iter()) {
            let v = mul_hi(a, w0).saturating_add(mul_hi(b, w1)).saturating_add(2) >> 2;
            *d = v.clamp(0, 255) as u8;
        }
    }
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
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
    fn resize_is_opencv_bilinear() {
        // An exact 2x downscale averages 2x2 blocks, rounding halves up: sums 4, 1 and 2 give
        // 1, 0 and 1 (as cv2.resize does).
        let rows = [[0, 1, 0, 0, 0, 0], [1, 2, 0, 1, 1, 1]];
        let img = RgbImage::from_fn(6, 2, |x, y| image::Rgb([rows[y as usize][x as usize]; 3]));
        let out = resize_linear(&img, 3, 1);
        assert_eq!(out.pixels().map(|p| p.0[0]).collect::<Vec<_>>(), [1, 0, 1]);
        // Flat images stay flat, whatever the scale and however the edges are handled.
        for v in [0, 1, 113, 254, 255] {
            let img = RgbImage::from_pixel(7, 5, image::Rgb([v; 3]));
            for (w, h) in [(3, 2), (16, 11), (1, 1), (7, 40)] {
                assert!(resize_linear(&img, w, h).pixels().all(|p| p.0 == [v; 3]), "{v} to {w}x{h}");
            }
        }
        // Upscaling a 1x2 ramp interpolates between the half-pixel centres and clamps beyond them.
        let img = RgbImage::from_fn(1, 2, |_, y| image::Rgb([[0, 200][y as usize]; 3]));
        let col: Vec<u8> = (0..4).map(|y| resize_linear(&img, 1, 4).get_pixel(0, y).0[0]).collect();
        assert_eq!(col, [0, 50, 150, 200]);
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
