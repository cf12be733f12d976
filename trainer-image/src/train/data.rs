//! Training data: manifest records to letterboxed, augmented batches, loaded on worker threads.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use image::RgbImage;
use ocellus_dataset::labels::Annotation;
use ocellus_vision::letterbox::{letterbox_dataset, to_chw};

use crate::error::TrainError;
use crate::loss::Target;

/// One image and its boxes (normalised to the original image).
#[derive(Debug, Clone)]
pub struct Sample {
    /// Local path of the image.
    pub path: PathBuf,
    /// Boxes.
    pub targets: Vec<Target>,
}

/// Samples from manifest annotations (boxes only; other shapes are boxed).
pub fn targets_of(anns: &[Annotation]) -> Vec<Target> {
    anns.iter()
        .filter_map(|a| {
            let (cx, cy, w, h) = a.bbox()?;
            Some(Target { class: a.class() as i64, xywh: [cx as f32, cy as f32, w as f32, h as f32] })
        })
        .collect()
}

pub use ocellus_vision::rng::Rng;

use super::geometry::{AffineParams, PixelBox, mosaic4, random_affine};

/// Augmentation settings (Ultralytics' names and defaults).
#[derive(Debug, Clone, Copy)]
pub struct Augment {
    /// Hue gain.
    pub hsv_h: f32,
    /// Saturation gain.
    pub hsv_s: f32,
    /// Value gain.
    pub hsv_v: f32,
    /// Probability of a left-right flip.
    pub fliplr: f32,
    /// Probability of a 4-image mosaic (turned off for the last `close_mosaic` epochs).
    pub mosaic: f32,
    /// Random scale/translation/rotation.
    pub affine: AffineParams,
}

impl Default for Augment {
    fn default() -> Self {
        Augment { hsv_h: 0.015, hsv_s: 0.7, hsv_v: 0.4, fliplr: 0.5, mosaic: 1.0, affine: AffineParams::default() }
    }
}

/// Random HSV jitter in place (hue shift, saturation and value scaling).
pub fn hsv_jitter(img: &mut RgbImage, rng: &mut Rng, a: &Augment) {
    let gh = (rng.unit() * 2.0 - 1.0) * a.hsv_h;
    let gs = 1.0 + (rng.unit() * 2.0 - 1.0) * a.hsv_s;
    let gv = 1.0 + (rng.unit() * 2.0 - 1.0) * a.hsv_v;
    for p in img.pixels_mut() {
        let [r, g, b] = p.0.map(|c| f32::from(c) / 255.0);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let d = max - min;
        let mut h = if d == 0.0 {
            0.0
        } else if max == r {
            ((g - b) / d).rem_euclid(6.0)
        } else if max == g {
            (b - r) / d + 2.0
        } else {
            (r - g) / d + 4.0
        } / 6.0;
        let s = if max == 0.0 { 0.0 } else { d / max };
        h = (h + gh).rem_euclid(1.0);
        let s = (s * gs).clamp(0.0, 1.0);
        let v = (max * gv).clamp(0.0, 1.0);
        let c = v * s;
        let x = c * (1.0 - ((h * 6.0).rem_euclid(2.0) - 1.0).abs());
        let m = v - c;
        let (r1, g1, b1) = match (h * 6.0) as u32 {
            0 => (c, x, 0.0),
            1 => (x, c, 0.0),
            2 => (0.0, c, x),
            3 => (0.0, x, c),
            4 => (x, 0.0, c),
            _ => (c, 0.0, x),
        };
        p.0 = [r1 + m, g1 + m, b1 + m].map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8);
    }
}

/// A batch: `[B, 3, S, S]` pixels in `[0, 1]` (CHW, row-major) and targets normalised to the
/// letterboxed square.
#[derive(Debug)]
pub struct Batch {
    /// Pixel data.
    pub pixels: Vec<f32>,
    /// Images in the batch.
    pub len: usize,
    /// Targets per image.
    pub targets: Vec<Vec<Target>>,
}

fn open(sample: &Sample) -> Result<RgbImage, TrainError> {
    Ok(image::open(&sample.path)
        .map_err(|e| TrainError::Image { path: sample.path.clone(), message: e.to_string() })?
        .to_rgb8())
}

/// A training sample with augmentation, in Ultralytics' order: mosaic (with three random other
/// samples) or letterbox, random affine, HSV, left-right flip. Targets are normalised to the
/// `size` square.
pub fn load_augmented(
    samples: &[Sample],
    i: usize,
    size: u32,
    a: &Augment,
    rng: &mut Rng,
) -> Result<(RgbImage, Vec<Target>), TrainError> {
    let (warped, boxes) = if a.mosaic > 0.0 && rng.unit() < a.mosaic {
        let others: Vec<usize> = (0..3).map(|_| rng.range(0, samples.len() as u32) as usize).collect();
        let imgs =
            [open(&samples[i])?, open(&samples[others[0]])?, open(&samples[others[1]])?, open(&samples[others[2]])?];
        let t = [
            &samples[i].targets,
            &samples[others[0]].targets,
            &samples[others[1]].targets,
            &samples[others[2]].targets,
        ];
        let (canvas, boxes) =
            mosaic4([(&imgs[0], t[0]), (&imgs[1], t[1]), (&imgs[2], t[2]), (&imgs[3], t[3])], size, rng);
        random_affine(&canvas, &boxes, size, &a.affine, rng)
    } else {
        let (boxed, targets) = load(&samples[i], size, None)?;
        let s = size as f32;
        let boxes: Vec<PixelBox> = targets.iter().map(|t| PixelBox::from_target(t, s, s, 0.0, 0.0)).collect();
        random_affine(&boxed, &boxes, size, &a.affine, rng)
    };
    let mut img = warped;
    let mut targets: Vec<Target> = boxes.iter().map(|b| b.to_target(size as f32)).collect();
    hsv_jitter(&mut img, rng, a);
    if rng.unit() < a.fliplr {
        image::imageops::flip_horizontal_in_place(&mut img);
        for t in targets.iter_mut() {
            t.xywh[0] = 1.0 - t.xywh[0];
        }
    }
    Ok((img, targets))
}

/// Loads and letterboxes one sample; with `augment`, HSV and flip only (see
/// [`load_augmented`] for the full training pipeline).
pub fn load(
    sample: &Sample,
    size: u32,
    augment: Option<(&Augment, &mut Rng)>,
) -> Result<(RgbImage, Vec<Target>), TrainError> {
    let mut img = open(sample)?;
    let mut targets = sample.targets.clone();
    if let Some((a, rng)) = augment {
        hsv_jitter(&mut img, rng, a);
        if rng.unit() < a.fliplr {
            image::imageops::flip_horizontal_in_place(&mut img);
            for t in targets.iter_mut() {
                t.xywh[0] = 1.0 - t.xywh[0];
            }
        }
    }
    // Ultralytics' dataset path (`load_image`, then `LetterBox` pads); boxes follow the resized
    // sides, which are rounded up and so not exactly `scale` times the original ones.
    let (boxed, lb) = letterbox_dataset(&img, size);
    let (w, h, s) = (lb.new_w as f32, lb.new_h as f32, size as f32);
    for t in targets.iter_mut() {
        let [cx, cy, bw, bh] = t.xywh;
        t.xywh = [(cx * w + lb.pad_left as f32) / s, (cy * h + lb.pad_top as f32) / s, bw * w / s, bh * h / s];
    }
    Ok((boxed, targets))
}

/// Streams the batches of one epoch from `workers` threads, in a deterministic order.
pub fn epoch_batches(
    samples: Arc<Vec<Sample>>,
    order: Vec<usize>,
    batch: usize,
    size: u32,
    augment: Option<Augment>,
    seed: u64,
    workers: usize,
) -> Receiver<Result<Batch, TrainError>> {
    let chunks: Vec<Vec<usize>> = order.chunks(batch).map(|c| c.to_vec()).collect();
    let (tx, rx) = sync_channel(workers.max(1) * 2);
    std::thread::spawn(move || {
        // Each batch is built by a scoped worker; results are sent in order.
        for group in chunks.chunks(workers.max(1)) {
            let built: Vec<Result<Batch, TrainError>> = std::thread::scope(|s| {
                let handles: Vec<_> = group
                    .iter()
                    .map(|idx| {
                        let samples = &samples;
                        s.spawn(move || {
                            let mut b = Batch {
                                pixels: Vec::with_capacity(idx.len() * 3 * (size * size) as usize),
                                len: idx.len(),
                                targets: vec![],
                            };
                            for &i in idx {
                                let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
                                let (img, t) = match &augment {
                                    Some(a) => load_augmented(samples, i, size, a, &mut rng)?,
                                    None => load(&samples[i], size, None)?,
                                };
                                to_chw(&img, &mut b.pixels);
                                b.targets.push(t);
                            }
                            Ok(b)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| Err(TrainError::DataLoader("a loader thread panicked".into())))
                    })
                    .collect()
            });
            for b in built {
                if tx.send(b).is_err() {
                    return;
                }
            }
        }
    });
    rx
}
