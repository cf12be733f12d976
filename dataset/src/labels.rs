//! Labels: the normalised annotation type, and validation of Ultralytics YOLO label rows.

use crate::task::Task;
use serde::{Deserialize, Serialize};

use crate::error::ItemErrorKind;

/// One annotation, in normalised coordinates (0..1 of width/height).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Annotation {
    /// Axis-aligned box: class, centre x, centre y, width, height.
    Box { class: usize, cx: f64, cy: f64, w: f64, h: f64 },
    /// Polygon: class and (x, y) points.
    Polygon { class: usize, points: Vec<(f64, f64)> },
    /// Pose: box and keypoints (x, y[, visibility]).
    Pose { class: usize, cx: f64, cy: f64, w: f64, h: f64, keypoints: Vec<f64> },
    /// Oriented box: four corners.
    Obb { class: usize, corners: [(f64, f64); 4] },
    /// Whole-image class.
    Class { class: usize },
}

impl Annotation {
    /// The class index.
    pub fn class(&self) -> usize {
        match self {
            Annotation::Box { class, .. }
            | Annotation::Polygon { class, .. }
            | Annotation::Pose { class, .. }
            | Annotation::Obb { class, .. }
            | Annotation::Class { class } => *class,
        }
    }

    /// Bounding box (cx, cy, w, h) of the annotation, if it has a spatial extent.
    pub fn bbox(&self) -> Option<(f64, f64, f64, f64)> {
        let from_points = |pts: &[(f64, f64)]| {
            let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
            for (x, y) in pts {
                x0 = x0.min(*x);
                y0 = y0.min(*y);
                x1 = x1.max(*x);
                y1 = y1.max(*y);
            }
            ((x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0)
        };
        match self {
            Annotation::Box { cx, cy, w, h, .. } | Annotation::Pose { cx, cy, w, h, .. } => Some((*cx, *cy, *w, *h)),
            Annotation::Polygon { points, .. } => Some(from_points(points)),
            Annotation::Obb { corners, .. } => Some(from_points(corners)),
            Annotation::Class { .. } => None,
        }
    }

    /// Number of polygon points (for the points histogram).
    pub fn points(&self) -> Option<usize> {
        match self {
            Annotation::Polygon { points, .. } => Some(points.len()),
            _ => None,
        }
    }

    /// The row as Ultralytics writes it (`class v1 v2 ...`), as JSON numbers.
    pub fn to_row(&self) -> Vec<serde_json::Value> {
        let mut row = vec![serde_json::json!(self.class())];
        let mut push = |v: f64| row.push(serde_json::json!(v));
        match self {
            Annotation::Box { cx, cy, w, h, .. } => [*cx, *cy, *w, *h].into_iter().for_each(&mut push),
            Annotation::Polygon { points, .. } => points.iter().for_each(|(x, y)| {
                push(*x);
                push(*y)
            }),
            Annotation::Pose { cx, cy, w, h, keypoints, .. } => {
                [*cx, *cy, *w, *h].into_iter().for_each(&mut push);
                keypoints.iter().copied().for_each(push);
            }
            Annotation::Obb { corners, .. } => corners.iter().for_each(|(x, y)| {
                push(*x);
                push(*y)
            }),
            Annotation::Class { .. } => {}
        }
        row
    }
}

/// A problem with one label row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    /// 1-based line number.
    pub line: usize,
    /// Kind.
    pub kind: ItemErrorKind,
    /// Detail.
    pub detail: String,
}

/// Tolerance for normalised coordinates written with rounding (e.g. 1.0000001).
const EPS: f64 = 1e-6;

fn check_class(v: f64, classes: usize, line: usize) -> Result<usize, RowError> {
    if !v.is_finite() || v.fract() != 0.0 || v < 0.0 || v >= classes as f64 {
        return Err(RowError {
            line,
            kind: ItemErrorKind::ClassOutOfRange,
            detail: format!("line {line}: class {v} is out of range 0..{classes}"),
        });
    }
    Ok(v as usize)
}

fn check_coords(values: &[f64], line: usize) -> Result<(), RowError> {
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(RowError {
            line,
            kind: ItemErrorKind::NonFiniteCoordinate,
            detail: format!("line {line}: coordinate {v} is not finite"),
        });
    }
    if let Some(v) = values.iter().find(|v| **v < -EPS || **v > 1.0 + EPS) {
        return Err(RowError {
            line,
            kind: ItemErrorKind::CoordinateOutOfRange,
            detail: format!("line {line}: coordinate {v} is outside [0, 1] (coordinates must be normalised)"),
        });
    }
    Ok(())
}

fn clamp(v: f64) -> f64 {
    v.clamp(0.0, 1.0)
}

/// Parses a YOLO label file for `task`. `kpt_shape` is `(keypoints, dims)` for pose.
/// Returns the valid annotations, or the first problem (the whole file is then invalid).
pub fn parse_yolo(
    text: &str,
    task: Task,
    classes: usize,
    kpt_shape: Option<(usize, usize)>,
) -> Result<Vec<Annotation>, RowError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let mut values = Vec::new();
        for tok in raw.split_whitespace() {
            match tok.parse::<f64>() {
                Ok(v) => values.push(v),
                Err(_) => {
                    return Err(RowError {
                        line,
                        kind: ItemErrorKind::BadLabelRow,
                        detail: format!("line {line}: {tok:?} is not a number"),
                    });
                }
            }
        }
        let bad_len = |want: &str| RowError {
            line,
            kind: ItemErrorKind::BadLabelRow,
            detail: format!("line {line}: {} values, expected {want} for {}", values.len(), task.as_str()),
        };
        let class = check_class(values[0], classes, line)?;
        let rest = &values[1..];
        if task == Task::Pose {
            // Keypoint visibility flags (every third value with 3 dims) are not coordinates.
            let (k, d) = kpt_shape.unwrap_or((17, 3));
            if rest.len() != 4 + k * d {
                return Err(RowError {
                    line,
                    kind: ItemErrorKind::BadLabelRow,
                    detail: format!(
                        "line {line}: {} values, expected {} for pose (5 + {k} keypoints x {d})",
                        values.len(),
                        5 + k * d
                    ),
                });
            }
            let coords: Vec<f64> = rest
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < 4 || d != 3 || (i - 4) % 3 != 2)
                .map(|(_, v)| *v)
                .collect();
            check_coords(&coords, line)?;
            if d == 3
                && let Some(v) = rest.iter().skip(4).skip(2).step_by(3).find(|v| !matches!(**v, 0.0 | 1.0 | 2.0))
            {
                return Err(RowError {
                    line,
                    kind: ItemErrorKind::BadLabelRow,
                    detail: format!("line {line}: keypoint visibility {v} is not 0, 1 or 2"),
                });
            }
        } else {
            check_coords(rest, line)?;
        }
        let size_ok = |w: f64, h: f64| {
            if w <= 0.0 || h <= 0.0 {
                Err(RowError {
                    line,
                    kind: ItemErrorKind::CoordinateOutOfRange,
                    detail: format!("line {line}: box size {w}x{h} is not positive"),
                })
            } else {
                Ok(())
            }
        };
        let ann = match task {
            Task::Detect => {
                // Ultralytics accepts polygon rows in detect datasets and boxes them.
                if rest.len() == 4 {
                    size_ok(rest[2], rest[3])?;
                    Annotation::Box {
                        class,
                        cx: clamp(rest[0]),
                        cy: clamp(rest[1]),
                        w: clamp(rest[2]),
                        h: clamp(rest[3]),
                    }
                } else if rest.len() >= 6 && rest.len() % 2 == 0 {
                    let poly = Annotation::Polygon {
                        class,
                        points: rest.chunks(2).map(|p| (clamp(p[0]), clamp(p[1]))).collect(),
                    };
                    let (cx, cy, w, h) = poly.bbox().unwrap_or_default();
                    size_ok(w, h)?;
                    Annotation::Box { class, cx, cy, w, h }
                } else {
                    return Err(bad_len("5"));
                }
            }
            Task::Segment => {
                if rest.len() < 6 || rest.len() % 2 != 0 {
                    return Err(RowError {
                        line,
                        kind: ItemErrorKind::BadPolygon,
                        detail: format!(
                            "line {line}: a polygon needs at least 3 (x, y) points, got {} values",
                            rest.len()
                        ),
                    });
                }
                Annotation::Polygon { class, points: rest.chunks(2).map(|p| (clamp(p[0]), clamp(p[1]))).collect() }
            }
            Task::Obb => {
                if rest.len() != 8 {
                    return Err(bad_len("9"));
                }
                let c: Vec<(f64, f64)> = rest.chunks(2).map(|p| (clamp(p[0]), clamp(p[1]))).collect();
                Annotation::Obb { class, corners: [c[0], c[1], c[2], c[3]] }
            }
            Task::Pose => {
                let (k, d) = kpt_shape.unwrap_or((17, 3));
                if rest.len() != 4 + k * d {
                    return Err(bad_len(&format!("{} (5 + {k} keypoints x {d})", 5 + k * d)));
                }
                size_ok(rest[2], rest[3])?;
                let keypoints = rest[4..].to_vec();
                Annotation::Pose { class, cx: rest[0], cy: rest[1], w: rest[2], h: rest[3], keypoints }
            }
            Task::Classify => return Err(bad_len("a folder layout, not label files,")),
        };
        out.push(ann);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_rows() {
        let anns = parse_yolo("0 0.5 0.5 0.2 0.4\n\n2 0.1 0.1 0.05 0.05\n", Task::Detect, 3, None).expect("valid");
        assert_eq!(anns.len(), 2);
        assert_eq!(anns[0], Annotation::Box { class: 0, cx: 0.5, cy: 0.5, w: 0.2, h: 0.4 });
        // A polygon row in a detect dataset is boxed.
        let anns = parse_yolo("1 0.1 0.1 0.3 0.1 0.3 0.5", Task::Detect, 3, None).expect("valid");
        let Annotation::Box { cx, w, h, .. } = anns[0] else { panic!("box") };
        assert!((cx - 0.2).abs() < 1e-12 && (w - 0.2).abs() < 1e-12 && (h - 0.4).abs() < 1e-12);
    }

    #[test]
    fn bad_rows_are_reported_with_their_line() {
        let cases = [
            ("0 0.5 0.5 0.2 0.4\n3 0.5 0.5 0.1 0.1", ItemErrorKind::ClassOutOfRange, 2),
            ("-1 0.5 0.5 0.1 0.1", ItemErrorKind::ClassOutOfRange, 1),
            ("0.5 0.5 0.5 0.1 0.1", ItemErrorKind::ClassOutOfRange, 1),
            ("0 nan 0.5 0.1 0.1", ItemErrorKind::NonFiniteCoordinate, 1),
            ("0 inf 0.5 0.1 0.1", ItemErrorKind::NonFiniteCoordinate, 1),
            ("0 1.5 0.5 0.1 0.1", ItemErrorKind::CoordinateOutOfRange, 1),
            ("0 0.5 0.5 0 0.1", ItemErrorKind::CoordinateOutOfRange, 1),
            ("0 0.5 0.5 0.1", ItemErrorKind::BadLabelRow, 1),
            ("0 a b c d", ItemErrorKind::BadLabelRow, 1),
        ];
        for (text, kind, line) in cases {
            let e = parse_yolo(text, Task::Detect, 3, None).expect_err(text);
            assert_eq!((e.kind, e.line), (kind, line), "{text}: {}", e.detail);
        }
        let e = parse_yolo("0 0.1 0.1 0.2 0.2", Task::Segment, 3, None).expect_err("2 points");
        assert_eq!(e.kind, ItemErrorKind::BadPolygon);
        let e = parse_yolo("0 0.1 0.1 0.2 0.2 0.3", Task::Segment, 3, None).expect_err("odd");
        assert_eq!(e.kind, ItemErrorKind::BadPolygon);
    }

    #[test]
    fn segment_pose_obb() {
        let a = parse_yolo("1 0.1 0.1 0.5 0.1 0.3 0.4", Task::Segment, 2, None).expect("seg");
        assert_eq!(a[0].points(), Some(3));
        let row = format!("0 0.5 0.5 0.2 0.2 {}", ["0.5 0.5 2"; 17].join(" "));
        assert_eq!(parse_yolo(&row, Task::Pose, 1, Some((17, 3))).expect("pose").len(), 1);
        assert_eq!(
            parse_yolo(&row, Task::Pose, 1, Some((17, 2))).expect_err("wrong kpt").kind,
            ItemErrorKind::BadLabelRow
        );
        let bad_vis = format!("0 0.5 0.5 0.2 0.2 {}", ["0.5 0.5 3"; 17].join(" "));
        assert_eq!(
            parse_yolo(&bad_vis, Task::Pose, 1, Some((17, 3))).expect_err("visibility").kind,
            ItemErrorKind::BadLabelRow
        );
        assert!(parse_yolo("0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2", Task::Obb, 1, None).is_ok());
        assert_eq!(
            parse_yolo("0 0.5 0.5 0.1 0.1", Task::Obb, 1, None).expect_err("obb").kind,
            ItemErrorKind::BadLabelRow
        );
    }
}
