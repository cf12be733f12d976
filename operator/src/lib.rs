//! The Ocellus operator as a library: the controllers, leader election and metrics, so that
//! the binary stays a thin `main` and the tests drive the same code.

pub mod autoscale;
pub mod config;
pub mod controller;
pub mod crd_check;
pub mod leader;
pub mod metrics;
pub mod run;
pub mod workload;
