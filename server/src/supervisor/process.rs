//! Spawning one worker process pinned to its slice, forwarding its logs, and stopping it.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::config::placement::Assignment;
use crate::contract::{parse_worker_ready_line, PROFILE_ENV, SLICE_ENV, SUPERVISOR_PID_ENV};
const KEPT_LOG_LINES: usize = 8;

/// A spawned worker.
pub struct SpawnedWorker {
    pub child: Child,
    pub pid: u32,
    /// Resolves with the worker's base URL when it reports ready.
    pub ready: oneshot::Receiver<String>,
    /// Its last stderr lines, to explain a failed exit.
    pub recent_log: Arc<Mutex<VecDeque<String>>>,
    /// The task copying its stderr; ends when the worker's stderr closes.
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
}

impl SpawnedWorker {
    /// Waits (at most `timeout`) until the worker's stderr has been read to its end, so
    /// the lines it wrote just before exiting are in `recent_log`.
    pub async fn stderr_drained(&mut self, timeout: Duration) {
        if let Some(reader) = self.stderr_reader.as_mut() {
            if tokio::time::timeout(timeout, reader).await.is_ok() {
                self.stderr_reader = None;
            }
        }
    }

    /// Why the worker exited, as it said: its last `error: …` line (a backtrace may follow
    /// it), else the last line it logged that is not blank.
    pub fn last_log_line(&self) -> Option<String> {
        let recent = self.recent_log.lock().ok()?;
        recent
            .iter()
            .rev()
            .find(|l| l.starts_with("error: "))
            .or_else(|| recent.iter().rev().find(|l| !l.trim().is_empty()))
            .cloned()
    }
}

/// The `migserve worker` arguments for an assignment (a worker sharing its slice gets its
/// share as `--memory-budget-bytes`, unless its config sets one).
pub fn worker_args(assignment: &Assignment, drain_timeout: Duration) -> Vec<String> {
    let slice = &assignment.slice;
    let mut args = vec![
        "worker".to_string(),
        "--model".into(),
        assignment.model.path.display().to_string(),
        "--model-id".into(),
        assignment.model.name.clone(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--device".into(),
        assignment.device.name().into(),
        "--slice".into(),
        slice.id.clone(),
        "--profile".into(),
        slice.profile.clone(),
        "--drain-timeout-secs".into(),
        drain_timeout.as_secs().max(1).to_string(),
    ];
    if let Some(threads) = slice.threads() {
        args.push("--threads".into());
        args.push(threads.to_string());
    }
    let mut engine = assignment.model.engine.clone();
    if engine.memory_budget_bytes.is_none() {
        engine.memory_budget_bytes = assignment.share_bytes;
    }
    args.extend(engine.to_args());
    args
}

/// Spawns `exe worker …` for an assignment: `CUDA_VISIBLE_DEVICES` is exactly the slice's
/// UUID, the process has its own process group (a terminal's Ctrl-C reaches only the
/// supervisor), dies with the supervisor (`PR_SET_PDEATHSIG`), and CPU slices are pinned to
/// their cores.
pub fn spawn_worker(
    exe: &Path,
    assignment: &Assignment,
    drain_timeout: Duration,
) -> std::io::Result<SpawnedWorker> {
    let slice = &assignment.slice;
    let mut command = Command::new(exe);
    command
        .args(worker_args(assignment, drain_timeout))
        .env("CUDA_VISIBLE_DEVICES", &slice.uuid)
        .env(SLICE_ENV, &slice.id)
        .env(PROFILE_ENV, &slice.profile)
        .env(SUPERVISOR_PID_ENV, std::process::id().to_string())
        // The worker's own log lines carry no colour codes into ours.
        .env("NO_COLOR", "1")
        .env_remove("MIGSERVE_MODEL")
        .env_remove("MIGSERVE_LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let cpus = slice.cpus.clone();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs in the forked child before exec; only async-signal-safe libc calls, no
    // allocation (the core list was allocated before the fork).
    unsafe {
        command.pre_exec(move || {
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The supervisor may have died between fork and prctl.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("supervisor exited"));
                }
                if !cpus.is_empty() {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
                        libc::CPU_SET(cpu, &mut set);
                    }
                    // Pinning is best effort: a container may forbid some cores.
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
            }
            let _ = (&cpus, parent);
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or_default();
    let (ready_tx, ready) = oneshot::channel();
    let recent_log = Arc::new(Mutex::new(VecDeque::new()));
    if let Some(stdout) = child.stdout.take() {
        forward_lines(stdout, slice.id.clone(), Some(ready_tx), None);
    }
    let stderr_reader = child
        .stderr
        .take()
        .map(|stderr| forward_lines(stderr, slice.id.clone(), None, Some(recent_log.clone())));
    Ok(SpawnedWorker {
        child,
        pid,
        ready,
        recent_log,
        stderr_reader,
    })
}

/// Copies a worker's output to our stderr, each line prefixed with its slice; the ready line
/// goes to `ready`.
fn forward_lines(
    stream: impl AsyncRead + Unpin + Send + 'static,
    slice: String,
    mut ready: Option<oneshot::Sender<String>>,
    recent: Option<Arc<Mutex<VecDeque<String>>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut raw = Vec::new();
        // Keep reading to the end whatever the bytes are: a closed pipe would make the
        // worker's next write fail.
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            if let Some(url) = parse_worker_ready_line(&line) {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(url.to_string());
                }
            }
            eprintln!("[{slice}] {line}");
            if let Some(Ok(mut recent)) = recent.as_ref().map(|r| r.lock()) {
                // An `error: …` line is kept past the lines of a backtrace that follows it.
                let keep_error = recent.len() == KEPT_LOG_LINES
                    && recent.front().is_some_and(|l| l.starts_with("error: "))
                    && !line.starts_with("error: ");
                if recent.len() == KEPT_LOG_LINES {
                    let at = usize::from(keep_error);
                    recent.remove(at);
                }
                recent.push_back(line);
            }
        }
    })
}

/// Stops a worker: SIGTERM (it drains its in-flight requests), then SIGKILL after `timeout`.
pub async fn terminate(child: &mut Child, pid: u32, timeout: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    if pid != 0 {
        // SAFETY: plain kill(2) on our own child's pid, which is not yet reaped.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            tracing::warn!(pid, "worker did not stop after SIGTERM; killing it");
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
}
