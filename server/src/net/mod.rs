//! Listener set-up and shutdown signals shared by every HTTP server in migserve, and the
//! front's guarded server ([`guarded`]).

pub mod guarded;

use axum::serve::{ListenerExt, TapIo};
use tokio::net::{TcpListener, TcpStream};

/// A listener whose connections have Nagle's algorithm off.
pub type NoDelayListener = TapIo<TcpListener, fn(&mut TcpStream)>;

/// Turns Nagle's algorithm off on every accepted connection. Token streams are many small
/// writes; with Nagle on, a response head and its first event can wait ~40 ms for a delayed
/// ACK (bench/results/2026-11-21-router-overhead.md: time to first token 42 ms before, the
/// worker's own 10 ms after).
pub fn no_delay(listener: TcpListener) -> NoDelayListener {
    listener.tap_io(set_nodelay as fn(&mut TcpStream))
}

fn set_nodelay(tcp: &mut TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// Resolves on SIGTERM or Ctrl-C: when every server of migserve starts its graceful shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
