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

use super::openai_answer::{chat_finish_reason, echo_text, usage, AnswerSetup, Counts, Endpoint};
use super::openai_finish_reason;
use super::openai_logprobs::{self as logprobs, CompletionBuilder, Echo};
use super::resume::Marker;
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
}

type Tagged = Pin<Box<dyn Stream<Item = (usize, EngineEvent)> + Send>>;

struct State {
    setup: AnswerSetup,
    /// Marks for the front ([`crate::api::resume`]; only streams of one choice are marked).
    marks: Marker,
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
    let accepted_seed = accepted.first().and_then(|a| a.seed);
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
        });
        streams.push(tagged(i, a.events));
    }
    let opening = Mark {
        seed: accepted_seed,
        id: Some(setup.id.clone()),
        created: Some(setup.created),
        ..Mark::default()
    };
    let init = State {
        marks: Marker::new(marked, opening),
        setup,
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
                    st.marks.forget();
                }
                EngineEvent::Token(t, finish) => {
                    if let Some(chunk) = st.token(i, t, finish.as_ref()) {
                        break st.marks.token_event(chunk, finish.is_some());
                    }
                }
                EngineEvent::Failed(e) => {
                    st.over = true;
                    st.tail.push(Event::default().data("[DONE]"));
                    let error = ApiError::from(e.clone());
                    crate::metrics::count_error(error.error_type());
                    break st.marks.failure_event(json_event(&error.openai_body()), &e);
                }
            }
        };
        Some((Ok(event), st))
    })
}

impl State {
    /// The chunk for a token of choice `i`, or `None` while all its text is held back.
    fn token(
        &mut self,
        i: usize,
        t: TokenEvent,
        finish: Option<&migserve_engine::FinishEvent>,
    ) -> Option<Event> {
        self.marks.read(t.id);
        let (logprobs_on, endpoint, echo) =
            (self.setup.logprobs, self.setup.endpoint, self.setup.echo);
        let c = &mut self.choices[i];
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
