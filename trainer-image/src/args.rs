//! Flag groups more than one subcommand takes, declared once and flattened into each.

use std::path::PathBuf;

use clap::Args;

/// `--work-dir`: scratch space for fetched images, weights and artifacts.
#[derive(Args, Debug, Clone)]
pub struct WorkDirArgs {
    /// Scratch directory (default: `<tmp>/ocellus-<subcommand>`); removed when the command
    /// ends, unless a paused run keeps it for its resume.
    #[arg(long, env = "OCELLUS_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
}

impl WorkDirArgs {
    /// The directory for `subcommand`.
    pub fn path(&self, subcommand: &str) -> PathBuf {
        self.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("ocellus-{subcommand}")))
    }
}

/// `--device`, for the libtorch subcommands.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when available).
    #[arg(long, env = "OCELLUS_DEVICE", default_value = "auto")]
    pub device: String,
}

#[cfg(feature = "torch")]
impl DeviceArgs {
    /// The libtorch device, or an invalid-input failure naming the accepted values. A CUDA
    /// device this process cannot see (no driver, or fewer GPUs) is a transient failure of the
    /// environment, not a panic in libtorch later: another node may have it.
    pub fn resolve(&self) -> Result<tch::Device, crate::report::Failure> {
        let device = match self.device.as_str() {
            "auto" => tch::Device::cuda_if_available(),
            "cpu" => tch::Device::Cpu,
            "cuda" => tch::Device::Cuda(0),
            other => {
                other.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(tch::Device::Cuda).ok_or_else(|| {
                    crate::report::Failure::invalid(
                        "InvalidDevice",
                        format!("unknown device {other:?} (auto, cpu, cuda, cuda:N)"),
                    )
                })?
            }
        };
        if let tch::Device::Cuda(n) = device {
            let visible = if tch::Cuda::is_available() { tch::Cuda::device_count() } else { 0 };
            if n as i64 >= visible {
                return Err(crate::report::Failure {
                    kind: ocellus_core::ErrorKind::Transient,
                    reason: "CudaUnavailable",
                    message: format!(
                        "--device {} asks for CUDA device {n}, but this process sees {visible} (no NVIDIA driver or GPU here)",
                        self.device
                    ),
                });
            }
        }
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_dir_defaults_per_subcommand() {
        let none = WorkDirArgs { work_dir: None };
        assert_eq!(none.path("train"), std::env::temp_dir().join("ocellus-train"));
        let set = WorkDirArgs { work_dir: Some("/scratch".into()) };
        assert_eq!(set.path("train"), PathBuf::from("/scratch"));
    }

    #[cfg(feature = "torch")]
    #[test]
    fn devices_parse() {
        let d = |s: &str| DeviceArgs { device: s.into() }.resolve();
        assert_eq!(d("cpu").expect("cpu"), tch::Device::Cpu);
        let bad = d("tpu").expect_err("tpu");
        assert_eq!(bad.reason, "InvalidDevice");
        // A GPU this process cannot see is refused up front (on a machine with two GPUs,
        // `cuda:1` is accepted).
        let gpus = if tch::Cuda::is_available() { tch::Cuda::device_count() } else { 0 };
        match d("cuda:1") {
            Ok(dev) => assert!(gpus >= 2 && dev == tch::Device::Cuda(1)),
            Err(e) => {
                assert!(gpus < 2, "{e}");
                assert_eq!((e.reason, e.kind), ("CudaUnavailable", ocellus_core::ErrorKind::Transient));
                assert!(e.message.contains("sees"), "{e}");
            }
        }
    }
}
