//! Geometric augmentation, as Ultralytics' `Mosaic` and `RandomPerspective` (affine part):
//! four images around a random centre on a `2s` canvas, then a random scale/rotation/translation
//! warp to `s × s`, with boxes transformed and filtered like `box_candidates`. Pure image code.

use image::{Rgb, RgbImage};
use ocellus_vision::letterbox::PAD;
use ocellus_vision::rng::Rng;

use crate::loss::Target;

/// Affine augmentation settings (Ultralytics' names and defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffineParams {
    /// Rotation range in degrees (±).
    pub degrees: f32,
    /// Translation as a fraction of the output size (±).
    pub translate: f32,
    /// Scale gain range (1 ± scale).
    pub scale: f32,
}

impl Default for AffineParams {
    fn default() -> Self {
        AffineParams { degrees: 0.0, translate: 0.1, scale: 0.5 }
    }
}

/// Boxes in pixels (`x1, y1, x2, y2`) with their classes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelBox {
    /// Class.
    pub class: i64,
    /// Corners.
    pub xyxy: [f32; 4],
}

impl PixelBox {
    /// From a normalised centre/size target on a `w × h` image, offset by `(dx, dy)`.
    pub fn from_target(t: &Target, w: f32, h: f32, dx: f32, dy: f32) -> PixelBox {
        let [cx, cy, bw, bh] = t.xywh;
        PixelBox {
            class: t.class,
            xyxy: [
                (cx - bw / 2.0) * w + dx,
                (cy - bh / 2.0) * h + dy,
                (cx + bw / 2.0) * w + dx,
                (cy + bh / 2.0) * h + dy,
            ],
        }
    }

    /// To a target normalised to an `s × s` image.
    pub fn to_target(&self, s: f32) -> Target {
        let [x1, y1, x2, y2] = self.xyxy;
        Target { class: self.class, xywh: [(x1 + x2) / 2.0 / s, (y1 + y2) / 2.0 / s, (x2 - x1) / s, (y2 - y1) / s] }
    }
}

/// Resizes so the long side is `s`, as Ultralytics' `load_image` (bilinear, short side rounded up).
pub fn resize_long_side(img: &RgbImage, s: u32) -> RgbImage {
    ocellus_vision::letterbox::resize_long_side(img, s)
}

/// Places four images (each resized to long side `s`) around a random centre on a `2s × 2s`
/// canvas; returns the canvas and the boxes in canvas pixels.
pub fn mosaic4(images: [(&RgbImage, &[Target]); 4], s: u32, rng: &mut Rng) -> (RgbImage, Vec<PixelBox>) {
    let s_i = s as i64;
    let mut canvas = RgbImage::from_pixel(2 * s, 2 * s, Rgb([PAD, PAD, PAD]));
    let xc = (s_i / 2) + (rng.unit() * s as f32) as i64;
    let yc = (s_i / 2) + (rng.unit() * s as f32) as i64;
    let mut boxes = Vec::new();
    for (i, (img, targets)) in images.into_iter().enumerate() {
        let img = resize_long_side(img, s);
        let (w, h) = (img.width() as i64, img.height() as i64);
        // Top-left corner of the image on the canvas for each quadrant.
        let (x0, y0) = match i {
            0 => (xc - w, yc - h),
            1 => (xc, yc - h),
            2 => (xc - w, yc),
            _ => (xc, yc),
        };
        image::imageops::replace(&mut canvas, &img, x0, y0);
        for t in targets {
            let mut b = PixelBox::from_target(t, w as f32, h as f32, x0 as f32, y0 as f32);
            // Clip to the visible part of this tile and to the canvas.
            let lim = [x0.max(0) as f32, y0.max(0) as f32, (x0 + w).min(2 * s_i) as f32, (y0 + h).min(2 * s_i) as f32];
            b.xyxy = [
                b.xyxy[0].clamp(lim[0], lim[2]),
                b.xyxy[1].clamp(lim[1], lim[3]),
                b.xyxy[2].clamp(lim[0], lim[2]),
                b.xyxy[3].clamp(lim[1], lim[3]),
            ];
            boxes.push(b);
        }
    }
    (canvas, boxes)
}

/// A random affine warp of `img` to `out × out` (the centre of `img` goes to the centre of the
/// output, then scale/rotate, then translate). Boxes are transformed (their corners' bounding
/// box), clipped and filtered: kept if at least 2 px wide and high, with at least 10% of their
/// scaled area left and an aspect ratio under 100.
pub fn random_affine(
    img: &RgbImage,
    boxes: &[PixelBox],
    out: u32,
    p: &AffineParams,
    rng: &mut Rng,
) -> (RgbImage, Vec<PixelBox>) {
    if p.degrees == 0.0 && p.translate == 0.0 && p.scale == 0.0 && img.dimensions() == (out, out) {
        return (img.clone(), boxes.to_vec());
    }
    let uniform = |rng: &mut Rng, lo: f32, hi: f32| lo + rng.unit() * (hi - lo);
    let angle = uniform(rng, -p.degrees, p.degrees).to_radians();
    let scale = uniform(rng, 1.0 - p.scale, 1.0 + p.scale);
    let o = out as f32;
    let tx = uniform(rng, 0.5 - p.translate, 0.5 + p.translate) * o;
    let ty = uniform(rng, 0.5 - p.translate, 0.5 + p.translate) * o;
    let (cx, cy) = (img.width() as f32 / 2.0, img.height() as f32 / 2.0);
    let (c, s) = (angle.cos() * scale, angle.sin() * scale);
    // Forward map: [x', y'] = R·S·([x, y] - centre) + [tx, ty].
    let fwd = |x: f32, y: f32| (c * (x - cx) - s * (y - cy) + tx, s * (x - cx) + c * (y - cy) + ty);
    // Inverse for sampling.
    let det = c * c + s * s;
    let inv = |x: f32, y: f32| {
        let (u, v) = (x - tx, y - ty);
        ((c * u + s * v) / det + cx, (-s * u + c * v) / det + cy)
    };
    let mut dst = RgbImage::from_pixel(out, out, Rgb([PAD, PAD, PAD]));
    let (w, h) = (img.width() as i64, img.height() as i64);
    for (x, y, px) in dst.enumerate_pixels_mut() {
        let (sx, sy) = inv(x as f32 + 0.5, y as f32 + 0.5);
        let (fx, fy) = (sx - 0.5, sy - 0.5);
        let (x0, y0) = (fx.floor() as i64, fy.floor() as i64);
        let (ax, ay) = (fx - x0 as f32, fy - y0 as f32);
        let get = |xx: i64, yy: i64| {
            if xx >= 0 && yy >= 0 && xx < w && yy < h {
                img.get_pixel(xx as u32, yy as u32).0.map(f32::from)
            } else {
                [f32::from(PAD); 3]
            }
        };
        if x0 < -1 || y0 < -1 || x0 >= w || y0 >= h {
            continue;
        }
        let (p00, p10, p01, p11) = (get(x0, y0), get(x0 + 1, y0), get(x0, y0 + 1), get(x0 + 1, y0 + 1));
        for k in 0..3 {
            let top = p00[k] * (1.0 - ax) + p10[k] * ax;
            let bot = p01[k] * (1.0 - ax) + p11[k] * ax;
            px.0[k] = (top * (1.0 - ay) + bot * ay).round().clamp(0.0, 255.0) as u8;
        }
    }
    let mut kept = Vec::new();
    for b in boxes {
        let [x1, y1, x2, y2] = b.xyxy;
        let corners = [fwd(x1, y1), fwd(x2, y1), fwd(x1, y2), fwd(x2, y2)];
        let nx1 = corners.iter().map(|p| p.0).fold(f32::INFINITY, f32::min).clamp(0.0, o);
        let ny1 = corners.iter().map(|p| p.1).fold(f32::INFINITY, f32::min).clamp(0.0, o);
        let nx2 = corners.iter().map(|p| p.0).fold(f32::NEG_INFINITY, f32::max).clamp(0.0, o);
        let ny2 = corners.iter().map(|p| p.1).fold(f32::NEG_INFINITY, f32::max).clamp(0.0, o);
        let (w1, h1) = ((x2 - x1) * scale, (y2 - y1) * scale);
        let (w2, h2) = (nx2 - nx1, ny2 - ny1);
        let ar = (w2 / (h2 + 1e-16)).max(h2 / (w2 + 1e-16));
        if w2 > 2.0 && h2 > 2.0 && w2 * h2 / (w1 * h1 + 1e-16) > 0.1 && ar < 100.0 {
            kept.push(PixelBox { class: b.class, xyxy: [nx1, ny1, nx2, ny2] });
        }
    }
    (dst, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(class: i64, cx: f32, cy: f32, w: f32, h: f32) -> Target {
        Target { class, xywh: [cx, cy, w, h] }
    }

    #[test]
    fn identity_warp_keeps_image_and_boxes() {
        let mut img = RgbImage::from_pixel(64, 64, Rgb([10, 20, 30]));
        img.put_pixel(5, 7, Rgb([200, 100, 50]));
        let boxes = [PixelBox { class: 1, xyxy: [8.0, 8.0, 24.0, 40.0] }];
        let p = AffineParams { degrees: 0.0, translate: 0.0, scale: 0.0 };
        let (out, kept) = random_affine(&img, &boxes, 64, &p, &mut Rng::new(1));
        assert_eq!(out, img);
        assert_eq!(kept, boxes.to_vec());
    }

    #[test]
    fn scaling_moves_boxes_and_drops_lost_ones() {
        let img = RgbImage::from_pixel(100, 100, Rgb([0, 0, 0]));
        let boxes =
            [PixelBox { class: 0, xyxy: [40.0, 40.0, 60.0, 60.0] }, PixelBox { class: 2, xyxy: [0.0, 0.0, 4.0, 4.0] }];
        for seed in 0..20 {
            let (out, kept) = random_affine(&img, &boxes, 80, &AffineParams::default(), &mut Rng::new(seed));
            assert_eq!(out.dimensions(), (80, 80));
            for b in &kept {
                assert!(b.xyxy.iter().all(|v| (0.0..=80.0).contains(v)), "{b:?}");
                assert!(b.xyxy[2] - b.xyxy[0] > 2.0);
            }
            // The central box survives any scale in 0.5..1.5 with translation ±10%.
            assert!(kept.iter().any(|b| b.class == 0), "seed {seed}");
        }
    }

    #[test]
    fn mosaic_places_four_tiles() {
        let imgs: Vec<RgbImage> = (0..4).map(|i| RgbImage::from_pixel(32, 16, Rgb([i * 60, 0, 0]))).collect();
        let t = vec![target(0, 0.5, 0.5, 0.5, 0.5)];
        let (canvas, boxes) =
            mosaic4([(&imgs[0], &t), (&imgs[1], &t), (&imgs[2], &t), (&imgs[3], &t)], 32, &mut Rng::new(3));
        assert_eq!(canvas.dimensions(), (64, 64));
        assert_eq!(boxes.len(), 4);
        // Tile 0 ends at the centre; its box is centred in it.
        let b = boxes[0].xyxy;
        assert!((b[2] - b[0] - 16.0).abs() < 1e-3 && (b[3] - b[1] - 8.0).abs() < 1e-3, "{b:?}");
        let (w, h) = (canvas.width(), canvas.height());
        assert!(boxes.iter().all(|b| b.xyxy[0] >= 0.0 && b.xyxy[2] <= w as f32 && b.xyxy[3] <= h as f32));
    }
}
