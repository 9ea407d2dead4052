//! Grammar masks computed beside the forward pass: the constraints of the sequences that
//! sample after a step go to a thread of their own while the engine thread runs the model.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use migserve_models::SeqId;

use super::{Constraint, TokenMask};
use crate::status::panic_message;

/// Constraints taken out of their sequences for the length of a forward pass.
pub(crate) type Pending = Vec<(SeqId, Constraint)>;

/// The constraints given back after the pass, each with its mask (or why there is none).
pub(crate) type Masked = Vec<(SeqId, Option<Constraint>, Result<TokenMask, String>)>;

/// Each constraint's mask for its next token.
pub(crate) fn masks_of(pending: Pending) -> Masked {
    pending
        .into_iter()
        .map(|(id, mut c)| {
            let mask = c.mask();
            (id, Some(c), mask)
        })
        .collect()
}

/// A thread that computes the masks of a step's constrained sequences while the engine
/// thread runs the forward pass (so rows without a grammar never wait for one), started by
/// the first step with a constraint and kept for the next ones (a step is too short to pay
/// for a new thread each time).
pub(crate) struct MaskWorker {
    jobs: mpsc::Sender<Pending>,
    done: mpsc::Receiver<Masked>,
}

impl MaskWorker {
    pub(crate) fn start() -> std::io::Result<Self> {
        let (jobs, job_rx) = mpsc::channel::<Pending>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("grammar-masks".into())
            .spawn(move || {
                while let Ok(pending) = job_rx.recv() {
                    let ids: Vec<SeqId> = pending.iter().map(|(id, _)| *id).collect();
                    let masked = catch_unwind(AssertUnwindSafe(|| masks_of(pending)))
                        // A panic in the grammar code loses these constraints (their sequences
                        // fail); the thread goes on.
                        .unwrap_or_else(|p| {
                            let why =
                                format!("the grammar panicked: {}", panic_message(p.as_ref()));
                            ids.iter().map(|id| (*id, None, Err(why.clone()))).collect()
                        });
                    if done_tx.send(masked).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self { jobs, done })
    }

    /// Runs `forward` here while the worker computes each pending constraint's mask.
    pub(crate) fn beside<R>(&self, pending: Pending, forward: impl FnOnce() -> R) -> (R, Masked) {
        let ids: Vec<SeqId> = pending.iter().map(|(id, _)| *id).collect();
        let sent = self.jobs.send(pending).is_ok();
        let result = forward();
        let masked = match sent {
            true => self.done.recv().ok(),
            false => None,
        };
        let masked = masked.unwrap_or_else(|| {
            let why = "the grammar thread is gone".to_string();
            ids.iter().map(|id| (*id, None, Err(why.clone()))).collect()
        });
        (result, masked)
    }
}

/// Runs `forward` with the `pending` constraints' masks computed beside it on `worker` (started
/// here if there is none yet; the masks are computed before the pass if no thread can be
/// started); gives back the worker to keep for the next steps.
pub(crate) fn forward_beside<R>(
    worker: Option<MaskWorker>,
    pending: Pending,
    forward: impl FnOnce() -> R,
) -> (R, Masked, Option<MaskWorker>) {
    if pending.is_empty() {
        return (forward(), Vec::new(), worker);
    }
    let worker = match worker.map_or_else(MaskWorker::start, Ok) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "no thread for grammar masks");
            let masked = masks_of(pending);
            return (forward(), masked, None);
        }
    };
    let (result, masked) = worker.beside(pending, forward);
    (result, masked, Some(worker))
}
