//! Relaying a worker's stream to the client, event by event, and continuing it on another
//! slice when the worker dies mid-stream or its engine fails the request
//! ([`crate::api::resume`]): the events relayed so far are the worker's marks' tokens; the
//! next worker gets them with the seed and the answer's id, and its events follow on. Only
//! when no slice can take the rest does the client get an error event.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use futures_util::stream::StreamExt;
use tokio::sync::mpsc;

use super::attempt::{try_slice, Attempt, Outgoing, Serving, Upstream};
use super::backend::Backend;
use super::cost::CostSample;
use super::sse::{unmark, EventSplitter};
use super::token_count::TokenCounter;
use super::{Pick, Placing, SharedFront};
use crate::api::error::ApiError;
use crate::api::resume::Resume;
use crate::api::Api;

/// The request a stream answers, to send again to the slice that continues it.
pub struct Origin {
    pub api: Api,
    pub path: &'static str,
    pub body: Bytes,
    pub model: String,
    pub placing: Placing,
    /// Slices that have failed it (or are serving it).
    pub tried: Vec<Arc<Backend>>,
    pub sent: Instant,
}

/// What the client has been sent, from the marks.
#[derive(Debug, Default)]
struct Progress {
    /// The worker marks its events: the stream can continue elsewhere.
    marked: bool,
    tokens: Vec<u32>,
    seed: Option<u64>,
    id: Option<String>,
    created: Option<u64>,
    /// The answer is complete (its finish event went out).
    end: bool,
    /// OpenAI's `[DONE]` went out.
    done: bool,
}

/// Why a worker's stream stopped before the answer was complete.
enum Broke {
    /// The connection failed or closed: the worker is suspect.
    Transport(String),
    /// The worker reported a failure of its own (its engine failed the request): its error
    /// event, relayed if no slice can go on.
    Reported(Vec<u8>),
}

/// A stream being relayed to the client.
pub struct StreamRelay {
    pub origin: Origin,
    pub serving: Serving,
    pub counter: TokenCounter,
    pub first_at: Instant,
    front: SharedFront,
}

impl StreamRelay {
    pub fn new(front: SharedFront, origin: Origin, serving: Serving) -> Self {
        Self {
            counter: TokenCounter::new(origin.api),
            origin,
            serving,
            first_at: Instant::now(),
            front,
        }
    }

    /// The client's body: `head` (what was read before committing), then the rest of
    /// `upstream`, then whatever continuations it takes.
    pub fn into_body(self, head: Bytes, upstream: Upstream) -> Body {
        // A small buffer: a slow client slows the relay, and through it the worker's stream.
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
        tokio::spawn(self.run(head, upstream, tx));
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    async fn run(
        mut self,
        head: Bytes,
        mut upstream: Upstream,
        tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) {
        let mut progress = Progress::default();
        let mut first = Some(head);
        loop {
            let broke = match self
                .relay(&mut first, &mut upstream, &mut progress, &tx)
                .await
            {
                Ok(None) => {
                    self.finish();
                    return;
                }
                Ok(Some(broke)) => broke,
                // The client went away: dropping the upstream cancels the worker's request.
                Err(ClientGone) => return,
            };
            let backend = self.serving.backend.clone();
            backend.stats.record_error();
            if let Broke::Transport(why) = &broke {
                tracing::warn!(slice = %backend.id, %why, "worker stream broke; slice taken out of rotation");
                backend.suspend(self.front.suspend_grace, self.serving.generation);
            }
            if progress.end {
                // Complete but for the closing lines: `[DONE]` is the router's to add.
                if self.origin.api == Api::OpenAi && !progress.done {
                    let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
                }
                self.finish();
                return;
            }
            let resumed = match progress.marked {
                true => self.resume(&progress).await,
                false => None,
            };
            match resumed {
                Some((serving, head, next)) => {
                    tracing::info!(
                        from = %backend.id,
                        to = %serving.backend.id,
                        tokens = progress.tokens.len(),
                        "stream continued on another slice"
                    );
                    backend.stats.record_resume();
                    self.serving = serving;
                    first = Some(head);
                    upstream = next;
                }
                None => {
                    let last = match broke {
                        Broke::Transport(why) => self.error_event(&backend.id, &why),
                        // The worker's own words; OpenAI clients also get `[DONE]`.
                        Broke::Reported(mut event) => {
                            if self.origin.api == Api::OpenAi {
                                event.extend_from_slice(b"data: [DONE]\n\n");
                            }
                            Bytes::from(event)
                        }
                    };
                    let _ = tx.send(Ok(last)).await;
                    return;
                }
            }
        }
    }

    /// Relays one worker's stream: `Ok(None)` when it ended with the answer complete (or
    /// unmarked, as a worker ends it), `Ok(Some(_))` when it broke first.
    async fn relay(
        &mut self,
        first: &mut Option<Bytes>,
        upstream: &mut Upstream,
        progress: &mut Progress,
        tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Result<Option<Broke>, ClientGone> {
        let mut split = EventSplitter::default();
        loop {
            let next = match first.take() {
                Some(head) => Some(Ok(head)),
                // A client that goes away cancels the worker's request at once, not at the
                // next event.
                None => tokio::select! {
                    next = upstream.next() => next,
                    _ = tx.closed() => return Err(ClientGone),
                },
            };
            let chunk = match next {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return Ok(Some(Broke::Transport(e.to_string()))),
                None if progress.end || !progress.marked => return Ok(None),
                None => {
                    let why = "the stream ended before the answer did".to_string();
                    return Ok(Some(Broke::Transport(why)));
                }
            };
            for event in split.push(&chunk) {
                let u = unmark(&event);
                if let Some(mark) = u.mark {
                    progress.marked = true;
                    if mark.retry {
                        // Not relayed: the answer goes on elsewhere if it can.
                        return Ok(Some(Broke::Reported(u.event)));
                    }
                    progress.tokens.extend(mark.tokens);
                    progress.seed = progress.seed.or(mark.seed);
                    progress.id = progress.id.take().or(mark.id);
                    progress.created = progress.created.or(mark.created);
                    progress.end |= mark.end;
                }
                progress.done |= u.done;
                if u.event.is_empty() {
                    continue;
                }
                self.counter.event(&u.event);
                if tx.send(Ok(Bytes::from(u.event))).await.is_err() {
                    return Err(ClientGone);
                }
            }
        }
    }

    /// Sends the request with its progress to another slice; the first that answers with a
    /// stream serves the rest: the slice, the stream's first event and the stream after it.
    async fn resume(&mut self, progress: &Progress) -> Option<(Serving, Bytes, Upstream)> {
        let point = Resume {
            tokens: progress.tokens.clone(),
            seed: progress.seed,
            id: progress.id.clone(),
            created: progress.created,
        };
        let point = serde_json::to_string(&point).ok()?;
        let o = &mut self.origin;
        let body = o.body.clone();
        let out = Outgoing {
            api: o.api,
            path: o.path,
            body: &body,
            resume: Some(&point),
            arrived: o.sent,
        };
        for _ in 0..=self.front.settings.max_retries {
            // Admitted already: the slices' queue limits do not refuse it (their workers may).
            let picked = self
                .front
                .pick_within(&o.model, &o.placing, &o.tried, usize::MAX);
            let (backend, guard) = match picked {
                Pick::Chosen(backend, guard) => (backend, guard),
                Pick::AllFull | Pick::NoneHealthy => return None,
            };
            o.tried.push(backend.clone());
            let Some((url, generation)) = backend.route() else {
                continue;
            };
            let slice = backend.id.clone();
            let serving = Serving {
                backend,
                guard,
                generation,
            };
            match try_slice(&self.front, &out, &url, serving).await {
                Attempt::Stream {
                    head_event,
                    rest,
                    serving,
                    ..
                } => return Some((serving, head_event, rest)),
                Attempt::Whole(head, _) => {
                    tracing::warn!(%slice, status = %head.status, "slice refused to continue a stream");
                }
                Attempt::Failed(_) => {}
            }
        }
        None
    }

    fn finish(&self) {
        let ttft = self.first_at.duration_since(self.origin.sent).as_secs_f64();
        let tokens = self.counter.tokens();
        let tpot =
            (tokens > 1).then(|| self.first_at.elapsed().as_secs_f64() / (tokens - 1) as f64);
        // Seen from outside, the first token's wait includes the worker's queue.
        let guard = &self.serving.guard;
        let cost = CostSample {
            prefill: Some((ttft, guard.prefill_tokens())),
            decode: tpot.map(|t| (t, guard.mean_batch())),
        };
        guard.stats().record_success(Some(ttft), tpot, tokens, cost);
    }

    /// The event that ends a stream no slice could finish, in the endpoint's shape.
    fn error_event(&self, slice: &str, cause: &str) -> Bytes {
        let message = format!("the worker on slice {slice} stopped mid-stream: {cause}");
        let error = ApiError::Generation(message);
        // As a worker ends a failed stream: OpenAI clients also get `[DONE]`.
        let event =
            |body: serde_json::Result<String>| format!("data: {}\n\n", body.unwrap_or_default());
        Bytes::from(match self.origin.api {
            Api::Tgi => event(serde_json::to_string(&error.tgi_body())),
            Api::OpenAi => event(serde_json::to_string(&error.openai_body())) + "data: [DONE]\n\n",
        })
    }
}

/// The client closed its connection.
struct ClientGone;
