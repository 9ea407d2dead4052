//! migserve: LLM inference serving for NVIDIA GPUs split into MIG slices.
//!
//! This crate holds the command line, the worker (engine and HTTP API), slice discovery,
//! the deployment config, the supervisor and the router. Model code lives in `migserve-models`.

pub mod api;
pub mod cli;
pub mod config;
pub mod fake_worker;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod plan;
pub mod router;
pub mod slices;
pub mod supervisor;
pub mod worker;
