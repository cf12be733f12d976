//! The normalised manifest, in Ultralytics' NDJSON dataset shape: a `dataset` header line, then
//! one `image` line per image with its split, size and annotations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::labels::Annotation;
use crate::split::Split;
use crate::task::Task;

/// The header line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always `dataset`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Task.
    pub task: Task,
    /// Dataset name.
    pub name: String,
    /// `{"0": "person", ...}`.
    pub class_names: BTreeMap<String, String>,
    /// Keypoint shape for pose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kpt_shape: Option<[usize; 2]>,
    /// Number of image lines.
    pub images: usize,
    /// When it was written (RFC 3339).
    pub created_at: String,
}

/// An image line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Always `image`.
    #[serde(rename = "type")]
    pub type_: String,
    /// File name, `<sha256>.<ext>` (content-addressed).
    pub file: String,
    /// Where the image is stored (`s3://...`).
    pub url: String,
    /// Path in the source, for reports.
    pub source: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Split.
    pub split: Split,
    /// Hex SHA-256 of the image bytes.
    pub sha256: String,
    /// Annotations keyed like Ultralytics: `boxes`, `segments`, `pose`, `obb` or `classification`.
    pub annotations: BTreeMap<String, Value>,
}

impl Header {
    /// Class names ordered by class id (ids without a name are named by their number).
    pub fn names(&self) -> Vec<String> {
        let max = self.class_names.keys().filter_map(|k| k.parse::<usize>().ok()).max();
        (0..max.map_or(0, |m| m + 1))
            .map(|i| self.class_names.get(&i.to_string()).cloned().unwrap_or_else(|| i.to_string()))
            .collect()
    }
}

/// The annotation key Ultralytics uses for a task.
pub fn annotation_key(task: Task) -> &'static str {
    match task {
        Task::Detect => "boxes",
        Task::Segment => "segments",
        Task::Pose => "pose",
        Task::Obb => "obb",
        Task::Classify => "classification",
    }
}

/// Builds the `annotations` object of an image line.
pub fn annotations_json(task: Task, anns: &[Annotation]) -> BTreeMap<String, Value> {
    let value = match task {
        Task::Classify => Value::Array(anns.iter().map(|a| serde_json::json!(a.class())).collect()),
        _ => Value::Array(anns.iter().map(|a| Value::Array(a.to_row())).collect()),
    };
    [(annotation_key(task).to_string(), value)].into()
}

/// Reads annotations back from an image line.
pub fn parse_annotations(task: Task, rec: &ImageRecord) -> Vec<Annotation> {
    let Some(Value::Array(items)) = rec.annotations.get(annotation_key(task)) else { return vec![] };
    items
        .iter()
        .filter_map(|item| {
            if task == Task::Classify {
                return Some(Annotation::Class { class: item.as_u64()? as usize });
            }
            let row: Vec<f64> = item.as_array()?.iter().filter_map(Value::as_f64).collect();
            let class = *row.first()? as usize;
            let r = &row[1..];
            Some(match task {
                Task::Detect if r.len() == 4 => Annotation::Box { class, cx: r[0], cy: r[1], w: r[2], h: r[3] },
                Task::Segment => Annotation::Polygon { class, points: r.chunks(2).map(|p| (p[0], p[1])).collect() },
                Task::Obb if r.len() == 8 => {
                    Annotation::Obb { class, corners: [(r[0], r[1]), (r[2], r[3]), (r[4], r[5]), (r[6], r[7])] }
                }
                Task::Pose if r.len() >= 4 => {
                    Annotation::Pose { class, cx: r[0], cy: r[1], w: r[2], h: r[3], keypoints: r[4..].to_vec() }
                }
                _ => return None,
            })
        })
        .collect()
}

/// Serialises a manifest.
pub fn to_ndjson(header: &Header, images: &[ImageRecord]) -> Result<String, serde_json::Error> {
    let mut out = serde_json::to_string(header)?;
    out.push('\n');
    for r in images {
        out.push_str(&serde_json::to_string(r)?);
        out.push('\n');
    }
    Ok(out)
}

/// Parses a manifest.
pub fn from_ndjson(text: &str) -> Result<(Header, Vec<ImageRecord>), String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Header =
        serde_json::from_str(lines.next().ok_or("empty manifest")?).map_err(|e| format!("header: {e}"))?;
    let images = lines
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 2)))
        .collect::<Result<_, _>>()?;
    Ok((header, images))
}
