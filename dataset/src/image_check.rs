//! Image validation: format sniffing, byte and pixel caps, full decode, content hash.

use image::ImageFormat;
use sha2::{Digest, Sha256};

use crate::error::ItemErrorKind;

/// Per-image caps.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Largest file.
    pub max_bytes: u64,
    /// Largest width x height.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits { max_bytes: 64 << 20, max_pixels: 100_000_000 }
    }
}

/// A decoded image's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// `jpg`, `png`, `webp` or `bmp`.
    pub ext: &'static str,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

/// File extensions recognised as images.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "bmp", "jfif"];

/// Whether a path looks like an image by extension.
pub fn is_image_path(p: &std::path::Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Checks image bytes: supported format, within caps, decodes completely.
pub fn check(bytes: &[u8], limits: ImageLimits) -> Result<ImageInfo, (ItemErrorKind, String)> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err((
            ItemErrorKind::ImageTooLarge,
            format!("{} bytes is over the {} byte limit", bytes.len(), limits.max_bytes),
        ));
    }
    let format = image::guess_format(bytes)
        .map_err(|_| (ItemErrorKind::UnsupportedImageFormat, "not a JPEG, PNG, WebP or BMP image".to_string()))?;
    let ext = match format {
        ImageFormat::Jpeg => "jpg",
        ImageFormat::Png => "png",
        ImageFormat::WebP => "webp",
        ImageFormat::Bmp => "bmp",
        other => {
            return Err((
                ItemErrorKind::UnsupportedImageFormat,
                format!("{other:?} images are not supported (JPEG, PNG, WebP, BMP)"),
            ));
        }
    };
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut lim = image::Limits::default();
    lim.max_alloc = Some(limits.max_pixels.saturating_mul(4).max(1 << 20));
    reader.limits(lim);
    let (w, h) =
        reader.into_dimensions().map_err(|e| (ItemErrorKind::CorruptImage, format!("unreadable header: {e}")))?;
    if u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err((
            ItemErrorKind::ImageTooLarge,
            format!("{w}x{h} pixels is over the {} pixel limit", limits.max_pixels),
        ));
    }
    if w == 0 || h == 0 {
        return Err((ItemErrorKind::CorruptImage, "zero-sized image".into()));
    }
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut lim = image::Limits::default();
    lim.max_alloc = Some(limits.max_pixels.saturating_mul(4).max(1 << 20));
    reader.limits(lim);
    reader.decode().map_err(|e| (ItemErrorKind::CorruptImage, format!("does not decode: {e}")))?;
    Ok(ImageInfo { width: w, height: h, ext, sha256: hex::encode(Sha256::digest(bytes)) })
}
