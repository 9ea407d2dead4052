//! The life of one slot: start the worker, wait until ready, health-check it, restart it with
//! backoff when it crashes or hangs, give up after too many crashes, stop it on shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::backoff::{Backoff, CrashWindow};
use super::process::{spawn_worker, terminate, SpawnedWorker};
use super::slot::{SlotState, WorkerSlot};
use super::{RestartPolicy, Timings};
use crate::contract::EXIT_DEVICE_UNUSABLE;

/// How one run of a worker ended.
enum Ending {
    /// Shutdown was asked for.
    Shutdown,
    /// It exited, failed to start, or stopped answering health checks. `retry` is false
    /// when it exited saying it cannot use its device (no driver, unknown GPU, too little
    /// memory): restarting cannot help.
    Crashed {
        reason: String,
        up_for: Duration,
        retry: bool,
    },
}

/// Runs the slot until shutdown or until it is marked failed.
pub async fn run_slot(
    slot: Arc<WorkerSlot>,
    exe: PathBuf,
    timings: Timings,
    policy: RestartPolicy,
    mut shutdown: watch::Receiver<Option<Duration>>,
) {
    let mut ever_ready = false;
    let mut backoff = Backoff::new(timings.restart_backoff, timings.restart_backoff_max);
    let mut crashes = CrashWindow::new(timings.max_crashes, timings.crash_window);
    let http = reqwest::Client::builder()
        .timeout(timings.health_timeout)
        .build()
        .unwrap_or_default();
    loop {
        if shutdown.borrow().is_some() {
            break;
        }
        slot.update(|s| {
            s.state = SlotState::Starting;
            s.url = None;
            s.pid = None;
            s.generation += 1;
        });
        let ending = match spawn_worker(&exe, &slot.assignment, timings.drain) {
            Ok(mut worker) => {
                slot.update(|s| s.pid = Some(worker.pid));
                tracing::info!(
                    slice = slot.id(),
                    model = slot.model(),
                    pid = worker.pid,
                    "worker started"
                );
                let ending = watch_worker(&slot, &mut worker, &http, &timings, &mut shutdown).await;
                ever_ready |= slot.with_status(|s| s.state == SlotState::Ready);
                if matches!(ending, Ending::Shutdown) {
                    slot.update(|s| s.state = SlotState::Stopping);
                }
                // Shutdown: the grace it was given; crash or hang: it is dead or stuck.
                let grace = match ending {
                    Ending::Shutdown => shutdown.borrow().unwrap_or(timings.stop),
                    Ending::Crashed { .. } => Duration::from_millis(200),
                };
                terminate(&mut worker.child, worker.pid, grace).await;
                ending
            }
            Err(e) => Ending::Crashed {
                reason: format!("cannot start {}: {e}", exe.display()),
                up_for: Duration::ZERO,
                retry: true,
            },
        };
        match ending {
            Ending::Shutdown => break,
            Ending::Crashed {
                reason,
                up_for,
                retry,
            } => {
                if shutdown.borrow().is_some() {
                    break;
                }
                if up_for >= timings.crash_window {
                    backoff.reset();
                }
                let first_load_failed = policy == RestartPolicy::AfterFirstReady && !ever_ready;
                let failed = !retry || first_load_failed || crashes.record(Instant::now());
                slot.update(|s| {
                    s.url = None;
                    s.pid = None;
                    s.last_error = Some(reason.clone());
                    if !failed {
                        s.restarts += 1;
                    }
                    s.state = if failed {
                        SlotState::Failed
                    } else {
                        SlotState::Restarting
                    };
                });
                if failed {
                    let why = if !retry {
                        "its worker cannot use the device"
                    } else if first_load_failed {
                        "its worker failed before it was ready"
                    } else {
                        "its worker crashed too often"
                    };
                    tracing::error!(
                        slice = slot.id(),
                        model = slot.model(),
                        crashes = crashes.count(),
                        window_secs = timings.crash_window.as_secs_f64(),
                        %reason,
                        "slice failed: {why}; not restarting it"
                    );
                    return;
                }
                let delay = backoff.next_delay();
                tracing::warn!(slice = slot.id(), %reason, delay_ms = delay.as_millis() as u64, "worker down; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
    slot.update(|s| {
        s.state = SlotState::Stopped;
        s.url = None;
        s.pid = None;
    });
}

/// How a worker's exit ends its run: its status and (for an error exit) the last line it
/// logged, which says why; exit status 3 means it cannot use its device.
async fn exited(
    status: std::io::Result<std::process::ExitStatus>,
    worker: &mut SpawnedWorker,
    up_for: Duration,
) -> Ending {
    let unusable = matches!(&status, Ok(s) if s.code() == Some(EXIT_DEVICE_UNUSABLE));
    // A worker that exits with an error code says why in its last line ("error: …"); one
    // killed by a signal does not. Its stderr may still hold that line: read it to the end.
    let last_line = match &status {
        Ok(s) if s.code().is_some() => {
            worker.stderr_drained(Duration::from_secs(1)).await;
            worker.last_log_line()
        }
        _ => None,
    };
    let status = status
        .map(|s| s.to_string())
        .unwrap_or_else(|e| e.to_string());
    let reason = match last_line {
        Some(line) => format!("worker exited ({status}): {line}"),
        None => format!("worker exited ({status})"),
    };
    Ending::Crashed {
        reason,
        up_for,
        retry: !unusable,
    }
}

/// Watches one running worker until it ends or shutdown is asked for.
async fn watch_worker(
    slot: &WorkerSlot,
    worker: &mut SpawnedWorker,
    http: &reqwest::Client,
    timings: &Timings,
    shutdown: &mut watch::Receiver<Option<Duration>>,
) -> Ending {
    let started = Instant::now();
    // Phase 1: wait for the ready line.
    let url = tokio::select! {
        // If its stdout closes without a ready line this branch is switched off and the
        // others decide (it is exiting, or stuck until the ready timeout).
        Ok(url) = &mut worker.ready => url,
        status = worker.child.wait() => {
            return exited(status, worker, started.elapsed()).await;
        }
        _ = tokio::time::sleep(timings.ready_timeout) => {
            return Ending::Crashed {
                reason: format!("not ready after {:.0} s", timings.ready_timeout.as_secs_f64()),
                up_for: started.elapsed(),
                retry: true,
            };
        }
        _ = shutdown.changed() => return Ending::Shutdown,
    };
    tracing::info!(slice = slot.id(), %url, load_secs = started.elapsed().as_secs_f64(), "worker ready");
    slot.update(|s| {
        s.state = SlotState::Ready;
        s.url = Some(url.clone());
    });
    // Phase 2: health checks until it exits, hangs, or shutdown.
    let ready_at = Instant::now();
    let health_url = format!("{url}/health");
    let mut failures = 0u32;
    let mut ticker = tokio::time::interval(timings.health_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            status = worker.child.wait() => {
                return exited(status, worker, ready_at.elapsed()).await;
            }
            _ = shutdown.changed() => return Ending::Shutdown,
            _ = ticker.tick() => {
                let healthy = matches!(
                    http.get(&health_url).send().await,
                    Ok(response) if response.status().is_success()
                );
                failures = if healthy { 0 } else { failures + 1 };
                if failures >= timings.unhealthy_after {
                    return Ending::Crashed {
                        reason: format!("hung: {failures} health checks in a row failed"),
                        up_for: ready_at.elapsed(),
                        retry: true,
                    };
                }
            }
        }
    }
}
