//! The contract between a `migserve worker` process and the supervisor that starts it, in one
//! place both sides use: the device kinds, the environment a worker is started with, the line
//! it prints once it serves, and what its exit status means.

pub use migserve_engine::DeviceKind;

/// Exit status of a worker that cannot use its device (no driver, no such GPU, too little
/// memory, a build without CUDA). The supervisor marks the slice failed at once instead of
/// restarting a worker that would fail the same way.
pub const EXIT_DEVICE_UNUSABLE: i32 = 3;

/// Exit status of a worker whose engine died (its thread panicked). Every request in flight
/// got an error first; the supervisor restarts the worker like any crash.
pub const EXIT_ENGINE_DIED: i32 = 4;

/// Environment variable through which a worker learns its supervisor's pid (it exits when
/// that process goes away).
pub const SUPERVISOR_PID_ENV: &str = "MIGSERVE_SUPERVISOR_PID";

/// Environment variable naming the slice a worker serves (`--slice`).
pub const SLICE_ENV: &str = "MIGSERVE_SLICE";

/// Environment variable naming that slice's profile (`--profile`).
pub const PROFILE_ENV: &str = "MIGSERVE_PROFILE";

/// The start of the first stdout line of a worker that serves; its base URL follows.
pub const WORKER_READY_PREFIX: &str = "migserve worker listening on ";

/// The start of the first stdout line of `migserve serve` once its front listens.
pub const SERVE_READY_PREFIX: &str = "migserve serving on ";

/// A worker's ready line for the address it listens on.
pub fn worker_ready_line(addr: std::net::SocketAddr) -> String {
    format!("{WORKER_READY_PREFIX}http://{addr}")
}

/// The base URL in a worker's ready line, if `line` is one.
pub fn parse_worker_ready_line(line: &str) -> Option<&str> {
    line.strip_prefix(WORKER_READY_PREFIX).map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_carries_the_url_back() {
        let line = worker_ready_line("127.0.0.1:4321".parse().unwrap());
        assert_eq!(
            parse_worker_ready_line(&line),
            Some("http://127.0.0.1:4321")
        );
        assert_eq!(parse_worker_ready_line("migserve worker loading"), None);
    }

    #[test]
    fn loadtest_parses_the_same_serve_ready_line() {
        // loadtest does not depend on this crate; its copy of the prefix must stay equal.
        let loadtest = include_str!("../../loadtest/src/serve.rs");
        assert!(
            loadtest.contains(&format!("{SERVE_READY_PREFIX:?}")),
            "loadtest/src/serve.rs must parse {SERVE_READY_PREFIX:?}"
        );
    }
}
