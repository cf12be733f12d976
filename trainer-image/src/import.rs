//! Ultralytics `.pt` checkpoints into the trainer's weights, without Python: the checkpoint is read
//! by `ocellus-interop`'s restricted unpickler (nothing in it runs), its `ema` (or `model`) state
//! dict is matched one to one, by name and shape, against the architecture it names, and written
//! as the trainer's safetensors with a model info. Used by `ocellus-trainer import` and by
//! `train --start-weights <…>.pt`.

use std::collections::BTreeSet;
use std::path::Path;

use ocellus_interop::checkpoint::{self, UltralyticsCheckpoint};
use ocellus_vision::ModelInfo;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::model::{Architecture, Classifier, Detector, ModelKind};

/// Why a checkpoint cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Unreadable or refused (not a torch zip, a disallowed pickle name, lying sizes).
    #[error("cannot read the checkpoint: {0}")]
    Read(String),
    /// Readable, but not a model the trainer has.
    #[error("{0}")]
    Architecture(String),
}

/// An imported model: the trainer's variables, loaded, and what it is.
pub struct Imported {
    /// The weights under the trainer's (= Ultralytics') names.
    pub vs: VarStore,
    /// Its model info (`format: safetensors`, no SHA-256 yet).
    pub info: ModelInfo,
    /// The Ultralytics version that wrote the checkpoint, when recorded.
    pub version: Option<String>,
}

/// Reads `path` and loads it into a fresh model of its architecture; `imgsz` is recorded when the
/// checkpoint has no `train_args.imgsz`.
pub fn import(path: &Path, imgsz: u32) -> Result<Imported, ImportError> {
    let file = std::fs::File::open(path).map_err(|e| ImportError::Read(format!("{}: {e}", path.display())))?;
    let ckpt =
        checkpoint::read_ultralytics(std::io::BufReader::new(file)).map_err(|e| ImportError::Read(e.to_string()))?;
    load(ckpt, imgsz)
}

/// The architecture a checkpoint names, as the trainer parses it.
fn architecture(ckpt: &UltralyticsCheckpoint) -> Result<(String, Architecture), ImportError> {
    let name = ckpt.architecture.clone().ok_or_else(|| {
        ImportError::Architecture(format!(
            "the checkpoint's model YAML names no architecture (yaml_file); Ocellus imports yolov8{{n,s,m,l,x}}[-cls] ({})",
            ckpt.class
        ))
    })?;
    let arch: Architecture = name.parse().map_err(|e: crate::error::ParseError| {
        ImportError::Architecture(format!(
            "the checkpoint is a {name} ({}): {e}. Its ONNX export can still be served as it is (ocellus-predictor serve --model best.onnx)",
            ckpt.task
        ))
    })?;
    let kind_task = if arch.kind == ModelKind::Classify { "classify" } else { "detect" };
    if kind_task != ckpt.task {
        return Err(ImportError::Architecture(format!(
            "{name} is a {kind_task} architecture but the checkpoint's model is a {} model",
            ckpt.task
        )));
    }
    Ok((name, arch))
}

/// Loads a read checkpoint into the trainer's model, refusing any difference in names or shapes.
pub fn load(ckpt: UltralyticsCheckpoint, imgsz: u32) -> Result<Imported, ImportError> {
    let (name, arch) = architecture(&ckpt)?;
    let nc = ckpt.names.len() as i64;
    if nc == 0 {
        return Err(ImportError::Architecture("the checkpoint has no class names and no nc".into()));
    }
    if let Some(yaml_nc) = ckpt.yaml.get("nc").and_then(serde_json::Value::as_i64)
        && yaml_nc != nc
    {
        return Err(ImportError::Architecture(format!(
            "the checkpoint's YAML says nc {yaml_nc} but it has {nc} class names"
        )));
    }
    let vs = VarStore::new(Device::Cpu);
    match arch.kind {
        ModelKind::Detect => drop(Detector::new(&(vs.root() / "model"), &arch, nc)),
        ModelKind::Classify => drop(Classifier::new(&(vs.root() / "model"), &arch, nc)),
    }
    let ours = vs.variables();
    // Batch-norm step counters are not variables of the trainer (it tracks no count).
    let theirs: Vec<_> = ckpt.tensors.iter().filter(|(n, _)| !n.ends_with("num_batches_tracked")).collect();
    let their_names: BTreeSet<&str> = theirs.iter().map(|(n, _)| n.as_str()).collect();
    let missing: Vec<&String> = ours.keys().filter(|k| !their_names.contains(k.as_str())).collect();
    let extra: Vec<&str> = their_names.iter().copied().filter(|k| !ours.contains_key(*k)).collect();
    if !missing.is_empty() || !extra.is_empty() {
        let few = |v: Vec<String>| v.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
        return Err(ImportError::Architecture(format!(
            "the checkpoint's tensors do not match {name} with {nc} classes: {} missing ({}), {} unexpected ({})",
            missing.len(),
            few(missing.iter().map(|s| s.to_string()).collect()),
            extra.len(),
            few(extra.iter().map(|s| s.to_string()).collect())
        )));
    }
    tch::no_grad(|| -> Result<(), ImportError> {
        for (n, t) in theirs {
            let var = &ours[n.as_str()];
            let want: Vec<usize> = var.size().iter().map(|d| *d as usize).collect();
            if want != t.shape {
                return Err(ImportError::Architecture(format!(
                    "{n} is {:?} in the checkpoint but {want:?} in {name} with {nc} classes",
                    t.shape
                )));
            }
            let src = Tensor::from_slice(&t.data).view(var.size().as_slice());
            var.shallow_clone().copy_(&src);
        }
        Ok(())
    })?;
    let imgsz = ckpt.imgsz.filter(|s| *s > 0 && s.is_multiple_of(32)).unwrap_or(imgsz);
    let info = ModelInfo::weights(&name, &ckpt.task, ckpt.names, imgsz);
    Ok(Imported { vs, info, version: ckpt.version })
}
