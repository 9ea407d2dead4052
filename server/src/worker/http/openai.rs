//! OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions`, `/v1/models`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use migserve_engine::{EngineEvent, EventStream, GenerateRequest, Prompt, SamplingSpec};
use migserve_models::ChatMessage;

use super::tgi::json_event;
use super::{
    collect, openai_finish_reason, stream_headers, submit, timing_headers, ApiJson, AppState,
    SharedState,
};
use crate::api::error::{ApiError, OpenAiError};
use crate::api::openai::{
    ChatChoice, ChatChunk, ChatRequest, ChunkChoice, CompletionChoice, CompletionRequest,
    CompletionResponse, Delta, MessageContent, ModelCard, ModelList, ResponseMessage,
    SamplingFields, Usage,
};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if !m.is_empty() && m != state.model_id() => Err(ApiError::NotFound(format!(
            "model `{m}` is not served here (this worker serves `{}`)",
            state.model_id()
        ))),
        _ => Ok(()),
    }
}

/// An OpenAI request's fields as an engine request for `prompt`: checks what only OpenAI
/// has, maps the rest (OpenAI's temperature defaults to 1; 0 is greedy).
fn engine_request(
    prompt: Prompt,
    s: &SamplingFields,
    arrived: Instant,
) -> Result<GenerateRequest, ApiError> {
    if s.n.is_some_and(|n| n != 1) {
        return Err(ApiError::Validation("only `n` = 1 is supported".into()));
    }
    if s.frequency_penalty.is_some_and(|f| f != 0.0) || s.presence_penalty.is_some_and(|p| p != 0.0)
    {
        return Err(ApiError::Validation(
            "`frequency_penalty` and `presence_penalty` are not supported; use `repetition_penalty`".into(),
        ));
    }
    let temperature = s.temperature.unwrap_or(1.0);
    Ok(GenerateRequest {
        max_new_tokens: s.max_completion_tokens.or(s.max_tokens),
        sampling: SamplingSpec {
            sample: temperature > 0.0,
            temperature: Some(temperature),
            top_k: s.top_k,
            top_p: s.top_p,
            repetition_penalty: s.repetition_penalty,
            seed: s.seed,
        },
        stop: s.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
        ignore_eos: s.ignore_eos,
        arrived,
        ..GenerateRequest::new(prompt)
    })
}

/// `GET /v1/models`.
pub async fn models(State(state): State<SharedState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: state.model_id().to_string(),
            object: "model".into(),
            created: unix_now(),
            owned_by: "migserve".into(),
        }],
    })
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<SharedState>,
    body: Result<ApiJson<CompletionRequest>, ApiError>,
) -> Response {
    let arrived = Instant::now();
    let prepared = body.and_then(|ApiJson(req)| {
        check_model(&state, req.model.as_deref())?;
        let prompts = req.prompt.clone().map(|p| p.into_vec()).unwrap_or_default();
        let prompt = match prompts.as_slice() {
            [one] if !one.is_empty() => one.clone(),
            [] | [_] => return Err(ApiError::Validation("`prompt` cannot be empty".into())),
            _ => {
                return Err(ApiError::Validation(
                    "only one prompt per request is supported".into(),
                ))
            }
        };
        let request = engine_request(Prompt::Text(prompt.clone()), &req.sampling, arrived)?;
        let kind = Kind::Completion {
            echo: req.echo.then_some(prompt),
        };
        Ok((request, req.sampling, kind))
    });
    respond(&state, prepared, arrived).await
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<SharedState>,
    body: Result<ApiJson<ChatRequest>, ApiError>,
) -> Response {
    let arrived = Instant::now();
    let prepared = body.and_then(|ApiJson(req)| {
        check_model(&state, req.model.as_deref())?;
        let request = chat_request(&req, arrived)?;
        Ok((request, req.sampling, Kind::Chat))
    });
    respond(&state, prepared, arrived).await
}

/// Which OpenAI endpoint a response is for.
enum Kind {
    /// `/v1/completions`; `echo` holds the prompt when it is to be repeated.
    Completion { echo: Option<String> },
    /// `/v1/chat/completions`.
    Chat,
}

/// Runs a prepared request and answers it, streamed or whole, in the endpoint's shape.
async fn respond(
    state: &AppState,
    prepared: Result<(GenerateRequest, SamplingFields, Kind), ApiError>,
    arrived: Instant,
) -> Response {
    let (request, sampling, kind) = match prepared {
        Ok(p) => p,
        Err(e) => return OpenAiError(e).into_response(),
    };
    let prefix = match kind {
        Kind::Completion { .. } => "cmpl",
        Kind::Chat => "chatcmpl",
    };
    let id = format!("{prefix}-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let model = state.model_id().to_string();
    let accepted = match submit(state, request).await {
        Ok(accepted) => accepted,
        Err(e) => return OpenAiError(e).into_response(),
    };
    if sampling.stream {
        let include_usage = sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let chat = matches!(kind, Kind::Chat);
        let chunks = openai_stream(ChunkState::new(
            accepted.events,
            id,
            model,
            include_usage,
            chat,
        ));
        return (
            stream_headers(state),
            Sse::new(chunks).keep_alive(KeepAlive::default()),
        )
            .into_response();
    }
    let c = match collect(accepted).await {
        Ok(c) => c,
        Err(e) => return OpenAiError(e).into_response(),
    };
    let text = c.visible_text();
    let finish_reason = Some(openai_finish_reason(c.finish.reason).to_string());
    let usage = Usage::new(c.finish.prompt_tokens, c.finish.generated_tokens);
    let headers = timing_headers(state, &c.finish, arrived);
    match kind {
        Kind::Completion { echo } => {
            let text = match echo {
                Some(prompt) => prompt + &text,
                None => text,
            };
            let body = CompletionResponse {
                id,
                object: "text_completion".into(),
                created: unix_now(),
                model,
                choices: vec![CompletionChoice {
                    index: 0,
                    text,
                    logprobs: None,
                    finish_reason,
                }],
                usage: Some(usage),
            };
            (headers, Json(body)).into_response()
        }
        Kind::Chat => {
            let body = crate::api::openai::ChatResponse {
                id,
                object: "chat.completion".into(),
                created: unix_now(),
                model,
                choices: vec![ChatChoice {
                    index: 0,
                    message: ResponseMessage {
                        role: "assistant".into(),
                        content: text,
                    },
                    logprobs: None,
                    finish_reason,
                }],
                usage,
            };
            (headers, Json(body)).into_response()
        }
    }
}

fn chat_request(req: &ChatRequest, arrived: Instant) -> Result<GenerateRequest, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::Validation("`messages` cannot be empty".into()));
    }
    let messages: Vec<ChatMessage> = req
        .messages
        .iter()
        .map(|m| {
            let content = match &m.content {
                None => String::new(),
                Some(MessageContent::Text(t)) => t.clone(),
                Some(MessageContent::Parts(parts)) => parts
                    .iter()
                    .filter(|p| p.kind == "text")
                    .filter_map(|p| p.text.as_deref())
                    .collect::<Vec<_>>()
                    .join(""),
            };
            ChatMessage::new(m.role.clone(), content)
        })
        .collect();
    engine_request(Prompt::Chat(messages), &req.sampling, arrived)
}

struct ChunkState {
    events: EventStream,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Chat chunks (`delta`) rather than completion chunks (`text`).
    chat: bool,
    /// Events still to send after the current one (usage chunk, `[DONE]`), last first.
    tail: Vec<Event>,
    started: bool,
    done: bool,
}

impl ChunkState {
    fn new(
        events: EventStream,
        id: String,
        model: String,
        include_usage: bool,
        chat: bool,
    ) -> Self {
        Self {
            events,
            id,
            model,
            created: unix_now(),
            include_usage,
            chat,
            tail: Vec::new(),
            started: false,
            done: false,
        }
    }

    /// A chunk carrying `text` (and the finish reason on the last one).
    fn text_chunk(&self, text: String, reason: Option<&'static str>, first: bool) -> Event {
        let finish_reason = reason.map(Into::into);
        if self.chat {
            let delta = Delta {
                role: first.then(|| "assistant".to_string()),
                content: Some(text),
            };
            let choice = ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            };
            self.chat_chunk(vec![choice], None)
        } else {
            let choice = CompletionChoice {
                index: 0,
                text,
                logprobs: None,
                finish_reason,
            };
            self.completion_chunk(vec![choice], None)
        }
    }

    /// The trailing chunk with token counts and no choices.
    fn usage_chunk(&self, usage: Usage) -> Event {
        if self.chat {
            self.chat_chunk(Vec::new(), Some(usage))
        } else {
            self.completion_chunk(Vec::new(), Some(usage))
        }
    }

    fn chat_chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Event {
        json_event(&ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }

    fn completion_chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Event {
        json_event(&CompletionResponse {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }
}

/// An OpenAI error event, counted.
fn error_event(e: ApiError) -> Event {
    crate::metrics::count_error(e.error_type());
    json_event(&e.openai_body())
}

/// An OpenAI stream: one chunk per token (text that could start a stop sequence waits for the
/// next one), then the usage chunk (when asked), then `[DONE]`.
fn openai_stream(init: ChunkState) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(init, |mut st| async move {
        if let Some(event) = st.tail.pop() {
            return Some((Ok(event), st));
        }
        if st.done {
            return None;
        }
        let event = loop {
            match st.events.next().await {
                Some(EngineEvent::Token(t, finish)) => {
                    // The engine holds back text that could start a stop sequence.
                    let text = t.visible;
                    let first = !st.started;
                    if text.is_empty() && !first && finish.is_none() {
                        continue; // all of it held back: nothing to send yet
                    }
                    st.started = true;
                    let reason = finish.as_ref().map(|f| openai_finish_reason(f.reason));
                    if let Some(f) = &finish {
                        st.done = true;
                        st.tail.push(Event::default().data("[DONE]"));
                        if st.include_usage {
                            let u = st.usage_chunk(Usage::new(f.prompt_tokens, f.generated_tokens));
                            st.tail.push(u);
                        }
                    }
                    break st.text_chunk(text, reason, first);
                }
                Some(EngineEvent::Failed(e)) => {
                    st.done = true;
                    st.tail.push(Event::default().data("[DONE]"));
                    break error_event(ApiError::from(e));
                }
                // After the final event (`done` is set then).
                None => return None,
            }
        };
        Some((Ok(event), st))
    })
}
