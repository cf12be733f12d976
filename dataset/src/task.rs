//! The vision task (mirrors the CRDs' `Task`; this crate does not depend on kube).

use serde::{Deserialize, Serialize};

/// The vision task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Boxes.
    Detect,
    /// Polygons.
    Segment,
    /// Image classes.
    Classify,
    /// Keypoints.
    Pose,
    /// Oriented boxes.
    Obb,
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "detect" => Ok(Task::Detect),
            "segment" => Ok(Task::Segment),
            "classify" => Ok(Task::Classify),
            "pose" => Ok(Task::Pose),
            "obb" => Ok(Task::Obb),
            other => Err(format!("unknown task {other:?} (detect, segment, classify, pose, obb)")),
        }
    }
}

impl Task {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Detect => "detect",
            Task::Segment => "segment",
            Task::Classify => "classify",
            Task::Pose => "pose",
            Task::Obb => "obb",
        }
    }
}
