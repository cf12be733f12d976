//! Dataset statistics, including the shapes of the Ultralytics Platform `class-stats` response.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::labels::Annotation;
use crate::split::Split;

/// Grid size of the heatmaps.
pub const HEATMAP_BINS: usize = 10;
/// Width of the size histogram bins, in pixels.
pub const SIZE_BIN: u32 = 32;

/// One histogram bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    /// Lower edge.
    pub bin: u64,
    /// Count.
    pub count: u64,
}

/// Per-class counts in the `class-stats` shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassStat {
    /// Index.
    pub class_id: usize,
    /// Instances.
    pub count: u64,
    /// Images with at least one instance.
    pub image_count: u64,
}

/// Image size histograms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageStats {
    /// Widths.
    pub width_histogram: Vec<Bin>,
    /// Heights.
    pub height_histogram: Vec<Bin>,
    /// Polygon point counts.
    pub points_histogram: Vec<Bin>,
}

/// Box centres on a grid (rows are y).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocationHeatmap {
    /// Counts, `bins[y][x]`.
    pub bins: Vec<Vec<u64>>,
    /// Largest count.
    pub max_count: u64,
}

/// Box sizes in pixels on a grid (rows are height).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DimensionHeatmap {
    /// Counts, `bins[h][w]`.
    pub bins: Vec<Vec<u64>>,
    /// Largest count.
    pub max_count: u64,
    /// Smallest box width.
    pub min_width: f64,
    /// Largest box width.
    pub max_width: f64,
    /// Smallest box height.
    pub min_height: f64,
    /// Largest box height.
    pub max_height: f64,
}

/// The `class-stats` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassStats {
    /// Per class.
    pub classes: Vec<ClassStat>,
    /// Size histograms.
    pub image_stats: ImageStats,
    /// Box centres.
    pub location_heatmap: LocationHeatmap,
    /// Box sizes.
    pub dimension_heatmap: DimensionHeatmap,
    /// Names.
    pub class_names: Vec<String>,
    /// Always false: computed at ingest over every image.
    pub cached: bool,
    /// Always false.
    pub sampled: bool,
    /// Images counted.
    pub sample_size: u64,
}

/// Accumulates statistics image by image.
#[derive(Debug, Default)]
pub struct StatsBuilder {
    class_names: Vec<String>,
    instances: Vec<u64>,
    images_with: Vec<u64>,
    per_split: BTreeMap<Split, u64>,
    widths: BTreeMap<u64, u64>,
    heights: BTreeMap<u64, u64>,
    points: BTreeMap<u64, u64>,
    location: Vec<Vec<u64>>,
    dims: Vec<(f64, f64)>,
    images: u64,
    annotations: u64,
}

fn hist(m: &BTreeMap<u64, u64>) -> Vec<Bin> {
    m.iter().map(|(b, c)| Bin { bin: *b, count: *c }).collect()
}

impl StatsBuilder {
    /// A builder for `class_names`.
    pub fn new(class_names: &[String]) -> Self {
        StatsBuilder {
            class_names: class_names.to_vec(),
            instances: vec![0; class_names.len()],
            images_with: vec![0; class_names.len()],
            location: vec![vec![0; HEATMAP_BINS]; HEATMAP_BINS],
            ..Default::default()
        }
    }

    /// Adds one image.
    pub fn add(&mut self, split: Split, width: u32, height: u32, anns: &[Annotation]) {
        self.images += 1;
        *self.per_split.entry(split).or_default() += 1;
        *self.widths.entry(u64::from(width / SIZE_BIN * SIZE_BIN)).or_default() += 1;
        *self.heights.entry(u64::from(height / SIZE_BIN * SIZE_BIN)).or_default() += 1;
        let mut seen = vec![false; self.class_names.len()];
        for a in anns {
            let c = a.class();
            if c >= self.instances.len() {
                continue;
            }
            self.annotations += 1;
            self.instances[c] += 1;
            seen[c] = true;
            if let Some(p) = a.points() {
                *self.points.entry(p as u64).or_default() += 1;
            }
            if let Some((cx, cy, w, h)) = a.bbox() {
                let bx = ((cx * HEATMAP_BINS as f64) as usize).min(HEATMAP_BINS - 1);
                let by = ((cy * HEATMAP_BINS as f64) as usize).min(HEATMAP_BINS - 1);
                self.location[by][bx] += 1;
                self.dims.push((w * f64::from(width), h * f64::from(height)));
            }
        }
        for (c, s) in seen.iter().enumerate() {
            self.images_with[c] += u64::from(*s);
        }
    }

    /// Images per split.
    pub fn per_split(&self) -> BTreeMap<String, u64> {
        self.per_split.iter().map(|(s, n)| (s.as_str().to_string(), *n)).collect()
    }

    /// Total images and annotations.
    pub fn totals(&self) -> (u64, u64) {
        (self.images, self.annotations)
    }

    /// Instances and images per class.
    pub fn per_class(&self) -> Vec<(String, u64, u64)> {
        self.class_names.iter().enumerate().map(|(i, n)| (n.clone(), self.instances[i], self.images_with[i])).collect()
    }

    /// The `class-stats` body.
    pub fn class_stats(&self) -> ClassStats {
        let (mut min_w, mut max_w, mut min_h, mut max_h) = (f64::MAX, 0f64, f64::MAX, 0f64);
        for (w, h) in &self.dims {
            min_w = min_w.min(*w);
            max_w = max_w.max(*w);
            min_h = min_h.min(*h);
            max_h = max_h.max(*h);
        }
        if self.dims.is_empty() {
            (min_w, min_h) = (0.0, 0.0);
        }
        let mut dim_bins = vec![vec![0u64; HEATMAP_BINS]; HEATMAP_BINS];
        let bin = |v: f64, lo: f64, hi: f64| {
            if hi > lo { (((v - lo) / (hi - lo) * HEATMAP_BINS as f64) as usize).min(HEATMAP_BINS - 1) } else { 0 }
        };
        for (w, h) in &self.dims {
            dim_bins[bin(*h, min_h, max_h)][bin(*w, min_w, max_w)] += 1;
        }
        let max_of = |g: &Vec<Vec<u64>>| g.iter().flatten().copied().max().unwrap_or(0);
        ClassStats {
            classes: (0..self.class_names.len())
                .map(|i| ClassStat { class_id: i, count: self.instances[i], image_count: self.images_with[i] })
                .collect(),
            image_stats: ImageStats {
                width_histogram: hist(&self.widths),
                height_histogram: hist(&self.heights),
                points_histogram: hist(&self.points),
            },
            location_heatmap: LocationHeatmap { max_count: max_of(&self.location), bins: self.location.clone() },
            dimension_heatmap: DimensionHeatmap {
                max_count: max_of(&dim_bins),
                bins: dim_bins,
                min_width: min_w,
                max_width: max_w,
                min_height: min_h,
                max_height: max_h,
            },
            class_names: self.class_names.clone(),
            cached: false,
            sampled: false,
            sample_size: self.images,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_histograms_and_heatmaps() {
        let names = vec!["a".to_string(), "b".to_string()];
        let mut s = StatsBuilder::new(&names);
        let b = |class, cx, cy, w, h| Annotation::Box { class, cx, cy, w, h };
        s.add(Split::Train, 640, 480, &[b(0, 0.05, 0.05, 0.1, 0.1), b(0, 0.95, 0.95, 0.5, 0.5)]);
        s.add(Split::Val, 100, 100, &[b(1, 0.5, 0.5, 0.2, 0.2)]);
        s.add(Split::Val, 100, 100, &[]);
        assert_eq!(s.totals(), (3, 3));
        assert_eq!(s.per_class(), vec![("a".to_string(), 2, 1), ("b".to_string(), 1, 1)]);
        assert_eq!(s.per_split()["val"], 2);
        let cs = s.class_stats();
        assert_eq!(cs.location_heatmap.bins[0][0], 1);
        assert_eq!(cs.location_heatmap.bins[9][9], 1);
        assert_eq!(cs.location_heatmap.bins[5][5], 1);
        assert_eq!(cs.image_stats.width_histogram, vec![Bin { bin: 96, count: 2 }, Bin { bin: 640, count: 1 }]);
        assert_eq!((cs.dimension_heatmap.min_width, cs.dimension_heatmap.max_width), (20.0, 320.0));
        assert_eq!(cs.dimension_heatmap.bins.iter().flatten().sum::<u64>(), 3);
        assert_eq!(cs.sample_size, 3);
    }
}
