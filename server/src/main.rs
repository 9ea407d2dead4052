//! The `migserve` binary: parse arguments, call the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = migserve::cli::Cli::parse();
    migserve::logging::init(cli.log_format);
    match migserve::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole cause chain.
            eprintln!("error: {e:#}");
            if e.downcast_ref::<migserve::worker::DeviceUnusable>()
                .is_some()
            {
                // The supervisor marks the slice failed at once instead of restarting.
                ExitCode::from(migserve::worker::EXIT_DEVICE_UNUSABLE as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
