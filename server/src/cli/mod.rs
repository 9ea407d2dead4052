//! Command-line interface: one subcommand per job.

mod generate;
mod plan;
mod reload;
mod serve;
mod slices;
mod synth;

use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

/// LLM inference serving for NVIDIA GPUs split into MIG slices.
#[derive(Debug, Parser)]
#[command(name = "migserve", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "MIGSERVE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// What is logged when `RUST_LOG` is unset: warnings only for `generate` (its stdout and
    /// stderr are the answer and its speed), else `info`.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Generate(_) => "warn",
            _ => "info",
        }
    }
}

/// The jobs migserve can do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text for one prompt and stream it to stdout.
    Generate(generate::GenerateArgs),
    /// Serve one model over HTTP (TGI and OpenAI APIs) with continuous batching.
    Worker(crate::worker::WorkerArgs),
    /// List the GPU's MIG slices (or emulated / inventoried ones).
    Slices(slices::SlicesArgs),
    /// Run the supervisor and router: workers on slices behind one endpoint, models loaded
    /// on demand.
    Serve(serve::ServeArgs),
    /// Make a running `serve` read its config again and apply the difference.
    Reload(reload::ReloadArgs),
    /// Write a model of a known shape with random weights (benchmarks without downloads).
    Synth(synth::SynthArgs),
    /// Recommend a MIG layout (mig-parted config + migserve config) for a set of models.
    Plan(plan::PlanArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Worker(args) => crate::worker::run(args),
        Command::Slices(args) => slices::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Reload(args) => reload::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Plan(args) => plan::run(args),
    }
}
