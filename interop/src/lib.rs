//! Reading what Ultralytics writes, without Python and without executing anything it contains:
//! the metadata its exports embed ([`metadata`]: ONNX `metadata_props`, TorchScript's
//! `config.txt`), and its `.pt` checkpoints ([`checkpoint`], through the restricted unpickler of
//! [`pickle`]). Pure: no Kubernetes, no libtorch.

pub mod checkpoint;
pub mod metadata;
pub mod pickle;
pub mod pylit;
