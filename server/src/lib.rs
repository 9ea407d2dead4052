//! migserve: LLM inference serving for NVIDIA GPUs split into MIG slices.
//!
//! This crate holds the command line, slice discovery, the deployment config and placement,
//! the planner, the supervisor, the front router, and the worker process (its HTTP API over
//! an engine). The engine lives in `migserve-engine`, model code in `migserve-models`.

pub mod access_log;
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod contract;
pub mod fleet;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod plan;
pub mod router;
pub mod slices;
pub mod supervisor;
pub mod worker;
