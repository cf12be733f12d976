//! Pure pre- and post-processing around the model: image decoding with limits, letterbox and
//! normalisation, and decoding of the model output into detections in original-image pixels
//! (the `ocellus_vision` code the trainer's validation uses) or top-k classes.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, RgbImage};
use ocellus_vision::decode::{Thresholds, decode_end2end, decode_to_original};
use ocellus_vision::letterbox::{Letterbox, letterbox, to_chw};
use ocellus_vision::{BBox, ModelInfo};
use serde::Serialize;

/// Limits on accepted images.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Largest encoded size.
    pub max_bytes: usize,
    /// Largest width × height.
    pub max_pixels: u64,
}

/// Why an input image was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImageError {
    /// Empty body.
    #[error("the image is empty")]
    Empty,
    /// Too many bytes.
    #[error("the image is {0} bytes; the limit is {1}")]
    TooLarge(usize, usize),
    /// Too many pixels.
    #[error("the image is {0}x{1} pixels; the limit is {2} pixels")]
    TooManyPixels(u32, u32, u64),
    /// Not JPEG, PNG, WebP or BMP.
    #[error("unsupported image format: send JPEG, PNG, WebP or BMP")]
    Unsupported,
    /// The bytes do not decode.
    #[error("the image could not be decoded: {0}")]
    Corrupt(String),
}

/// Decodes JPEG, PNG, WebP or BMP bytes to RGB, refusing oversized inputs before decoding.
pub fn decode_image(bytes: &[u8], limits: ImageLimits) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooLarge(bytes.len(), limits.max_bytes));
    }
    let format = image::guess_format(bytes).map_err(|_| ImageError::Unsupported)?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Bmp) {
        return Err(ImageError::Unsupported);
    }
    // The JPEG decoder fills a cut-off image with grey; a missing end-of-image marker (which
    // entropy-coded data cannot contain) says the upload was truncated.
    if format == ImageFormat::Jpeg && !bytes.windows(2).any(|w| w == [0xFF, 0xD9]) {
        return Err(ImageError::Corrupt("the JPEG is truncated (no end-of-image marker)".into()));
    }
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    if u64::from(w) * u64::from(h) > limits.max_pixels || w == 0 || h == 0 {
        return Err(ImageError::TooManyPixels(w, h, limits.max_pixels));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut l = image::Limits::default();
    l.max_image_width = Some(w);
    l.max_image_height = Some(h);
    l.max_alloc = Some(limits.max_pixels * 4 + (1 << 20));
    reader.limits(l);
    let img = reader.decode().map_err(|e| ImageError::Corrupt(e.to_string()))?;
    Ok(img.into_rgb8())
}

/// Letterboxes to the model size; returns the CHW input and the mapping back.
pub fn preprocess(img: &RgbImage, imgsz: u32) -> (Vec<f32>, Letterbox) {
    let (boxed, lb) = letterbox(img, imgsz);
    let mut x = Vec::with_capacity(3 * (imgsz as usize).pow(2));
    to_chw(&boxed, &mut x);
    (x, lb)
}

/// One prediction (Ultralytics' result item).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Prediction {
    /// Class id.
    pub class: usize,
    /// Class name.
    pub name: String,
    /// Confidence.
    pub confidence: f32,
    /// Box in original-image pixels (detectors only).
    #[serde(rename = "box", skip_serializing_if = "Option::is_none")]
    pub bbox: Option<BoxXyxy>,
}

/// A box as `x1, y1, x2, y2`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct BoxXyxy {
    /// Left.
    pub x1: f32,
    /// Top.
    pub y1: f32,
    /// Right.
    pub x2: f32,
    /// Bottom.
    pub y2: f32,
}

impl From<BBox> for BoxXyxy {
    fn from(b: BBox) -> Self {
        BoxXyxy { x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2 }
    }
}

/// Decodes one image's model output: detections after NMS, or the rows of an end-to-end model
/// (boxes in original pixels), or the
/// top-5 classes of a classifier above `conf`.
pub fn postprocess(info: &ModelInfo, out: &[f32], lb: &Letterbox, th: Thresholds) -> Vec<Prediction> {
    let name = |c: usize| info.names.get(c).cloned().unwrap_or_else(|| c.to_string());
    if info.is_detect() {
        let nc = info.names.len();
        let dets = match info.end2end {
            Some(_) => decode_end2end(out, nc, th, lb),
            None => decode_to_original(out, nc, ocellus_vision::model_info::anchors(info.imgsz), th, lb),
        };
        dets.into_iter()
            .map(|d| Prediction { class: d.class, name: name(d.class), confidence: d.score, bbox: Some(d.bbox.into()) })
            .collect()
    } else {
        let mut idx: Vec<usize> = (0..out.len()).collect();
        idx.sort_by(|a, b| out[*b].total_cmp(&out[*a]));
        idx.into_iter()
            .take(5)
            .filter(|&c| out[c] >= th.conf)
            .map(|c| Prediction { class: c, name: name(c), confidence: out[c], bbox: None })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ImageLimits = ImageLimits { max_bytes: 1 << 20, max_pixels: 1 << 20 };

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30])).write_to(&mut out, ImageFormat::Png).expect("png");
        out.into_inner()
    }

    #[test]
    fn refuses_bad_images_before_decoding() {
        assert_eq!(decode_image(&[], LIMITS), Err(ImageError::Empty));
        assert_eq!(decode_image(b"GIF89a....", LIMITS), Err(ImageError::Unsupported));
        assert_eq!(decode_image(b"hello", LIMITS), Err(ImageError::Unsupported));
        assert!(matches!(decode_image(&png(2048, 1024), LIMITS), Err(ImageError::TooManyPixels(2048, 1024, _))));
        let mut cut = png(64, 64);
        cut.truncate(cut.len() / 2);
        assert!(matches!(decode_image(&cut, LIMITS), Err(ImageError::Corrupt(_))));
        let mut jpeg = Cursor::new(Vec::new());
        RgbImage::from_pixel(64, 64, image::Rgb([1, 2, 3])).write_to(&mut jpeg, ImageFormat::Jpeg).expect("jpeg");
        let mut jpeg = jpeg.into_inner();
        assert!(decode_image(&jpeg, LIMITS).is_ok());
        let mut garbled = jpeg.clone();
        garbled[3..60].fill(0x55);
        assert!(matches!(decode_image(&garbled, LIMITS), Err(ImageError::Corrupt(_))));
        jpeg.truncate(jpeg.len() * 2 / 3);
        assert!(matches!(decode_image(&jpeg, LIMITS), Err(ImageError::Corrupt(m)) if m.contains("truncated")));
        assert!(matches!(
            decode_image(&png(64, 64), ImageLimits { max_bytes: 10, ..LIMITS }),
            Err(ImageError::TooLarge(_, 10))
        ));
        assert_eq!(decode_image(&png(64, 32), LIMITS).expect("ok").dimensions(), (64, 32));
    }

    #[test]
    fn classifier_top5() {
        let info = ModelInfo {
            architecture: "yolov8n-cls".into(),
            task: "classify".into(),
            names: (0..7).map(|i| format!("c{i}")).collect(),
            imgsz: 64,
            format: "onnx".into(),
            sha256: None,
            batch: 1,
            dynamic: true,
            half: false,
            end2end: None,
            quantization: None,
        };
        let out = [0.01, 0.5, 0.02, 0.3, 0.1, 0.04, 0.03];
        let lb = Letterbox::new(64, 64, 64);
        let p = postprocess(&info, &out, &lb, Thresholds { conf: 0.0, iou: 0.7, max_det: 300 });
        assert_eq!(p.iter().map(|p| p.class).collect::<Vec<_>>(), vec![1, 3, 4, 5, 6]);
        let p = postprocess(&info, &out, &lb, Thresholds { conf: 0.2, iou: 0.7, max_det: 300 });
        assert_eq!(p.len(), 2);
    }
}
