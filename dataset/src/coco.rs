//! COCO JSON: detection boxes and segmentation polygons, converted to normalised annotations.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::error::{ItemError, ItemErrorKind};
use crate::labels::Annotation;
use crate::task::Task;

/// The parts of a COCO file we read.
#[derive(Debug, Deserialize)]
pub struct CocoFile {
    /// Images.
    pub images: Vec<CocoImage>,
    /// Annotations.
    #[serde(default)]
    pub annotations: Vec<CocoAnnotation>,
    /// Categories.
    pub categories: Vec<CocoCategory>,
}

/// A COCO image.
#[derive(Debug, Deserialize)]
pub struct CocoImage {
    /// Id.
    pub id: u64,
    /// Path relative to the images folder.
    pub file_name: String,
    /// Width in pixels.
    pub width: f64,
    /// Height in pixels.
    pub height: f64,
}

/// A COCO annotation.
#[derive(Debug, Deserialize)]
pub struct CocoAnnotation {
    /// Image id.
    pub image_id: u64,
    /// Category id.
    pub category_id: u64,
    /// `[x, y, width, height]` in pixels.
    #[serde(default)]
    pub bbox: Option<Vec<f64>>,
    /// Polygons (list of flat point lists) or RLE.
    #[serde(default)]
    pub segmentation: Option<serde_json::Value>,
    /// Crowd annotations use RLE.
    #[serde(default)]
    pub iscrowd: Option<u8>,
}

/// A COCO category.
#[derive(Debug, Deserialize)]
pub struct CocoCategory {
    /// Id (not necessarily contiguous).
    pub id: u64,
    /// Name.
    pub name: String,
}

/// Converted annotations of one COCO file.
#[derive(Debug, Default)]
pub struct Converted {
    /// Class names in index order (categories sorted by id).
    pub class_names: Vec<String>,
    /// Annotations per image file name, with the image size the file declares.
    pub images: BTreeMap<String, (f64, f64, Vec<Annotation>)>,
    /// Problems.
    pub errors: Vec<ItemError>,
}

/// Class names of a COCO file, in category-id order.
pub fn class_names(file: &CocoFile) -> Vec<String> {
    let mut cats: Vec<&CocoCategory> = file.categories.iter().collect();
    cats.sort_by_key(|c| c.id);
    cats.iter().map(|c| c.name.clone()).collect()
}

/// Converts a COCO file for `task`; class indices follow `class_names` (matched by name).
pub fn convert(file: &CocoFile, task: Task, class_names: &[String]) -> Converted {
    let mut out = Converted { class_names: class_names.to_vec(), ..Default::default() };
    let index: HashMap<u64, Option<usize>> =
        file.categories.iter().map(|c| (c.id, class_names.iter().position(|n| *n == c.name))).collect();
    let images: HashMap<u64, &CocoImage> = file.images.iter().map(|i| (i.id, i)).collect();
    for img in &file.images {
        out.images.insert(img.file_name.clone(), (img.width, img.height, vec![]));
    }
    for (n, a) in file.annotations.iter().enumerate() {
        let Some(img) = images.get(&a.image_id) else {
            out.errors.push(ItemError {
                file: format!("annotation #{n}"),
                kind: ItemErrorKind::MissingImage,
                detail: format!("annotation #{n} refers to image id {} which is not in the file", a.image_id),
            });
            continue;
        };
        let err = |kind, detail: String| ItemError { file: img.file_name.clone(), kind, detail };
        let Some(Some(class)) = index.get(&a.category_id).copied() else {
            out.errors.push(err(
                ItemErrorKind::ClassOutOfRange,
                format!("annotation #{n}: category id {} is not a known class", a.category_id),
            ));
            continue;
        };
        let (w, h) = (img.width, img.height);
        if !(w.is_finite() && h.is_finite() && w > 0.0 && h > 0.0) {
            out.errors.push(err(ItemErrorKind::CoordinateOutOfRange, format!("image size {w}x{h} is not positive")));
            continue;
        }
        let ann = match task {
            Task::Detect => match a.bbox.as_deref() {
                Some([x, y, bw, bh]) => {
                    if [x, y, bw, bh].iter().any(|v| !v.is_finite()) {
                        out.errors.push(err(
                            ItemErrorKind::NonFiniteCoordinate,
                            format!("annotation #{n}: bbox has a non-finite value"),
                        ));
                        continue;
                    }
                    // Clip to the image, as Ultralytics' converter does.
                    let (x0, y0) = (x.clamp(0.0, w), y.clamp(0.0, h));
                    let (x1, y1) = ((x + bw).clamp(0.0, w), (y + bh).clamp(0.0, h));
                    if x1 <= x0 || y1 <= y0 {
                        out.errors.push(err(
                            ItemErrorKind::CoordinateOutOfRange,
                            format!("annotation #{n}: bbox {x},{y},{bw},{bh} is empty inside the image"),
                        ));
                        continue;
                    }
                    Annotation::Box {
                        class,
                        cx: (x0 + x1) / 2.0 / w,
                        cy: (y0 + y1) / 2.0 / h,
                        w: (x1 - x0) / w,
                        h: (y1 - y0) / h,
                    }
                }
                _ => {
                    out.errors
                        .push(err(ItemErrorKind::BadLabelRow, format!("annotation #{n}: bbox must have 4 numbers")));
                    continue;
                }
            },
            Task::Segment => {
                let polys = match &a.segmentation {
                    Some(serde_json::Value::Array(p)) if a.iscrowd != Some(1) => p,
                    _ => {
                        out.errors.push(err(
                            ItemErrorKind::UnsupportedAnnotation,
                            format!("annotation #{n}: RLE (crowd) masks are not supported; use polygons"),
                        ));
                        continue;
                    }
                };
                // Ultralytics keeps one polygon per instance: the largest.
                let Some(poly) = polys.iter().filter_map(|p| p.as_array()).max_by_key(|p| p.len()) else { continue };
                let vals: Vec<f64> = poly.iter().filter_map(|v| v.as_f64()).collect();
                if vals.len() < 6 || !vals.len().is_multiple_of(2) || vals.len() != poly.len() {
                    out.errors.push(err(
                        ItemErrorKind::BadPolygon,
                        format!("annotation #{n}: a polygon needs at least 3 points"),
                    ));
                    continue;
                }
                Annotation::Polygon {
                    class,
                    points: vals.chunks(2).map(|p| ((p[0] / w).clamp(0.0, 1.0), (p[1] / h).clamp(0.0, 1.0))).collect(),
                }
            }
            other => {
                out.errors.push(err(
                    ItemErrorKind::UnsupportedAnnotation,
                    format!("COCO import supports detect and segment, not {}", other.as_str()),
                ));
                continue;
            }
        };
        if let Some(entry) = out.images.get_mut(&img.file_name) {
            entry.2.push(ann);
        }
    }
    out
}
