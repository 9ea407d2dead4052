//! OpenAI streams: the events of every choice of a request merged as they come, one chunk
//! per token (text that could start a stop sequence waits for the next token, and so do its
//! log-probabilities), each chunk naming its choice; when every choice has finished, the
//! usage chunk (when asked) and `[DONE]`.

use std::convert::Infallible;
use std::pin::Pin;

use axum::response::sse::Event;
use futures_util::stream::{self, select_all, SelectAll, Stream, StreamExt};
use migserve_engine::{
    Accepted, EngineEvent, EventStream, PrefillLogprob, PromptToken, TokenEvent,
};

use super::openai::{chat_finish_reason, echo_text, usage, AnswerSetup, Counts, Endpoint};
use super::openai_finish_reason;
use super::openai_logprobs::{self as logprobs, CompletionBuilder, Echo};
use super::resume::{marked as with_mark, worker_fault};
use super::tgi::json_event;
use super::tools::ToolStream;
use crate::api::error::ApiError;
use crate::api::openai::{
    ChatChunk, ChunkChoice, CompletionChoice, CompletionResponse, Delta, Usage,
};
use crate::api::resume::Mark;
use crate::api::structured::ToolCallDelta;

/// One choice's progress.
struct ChoiceState {
    prompt_index: usize,
    echo_source: Option<String>,
    prompt: Vec<PromptToken>,
    prefill: Vec<PrefillLogprob>,
    /// Tokens whose text has not been sent yet (held back), for their log-probabilities.
    pending: Vec<TokenEvent>,
    builder: CompletionBuilder,
    started: bool,
    done: bool,
    prompt_tokens: usize,
    cached_tokens: usize,
    generated_tokens: usize,
    /// Chat with tools: text that may be a call is held back until the end.
    tool_stream: Option<ToolStream>,
    /// Tokens read since the last chunk went out (a marked stream's next mark).
    unmarked: Vec<u32>,
    /// The seed it samples with.
    seed: Option<u64>,
}

type Tagged = Pin<Box<dyn Stream<Item = (usize, EngineEvent)> + Send>>;

struct State {
    setup: AnswerSetup,
    /// Each chunk carries a mark for the front ([`crate::api::resume`]); the first also the
    /// seed and the answer's identity, until `introduced`.
    marked: bool,
    introduced: bool,
    events: SelectAll<Tagged>,
    choices: Vec<ChoiceState>,
    /// Events still to send after the current one (usage chunk, `[DONE]`), last first.
    tail: Vec<Event>,
    over: bool,
}

fn tagged(index: usize, events: EventStream) -> Tagged {
    Box::pin(stream::unfold(events, move |mut e| async move {
        e.next().await.map(|ev| ((index, ev), e))
    }))
}

/// The stream of chunks for `accepted` (one per choice, `meta` their prompt index and echo
/// text); `marked`: each chunk marked for the front (streams of one choice).
pub fn chunks(
    setup: AnswerSetup,
    accepted: Vec<Accepted>,
    meta: Vec<(usize, Option<String>)>,
    marked: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut choices = Vec::with_capacity(accepted.len());
    let mut streams = Vec::with_capacity(accepted.len());
    for (i, (a, (prompt_index, echo_source))) in accepted.into_iter().zip(meta).enumerate() {
        choices.push(ChoiceState {
            prompt_index,
            echo_source,
            prompt: a.prompt,
            prefill: Vec::new(),
            pending: Vec::new(),
            builder: CompletionBuilder::default(),
            started: false,
            done: false,
            prompt_tokens: a.prompt_tokens,
            cached_tokens: 0,
            generated_tokens: 0,
            tool_stream: setup.tools.as_ref().map(ToolStream::new),
            unmarked: Vec::new(),
            seed: a.seed,
        });
        streams.push(tagged(i, a.events));
    }
    let init = State {
        setup,
        marked,
        introduced: false,
        events: select_all(streams),
        choices,
        tail: Vec::new(),
        over: false,
    };
    stream::unfold(init, |mut st| async move {
        if let Some(event) = st.tail.pop() {
            return Some((Ok(event), st));
        }
        if st.over {
            return None;
        }
        let event = loop {
            let (i, event) = st.events.next().await?;
            match event {
                EngineEvent::Prefill(p) => st.choices[i].prefill = p,
                // Sent by the worker that began the answer: read as this one would have,
                // so what follows continues it; nothing goes out.
                EngineEvent::Resumed(earlier) => {
                    for t in earlier {
                        let _ = st.token(i, t, None);
                    }
                    st.choices[i].unmarked.clear();
                }
                EngineEvent::Token(t, finish) => {
                    if let Some(chunk) = st.token(i, t, finish.as_ref()) {
                        break st.mark(i, chunk, finish.is_some());
                    }
                }
                EngineEvent::Failed(e) => {
                    st.over = true;
                    st.tail.push(Event::default().data("[DONE]"));
                    let retry = worker_fault(&e);
                    let e = ApiError::from(e);
                    crate::metrics::count_error(e.error_type());
                    let event = json_event(&e.openai_body());
                    break match st.marked {
                        true => with_mark(
                            event,
                            &Mark {
                                retry,
                                ..Mark::default()
                            },
                        ),
                        false => event,
                    };
                }
            }
        };
        Some((Ok(event), st))
    })
}

impl State {
    /// `chunk` of choice `i` with its mark, when the stream is marked.
    fn mark(&mut self, i: usize, chunk: Event, end: bool) -> Event {
        if !self.marked {
            return chunk;
        }
        let c = &mut self.choices[i];
        let mut mark = Mark {
            tokens: std::mem::take(&mut c.unmarked),
            end,
            ..Mark::default()
        };
        if !self.introduced {
            self.introduced = true;
            mark.seed = c.seed;
            mark.id = Some(self.setup.id.clone());
            mark.created = Some(self.setup.created);
        }
        with_mark(chunk, &mark)
    }

    /// The chunk for a token of choice `i`, or `None` while all its text is held back.
    fn token(
        &mut self,
        i: usize,
        t: TokenEvent,
        finish: Option<&migserve_engine::FinishEvent>,
    ) -> Option<Event> {
        let (logprobs_on, endpoint, echo) =
            (self.setup.logprobs, self.setup.endpoint, self.setup.echo);
        let c = &mut self.choices[i];
        c.unmarked.push(t.id);
        let mut text = match c.tool_stream.as_mut() {
            Some(held) => held.push(&t.visible),
            None => t.visible.clone(),
        };
        let first = !c.started;
        if logprobs_on {
            c.pending.push(t);
        }
        if text.is_empty() && !first && finish.is_none() {
            return None;
        }
        c.started = true;
        let mut reason = finish.map(|f| openai_finish_reason(f.reason).to_string());
        // At the end, the held text: calls, and text around them.
        let mut calls = Vec::new();
        if let (Some(f), Some(held), Some(plan)) =
            (finish, c.tool_stream.as_mut(), self.setup.tools.as_ref())
        {
            let (rest, found) = held.finish(plan);
            if let Some(rest) = rest {
                text.push_str(&rest);
            }
            reason = Some(chat_finish_reason(f.reason, !found.is_empty()).to_string());
            calls = found;
        }
        if let Some(f) = finish {
            c.done = true;
            c.generated_tokens = f.generated_tokens;
            c.prompt_tokens = f.prompt_tokens;
            c.cached_tokens = f.cached_tokens;
        }
        let pending = std::mem::take(&mut c.pending);
        // Calls go in a chunk of their own, before the one that finishes the choice.
        let mut finish_chunk = None;
        let chunk = match endpoint {
            Endpoint::Chat => {
                let deltas: Vec<ToolCallDelta> = calls
                    .into_iter()
                    .enumerate()
                    .map(|(index, call)| ToolCallDelta {
                        index: index as u32,
                        call,
                    })
                    .collect();
                let has_calls = !deltas.is_empty();
                let choice = ChunkChoice {
                    index: i as u32,
                    delta: Delta {
                        role: first.then(|| "assistant".to_string()),
                        content: (!has_calls || !text.is_empty()).then_some(text),
                        tool_calls: has_calls.then_some(deltas),
                    },
                    logprobs: logprobs_on.then(|| logprobs::chat(&pending)),
                    finish_reason: match has_calls {
                        true => None,
                        false => reason.clone(),
                    },
                };
                if has_calls {
                    let last = ChunkChoice {
                        index: i as u32,
                        delta: Delta::default(),
                        logprobs: None,
                        finish_reason: reason,
                    };
                    finish_chunk = Some(self.chat_chunk(vec![last], None));
                }
                self.chat_chunk(vec![choice], None)
            }
            Endpoint::Completion => {
                let echo = (first && echo).then(|| Echo {
                    text: echo_text(c.echo_source.take(), &c.prompt),
                    tokens: &c.prompt,
                    prefill: &c.prefill,
                });
                let (shown, lp) = c.builder.part(echo, &text, &pending, logprobs_on);
                let choice = CompletionChoice {
                    index: i as u32,
                    text: shown,
                    logprobs: lp,
                    finish_reason: reason,
                };
                self.completion_chunk(vec![choice], None)
            }
        };
        if self.choices.iter().all(|c| c.done) {
            self.over = true;
            self.tail.push(Event::default().data("[DONE]"));
            if self.setup.include_usage {
                let usage = usage(self.choices.iter().map(|c| Counts {
                    prompt_index: c.prompt_index,
                    prompt: c.prompt_tokens,
                    cached: c.cached_tokens,
                    generated: c.generated_tokens,
                }));
                let u = match endpoint {
                    Endpoint::Chat => self.chat_chunk(Vec::new(), Some(usage)),
                    Endpoint::Completion => self.completion_chunk(Vec::new(), Some(usage)),
                };
                self.tail.push(u);
            }
        }
        // The tail is sent last first: this goes out right after `chunk`.
        self.tail.extend(finish_chunk);
        Some(chunk)
    }

    fn chat_chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Event {
        json_event(&ChatChunk {
            id: self.setup.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.setup.created,
            model: self.setup.model.clone(),
            choices,
            usage,
        })
    }

    fn completion_chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Event {
        json_event(&CompletionResponse {
            id: self.setup.id.clone(),
            object: "text_completion".into(),
            created: self.setup.created,
            model: self.setup.model.clone(),
            choices,
            usage,
        })
    }
}
