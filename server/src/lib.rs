//! migserve: LLM inference serving for NVIDIA GPUs split into MIG slices.
//!
//! This crate holds the command line, the worker (engine and HTTP API) and, in later
//! milestones, slice discovery, the supervisor and the router. Model code lives in `migserve-models`.

pub mod api;
pub mod cli;
pub mod logging;
pub mod metrics;
pub mod worker;
