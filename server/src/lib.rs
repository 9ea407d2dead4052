//! migserve: LLM inference serving for NVIDIA GPUs split into MIG slices.
//!
//! This crate holds the command line, and (in later milestones) slice discovery, the
//! supervisor, the router and the worker's HTTP API. Model code lives in `migserve-models`.

pub mod cli;
pub mod logging;
