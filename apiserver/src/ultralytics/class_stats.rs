//! Class statistics of a dataset, in the Ultralytics Platform's `class-stats` shape, computed
//! from its manifest (pure): per-class annotation and image counts, image size histograms,
//! where objects sit (a heatmap of their centres) and how large they are (a heatmap of their
//! sizes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Heatmap resolution: cells per side.
pub const GRID: usize = 10;
/// Width of the image size histograms' bins, in pixels.
pub const SIZE_BIN: u32 = 32;
/// Most image lines read; larger datasets are sampled evenly (`sampled: true`).
pub const MAX_SAMPLE: usize = 20_000;

/// One class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassCount {
    /// Its id.
    pub class_id: usize,
    /// Annotations of it.
    pub count: u64,
    /// Images with at least one.
    pub image_count: u64,
}

/// One histogram bin: its lower edge and how many fall in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Bin {
    /// Lower edge (pixels, or points).
    pub bin: u64,
    /// How many.
    pub count: u64,
}

/// Image size histograms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageStats {
    /// Image widths in 32-pixel bins.
    pub width_histogram: Vec<Bin>,
    /// Image heights in 32-pixel bins.
    pub height_histogram: Vec<Bin>,
    /// Points per annotation (4 for a box or rotated box, the vertices of a polygon, the
    /// keypoints of a pose).
    pub points_histogram: Vec<Bin>,
}

/// Where object centres sit: a 10 x 10 grid over the image, rows top to bottom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationHeatmap {
    /// `bins[row][column]`.
    pub bins: Vec<Vec<u64>>,
    /// The fullest cell.
    pub max_count: u64,
}

/// How large objects are: a 10 x 10 grid of their heights (rows) by widths (columns) in pixels,
/// between the smallest and largest seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DimensionHeatmap {
    /// `bins[height bin][width bin]`.
    pub bins: Vec<Vec<u64>>,
    /// The fullest cell.
    pub max_count: u64,
    /// Narrowest object, pixels.
    pub min_width: u64,
    /// Widest object, pixels.
    pub max_width: u64,
    /// Lowest object, pixels.
    pub min_height: u64,
    /// Tallest object, pixels.
    pub max_height: u64,
}

/// The `class-stats` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassStats {
    /// Every class of the dataset, by id.
    pub classes: Vec<ClassCount>,
    /// Image size and annotation point histograms.
    pub image_stats: ImageStats,
    /// Where objects sit.
    pub location_heatmap: LocationHeatmap,
    /// How large objects are.
    pub dimension_heatmap: DimensionHeatmap,
    /// Class names by id.
    pub class_names: Vec<String>,
    /// Always false: computed from the manifest on each request.
    pub cached: bool,
    /// Whether only some images were read (datasets over 20,000 images).
    pub sampled: bool,
    /// Images read.
    pub sample_size: u64,
}

/// An object's normalised centre and size, and its number of points, from an annotation row
/// (`[class, ...]` in the manifest's Ultralytics layout).
/// `keypoints` is the dataset's `kpt_shape[0]`, when it names one.
fn geometry(key: &str, row: &[f64], keypoints: Option<u64>) -> Option<(f64, f64, f64, f64, u64)> {
    let r = row.get(1..)?;
    match key {
        "boxes" if r.len() >= 4 => Some((r[0], r[1], r[2], r[3], 4)),
        "pose" if r.len() >= 4 => {
            let guess = if (r.len() - 4) % 3 == 0 { (r.len() - 4) / 3 } else { (r.len() - 4) / 2 };
            Some((r[0], r[1], r[2], r[3], keypoints.unwrap_or(guess as u64)))
        }
        "segments" | "obb" if r.len() >= 4 && r.len() % 2 == 0 => {
            let (xs, ys): (Vec<f64>, Vec<f64>) = r.chunks(2).map(|p| (p[0], p[1])).unzip();
            let fold = |v: &[f64], f: fn(f64, f64) -> f64, init: f64| v.iter().copied().fold(init, f);
            let (x0, x1) = (fold(&xs, f64::min, f64::INFINITY), fold(&xs, f64::max, f64::NEG_INFINITY));
            let (y0, y1) = (fold(&ys, f64::min, f64::INFINITY), fold(&ys, f64::max, f64::NEG_INFINITY));
            Some(((x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0, xs.len() as u64))
        }
        _ => None,
    }
}

fn cell(v: f64) -> usize {
    ((v.clamp(0.0, 1.0) * GRID as f64) as usize).min(GRID - 1)
}

fn histogram(values: &BTreeMap<u64, u64>) -> Vec<Bin> {
    values.iter().map(|(bin, count)| Bin { bin: *bin, count: *count }).collect()
}

/// The statistics of a manifest (its NDJSON text).
pub fn compute(manifest: &str) -> Result<ClassStats, serde_json::Error> {
    let mut lines = manifest.lines().filter(|l| !l.trim().is_empty());
    let header: Value = match lines.next() {
        Some(l) => serde_json::from_str(l)?,
        None => Value::Null,
    };
    let mut names: BTreeMap<usize, String> = BTreeMap::new();
    if let Some(m) = header.get("class_names").and_then(Value::as_object) {
        for (k, v) in m {
            if let (Ok(i), Some(n)) = (k.parse(), v.as_str()) {
                names.insert(i, n.to_string());
            }
        }
    }
    let keypoints = header.get("kpt_shape").and_then(|k| k.get(0)).and_then(Value::as_u64);
    let image_lines: Vec<&str> = lines.collect();
    let step = image_lines.len().div_ceil(MAX_SAMPLE).max(1);
    let mut counts: BTreeMap<usize, (u64, u64)> = names.keys().map(|k| (*k, (0, 0))).collect();
    let (mut widths, mut heights, mut points) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut location = vec![vec![0u64; GRID]; GRID];
    let mut sizes: Vec<(f64, f64)> = Vec::new();
    let mut read = 0u64;
    for line in image_lines.iter().step_by(step) {
        let image: Value = serde_json::from_str(line)?;
        read += 1;
        let (w, h) = (image["width"].as_f64().unwrap_or(0.0), image["height"].as_f64().unwrap_or(0.0));
        *widths.entry(w as u64 / u64::from(SIZE_BIN) * u64::from(SIZE_BIN)).or_insert(0u64) += 1;
        *heights.entry(h as u64 / u64::from(SIZE_BIN) * u64::from(SIZE_BIN)).or_insert(0u64) += 1;
        let mut seen = std::collections::BTreeSet::new();
        for (key, anns) in image["annotations"].as_object().into_iter().flatten() {
            for ann in anns.as_array().into_iter().flatten() {
                let row: Vec<f64> = match ann {
                    Value::Array(a) => a.iter().filter_map(Value::as_f64).collect(),
                    v => v.as_f64().into_iter().collect(),
                };
                let Some(class) = row.first().map(|c| *c as usize) else { continue };
                counts.entry(class).or_default().0 += 1;
                seen.insert(class);
                if let Some((cx, cy, bw, bh, n)) = geometry(key, &row, keypoints) {
                    location[cell(cy)][cell(cx)] += 1;
                    sizes.push((bw * w, bh * h));
                    *points.entry(n).or_insert(0u64) += 1;
                }
            }
        }
        for c in seen {
            counts.entry(c).or_default().1 += 1;
        }
    }
    let px = |v: f64| v.max(0.0).round() as u64;
    let (min_w, max_w) = sizes.iter().fold((f64::INFINITY, 0.0f64), |(a, b), (w, _)| (a.min(*w), b.max(*w)));
    let (min_h, max_h) = sizes.iter().fold((f64::INFINITY, 0.0f64), |(a, b), (_, h)| (a.min(*h), b.max(*h)));
    let mut dims = vec![vec![0u64; GRID]; GRID];
    let span = |v: f64, lo: f64, hi: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
    for (w, h) in &sizes {
        dims[cell(span(*h, min_h, max_h))][cell(span(*w, min_w, max_w))] += 1;
    }
    let max_of = |g: &[Vec<u64>]| g.iter().flatten().copied().max().unwrap_or(0);
    let class_count = counts.keys().max().map_or(0, |m| m + 1);
    Ok(ClassStats {
        classes: counts.iter().map(|(k, (n, i))| ClassCount { class_id: *k, count: *n, image_count: *i }).collect(),
        image_stats: ImageStats {
            width_histogram: histogram(&widths),
            height_histogram: histogram(&heights),
            points_histogram: histogram(&points),
        },
        location_heatmap: LocationHeatmap { max_count: max_of(&location), bins: location },
        dimension_heatmap: DimensionHeatmap {
            max_count: max_of(&dims),
            bins: dims,
            min_width: if sizes.is_empty() { 0 } else { px(min_w) },
            max_width: px(max_w),
            min_height: if sizes.is_empty() { 0 } else { px(min_h) },
            max_height: px(max_h),
        },
        class_names: (0..class_count).map(|i| names.get(&i).cloned().unwrap_or_else(|| i.to_string())).collect(),
        cached: false,
        sampled: step > 1,
        sample_size: read,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_histograms_and_heatmaps_of_a_small_detection_manifest() {
        let manifest = r#"{"type":"dataset","task":"detect","name":"d","class_names":{"0":"circle","1":"square","2":"never"},"images":3,"created_at":"x"}
{"type":"image","file":"a.jpg","url":"s3://b/a","source":"a","width":640,"height":480,"split":"train","sha256":"a","annotations":{"boxes":[[0,0.05,0.05,0.1,0.1],[0,0.95,0.95,0.5,0.5],[1,0.5,0.5,0.2,0.1]]}}
{"type":"image","file":"b.jpg","url":"s3://b/b","source":"b","width":100,"height":100,"split":"val","sha256":"b","annotations":{"boxes":[[1,0.5,0.5,1.0,1.0]]}}
{"type":"image","file":"c.jpg","url":"s3://b/c","source":"c","width":100,"height":90,"split":"val","sha256":"c","annotations":{"boxes":[]}}
"#;
        let s = compute(manifest).expect("stats");
        assert_eq!(
            s.classes,
            [
                ClassCount { class_id: 0, count: 2, image_count: 1 },
                ClassCount { class_id: 1, count: 2, image_count: 2 },
                ClassCount { class_id: 2, count: 0, image_count: 0 },
            ]
        );
        assert_eq!(s.class_names, ["circle", "square", "never"]);
        assert_eq!(s.image_stats.width_histogram, [Bin { bin: 96, count: 2 }, Bin { bin: 640, count: 1 }]);
        assert_eq!(
            s.image_stats.height_histogram,
            [Bin { bin: 64, count: 1 }, Bin { bin: 96, count: 1 }, Bin { bin: 480, count: 1 }]
        );
        assert_eq!(s.image_stats.points_histogram, [Bin { bin: 4, count: 4 }]);
        let loc = &s.location_heatmap;
        assert_eq!((loc.bins[0][0], loc.bins[9][9], loc.bins[5][5], loc.max_count), (1, 1, 2, 2));
        assert_eq!(loc.bins.iter().flatten().sum::<u64>(), 4);
        // Sizes in pixels: 64x48, 320x240, 128x48, 100x100.
        let d = &s.dimension_heatmap;
        assert_eq!((d.min_width, d.max_width, d.min_height, d.max_height), (64, 320, 48, 240));
        assert_eq!((d.bins[0][0], d.bins[9][9], d.bins.iter().flatten().sum::<u64>()), (1, 1, 4));
        assert_eq!((s.cached, s.sampled, s.sample_size), (false, false, 3));
    }

    #[test]
    fn polygons_and_keypoints_count_their_points_and_classification_only_classes() {
        let seg = r#"{"type":"dataset","task":"segment","name":"d","class_names":{"0":"a"},"images":1,"created_at":"x"}
{"type":"image","file":"a.jpg","url":"u","source":"a","width":100,"height":100,"split":"train","sha256":"a","annotations":{"segments":[[0,0.1,0.1,0.3,0.1,0.2,0.5]]}}
"#;
        let s = compute(seg).expect("stats");
        assert_eq!(s.image_stats.points_histogram, [Bin { bin: 3, count: 1 }]);
        assert_eq!((s.dimension_heatmap.max_width, s.dimension_heatmap.max_height), (20, 40));
        let pose = r#"{"type":"dataset","task":"pose","name":"d","class_names":{"0":"p"},"kpt_shape":[2,3],"images":1,"created_at":"x"}
{"type":"image","file":"a.jpg","url":"u","source":"a","width":10,"height":10,"split":"train","sha256":"a","annotations":{"pose":[[0,0.5,0.5,0.2,0.2,0.4,0.4,2,0.6,0.6,1]]}}
"#;
        assert_eq!(compute(pose).expect("stats").image_stats.points_histogram, [Bin { bin: 2, count: 1 }]);
        let cls = r#"{"type":"dataset","task":"classify","name":"d","class_names":{"0":"cat","1":"dog"},"images":2,"created_at":"x"}
{"type":"image","file":"a.jpg","url":"u","source":"a","width":10,"height":10,"split":"train","sha256":"a","annotations":{"classification":[1]}}
{"type":"image","file":"b.jpg","url":"u","source":"b","width":10,"height":10,"split":"train","sha256":"b","annotations":{"classification":[1]}}
"#;
        let s = compute(cls).expect("stats");
        assert_eq!(s.classes[1], ClassCount { class_id: 1, count: 2, image_count: 2 });
        assert_eq!((s.location_heatmap.max_count, s.dimension_heatmap.max_width), (0, 0));
        assert!(compute("not json").is_err());
    }
}
