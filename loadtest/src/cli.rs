//! Command line: `loadtest run` against any server, `loadtest compare` across migserve layouts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::load::{cancel_on_ctrl_c, http_client, measure, LoadArgs};

/// Load generator and benchmark reports for TGI- and OpenAI-compatible servers.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put load on one server and write a report.
    Run(RunArgs),
    /// Start `migserve serve` in several layouts, put the same load on each, write one report.
    Compare(crate::compare::CompareArgs),
}

/// Arguments of `loadtest run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Folder for result.json, summary.md and the SVG charts.
    #[arg(long, default_value = "loadtest-report")]
    pub out: PathBuf,
    /// Name of the run in the report.
    #[arg(long, default_value = "run")]
    pub name: String,
}

/// Runs the parsed command; the exit code is 130 after Ctrl-C (the report is still written).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => {
                let client = http_client()?;
                let cancel = cancel_on_ctrl_c();
                let report = measure(&args.name, &args.url, &args.load, &client, &cancel).await?;
                report
                    .write(&args.out)
                    .with_context(|| format!("writing the report to {}", args.out.display()))?;
                println!("{}", report.markdown());
                eprintln!("report written to {}", args.out.display());
                Ok(if report.interrupted {
                    ExitCode::from(130)
                } else {
                    ExitCode::SUCCESS
                })
            }
            Command::Compare(args) => crate::compare::run(args).await,
        }
    })
}
