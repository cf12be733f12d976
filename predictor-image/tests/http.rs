//! The predictor over real HTTP (one test binary, so the model is trained once): a model trained
//! and exported by the trainer CLI, served by `ocellus-predictor serve` processes; and Ultralytics'
//! own exports, served as they are; Roboflow's inference SDK as a client.
#![cfg(feature = "torch")]

#[path = "http/byo.rs"]
mod byo;
#[path = "http/common/mod.rs"]
mod common;
#[path = "http/label_studio.rs"]
mod label_studio;
#[path = "http/roboflow.rs"]
mod roboflow;
#[path = "http/serve.rs"]
mod serve;
