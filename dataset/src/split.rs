//! Deterministic split assignment from the content hash: stable across re-ingests.

use serde::{Deserialize, Serialize};

/// A split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training.
    Train,
    /// Validation.
    Val,
    /// Test.
    Test,
}

impl Split {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// Recognises split names used by datasets (`valid`, `validation` too).
    pub fn from_name(s: &str) -> Option<Split> {
        match s.to_ascii_lowercase().as_str() {
            "train" | "training" => Some(Split::Train),
            "val" | "valid" | "validation" => Some(Split::Val),
            "test" | "testing" => Some(Split::Test),
            _ => None,
        }
    }
}

/// Ratios for assignment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratios {
    /// Train fraction.
    pub train: f64,
    /// Val fraction.
    pub val: f64,
    /// Test fraction.
    pub test: f64,
}

/// The split of an image with content hash `sha256_hex` under `ratios`.
pub fn assign(sha256_hex: &str, ratios: Ratios) -> Split {
    let prefix = sha256_hex.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0);
    // The top 53 bits as a fraction in [0, 1): exact in f64, so the last hash never reaches 1.0
    // (which would land it in `test` even when the test ratio is 0).
    let u = (prefix >> 11) as f64 / (1u64 << 53) as f64;
    let total = (ratios.train + ratios.val + ratios.test).max(f64::MIN_POSITIVE);
    if u < ratios.train / total {
        Split::Train
    } else if u < (ratios.train + ratios.val) / total {
        Split::Val
    } else {
        Split::Test
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn assignment_is_deterministic_and_close_to_the_ratios() {
        let r = Ratios { train: 0.7, val: 0.2, test: 0.1 };
        let mut counts = [0usize; 3];
        for i in 0..10_000 {
            let h = hex::encode(Sha256::digest(format!("img{i}")));
            let s = assign(&h, r);
            assert_eq!(s, assign(&h, r));
            counts[s as usize] += 1;
        }
        assert!((6800..7200).contains(&counts[0]), "{counts:?}");
        assert!((1800..2200).contains(&counts[1]), "{counts:?}");
        assert!((850..1150).contains(&counts[2]), "{counts:?}");
    }
}
