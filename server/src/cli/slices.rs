//! `migserve slices`: show what slices this machine offers.

use std::path::PathBuf;

use crate::slices::emulate::EmulationTarget;
use crate::slices::{table, ProbeError, SliceSource};

/// Arguments of `migserve slices`.
#[derive(Debug, Clone, clap::Args)]
pub struct SlicesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Read slices from a file (`nvidia-smi -L` output or JSON) instead of asking the driver.
    #[arg(long, conflicts_with = "emulate")]
    pub inventory: Option<PathBuf>,
    /// Emulate slices instead, e.g. `7x1g.10gb` or `3g.40gb,2g.20gb,1g.10gb`.
    #[arg(long)]
    pub emulate: Option<String>,
    /// What emulated slices are carved from: `cpu`, `gpu` or `gpu:N`.
    #[arg(long, default_value = "cpu", value_parser = parse_target)]
    pub emulate_on: EmulationTarget,
}

fn parse_target(text: &str) -> Result<EmulationTarget, String> {
    text.parse()
}

/// Runs `migserve slices`.
pub fn run(args: SlicesArgs) -> anyhow::Result<()> {
    let source = match (args.inventory, args.emulate) {
        (Some(path), _) => SliceSource::Inventory(path),
        (None, Some(spec)) => SliceSource::Emulate {
            spec,
            target: args.emulate_on,
        },
        (None, None) => SliceSource::Nvml,
    };
    let slices = match source.probe() {
        Ok(slices) => slices,
        // No driver is an answer, not a failure: say so and exit cleanly.
        Err(ProbeError::NoDriver(reason)) => {
            if args.json {
                println!("[]");
            }
            eprintln!(
                "no NVIDIA driver on this machine ({reason}); no GPU slices. \
                 Use --emulate SPEC (e.g. 3x1g.10gb) or --inventory FILE."
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&slices)?);
    } else if slices.is_empty() {
        println!("no slices found");
    } else {
        print!("{}", table::render(&slices));
    }
    Ok(())
}
