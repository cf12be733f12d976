//! TorchScript on libtorch (CPU or CUDA), as exported by `ocellus-trainer export --format
//! torchscript`.

use tch::{CModule, Kind, Tensor};

use super::{Backend, BackendError, Device, ModelSpec, check_len};

/// A TorchScript module.
pub struct TorchBackend {
    module: CModule,
    device: tch::Device,
    half: bool,
    per_image: usize,
    side: i64,
}

impl TorchBackend {
    /// Loads `spec.path` onto the device.
    pub fn load(spec: &ModelSpec) -> Result<TorchBackend, BackendError> {
        let device = match spec.device {
            Device::Cpu => tch::Device::Cpu,
            Device::Cuda(i) => {
                if !tch::Cuda::is_available() {
                    return Err(BackendError::Unavailable(
                        "CUDA is not available to libtorch here; use --device cpu".into(),
                    ));
                }
                tch::Device::Cuda(i as usize)
            }
        };
        if spec.threads > 0 {
            tch::set_num_threads(spec.threads as i32);
        }
        let mut module = CModule::load_on_device(&spec.path, device).map_err(|e| BackendError::Load(e.to_string()))?;
        module.set_eval();
        Ok(TorchBackend {
            module,
            device,
            half: spec.info.half,
            per_image: spec.output_len(),
            side: i64::from(spec.info.imgsz),
        })
    }
}

impl Backend for TorchBackend {
    fn name(&self) -> &'static str {
        "libtorch"
    }

    fn run(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
        let side = self.side;
        let x = Tensor::from_slice(input).view([n as i64, 3, side, side]).to_device(self.device);
        let x = if self.half { x.to_kind(Kind::Half) } else { x };
        let y = tch::no_grad(|| self.module.forward_ts(&[x])).map_err(|e| BackendError::Run(e.to_string()))?;
        let y = y.to_device(tch::Device::Cpu).to_kind(Kind::Float).flatten(0, -1);
        let out = Vec::<f32>::try_from(y).map_err(|e| BackendError::Run(e.to_string()))?;
        check_len(out, n, self.per_image)
    }
}
