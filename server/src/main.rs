//! The `migserve` binary: parse arguments, call the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = migserve::cli::Cli::parse();
    migserve::logging::init(cli.log_format, cli.default_log_level());
    match migserve::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", migserve_engine::error::error_chain(e.as_ref()));
            use migserve::contract::{EXIT_DEVICE_UNUSABLE, EXIT_ENGINE_DIED};
            if e.downcast_ref::<migserve_engine::DeviceUnusable>()
                .is_some()
            {
                // The supervisor marks the slice failed at once instead of restarting.
                ExitCode::from(EXIT_DEVICE_UNUSABLE as u8)
            } else if e.downcast_ref::<migserve::worker::EngineDied>().is_some() {
                ExitCode::from(EXIT_ENGINE_DIED as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
