//! OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions`, `/v1/models`.
//! A request becomes one engine request per choice ([`openai_request`]); the answer gathers
//! them whole, or streams them as their tokens come ([`openai_stream`]).
//!
//! [`openai_request`]: super::openai_request
//! [`openai_stream`]: super::openai_stream

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use migserve_engine::{Accepted, PromptToken};

use super::openai_answer::{chat_message, echo_text, usage, AnswerSetup, Counts, Endpoint};
use super::openai_logprobs::{self as logprobs, CompletionBuilder, Echo};
use super::openai_request::{self as request, Prepared};
use super::openai_stream;
use super::resume::StreamResume;
use super::{
    openai_finish_reason, stream_headers, submit_all, timing_headers, ApiJson, AppState,
    SharedState,
};
use crate::api::error::{ApiError, OpenAiError};
use crate::api::openai::{
    ChatChoice, ChatRequest, ChatResponse, CompletionChoice, CompletionRequest, CompletionResponse,
    ModelCard, ModelList,
};
use crate::api::worker_report::WorkerReport;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A response id no other response has, whichever worker or restart made it: 96 random bits.
pub fn response_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
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

/// `GET /v1/models`.
pub async fn models(State(state): State<SharedState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: state.model_id().to_string(),
            object: "model".into(),
            created: unix_now(),
            owned_by: "migserve".into(),
            status: None,
        }],
    })
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<ApiJson<CompletionRequest>, ApiError>,
) -> Response {
    let arrived = Instant::now();
    let prepared = body.and_then(|ApiJson(req)| {
        check_model(&state, req.model.as_deref())?;
        Ok((request::completion(&req, arrived)?, req.sampling))
    });
    respond(&state, &headers, prepared, Endpoint::Completion, arrived).await
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<ApiJson<ChatRequest>, ApiError>,
) -> Response {
    let arrived = Instant::now();
    let prepared = body.and_then(|ApiJson(req)| {
        check_model(&state, req.model.as_deref())?;
        Ok((request::chat(&req, arrived)?, req.sampling))
    });
    respond(&state, &headers, prepared, Endpoint::Chat, arrived).await
}

/// Runs a prepared request's choices and answers, streamed or whole, in the endpoint's shape.
/// A stream of one choice takes part in resumption ([`crate::api::resume`]) when the front
/// asks.
async fn respond(
    state: &AppState,
    headers: &HeaderMap,
    prepared: Result<(Prepared, crate::api::openai::SamplingFields), ApiError>,
    endpoint: Endpoint,
    arrived: Instant,
) -> Response {
    let resume = StreamResume::from_headers(headers);
    let ((mut prepared, sampling), resume) = match prepared.and_then(|p| Ok((p, resume?))) {
        Ok(p) => p,
        Err(e) => return OpenAiError(e).into_response(),
    };
    let resumable = sampling.stream && prepared.choices.len() == 1 && resume.marked;
    if resumable {
        for c in &mut prepared.choices {
            resume.apply(&mut c.request);
        }
    }
    let (id, created) = resume.identity().filter(|_| resumable).unwrap_or_else(|| {
        let id = response_id(match endpoint {
            Endpoint::Completion => "cmpl",
            Endpoint::Chat => "chatcmpl",
        });
        (id, unix_now())
    });
    let Prepared {
        choices,
        logprobs,
        echo,
        tools,
    } = prepared;
    // More choices than the worker ever runs at once could never be admitted: not a 429.
    let limit = state.info.max_concurrent_requests;
    if choices.len() > limit {
        let e = ApiError::param(
            "n",
            "invalid_value",
            format!(
                "{} choices, but this worker runs at most {limit} requests at once",
                choices.len()
            ),
        );
        return OpenAiError(e).into_response();
    }
    let mut meta = Vec::with_capacity(choices.len());
    let mut requests = Vec::with_capacity(choices.len());
    for c in choices {
        meta.push((c.prompt_index, c.echo_text));
        requests.push(c.request);
    }
    let accepted = match submit_all(state, requests).await {
        Ok(a) => a,
        Err(e) => {
            return OpenAiError(ApiError::from_engine_openai(e, endpoint.prompt_field()))
                .into_response()
        }
    };
    let setup = AnswerSetup {
        id,
        created,
        model: state.model_id().to_string(),
        endpoint,
        include_usage: false,
        logprobs: logprobs.is_some(),
        echo,
        tools,
    };
    if sampling.stream {
        let include_usage = sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let chunks = openai_stream::chunks(
            AnswerSetup {
                include_usage,
                ..setup
            },
            accepted,
            meta,
            resumable,
        );
        return (
            stream_headers(state),
            Sse::new(chunks).keep_alive(KeepAlive::default()),
        )
            .into_response();
    }
    whole(state, accepted, meta, setup, arrived).await
}

/// The answer, not streamed: every choice collected, then one body.
async fn whole(
    state: &AppState,
    accepted: Vec<Accepted>,
    meta: Vec<(usize, Option<String>)>,
    setup: AnswerSetup,
    arrived: Instant,
) -> Response {
    let AnswerSetup {
        id,
        created,
        model,
        endpoint,
        logprobs: with_logprobs,
        echo,
        tools,
        ..
    } = setup;
    let prompts: Vec<Vec<PromptToken>> = accepted.iter().map(|a| a.prompt.clone()).collect();
    // The first failure answers at once; the other choices are dropped (cancelled).
    let collected =
        futures_util::future::try_join_all(accepted.into_iter().map(|a| a.events.collect())).await;
    let results = match collected {
        Ok(results) => results,
        Err(e) => return OpenAiError(ApiError::from(e)).into_response(),
    };
    let usage = usage(results.iter().zip(&meta).map(|(r, (index, _))| Counts {
        prompt_index: *index,
        prompt: r.finish.prompt_tokens,
        cached: r.finish.cached_tokens,
        generated: r.finish.generated_tokens,
    }));
    let Some(first) = results.first() else {
        return OpenAiError(ApiError::Generation("no choices".into())).into_response();
    };
    let mut headers = timing_headers(state, &first.finish, arrived);
    // The counts of the whole answer, every choice (the router's statistics read them).
    let counts = WorkerReport {
        prompt_tokens: Some(usage.prompt_tokens as u64),
        cached_tokens: Some(usage.cached_tokens() as u64),
        generated_tokens: Some(usage.completion_tokens as u64),
        ..WorkerReport::default()
    };
    counts.write_to(&mut headers);
    match endpoint {
        Endpoint::Completion => {
            let choices = results
                .iter()
                .zip(meta)
                .zip(&prompts)
                .enumerate()
                .map(|(i, ((c, (_, echo_source)), prompt))| {
                    let echo = echo.then(|| Echo {
                        text: echo_text(echo_source, prompt),
                        tokens: prompt,
                        prefill: &c.prefill,
                    });
                    let (text, lp) = CompletionBuilder::default().part(
                        echo,
                        &c.visible_text(),
                        &c.tokens,
                        with_logprobs,
                    );
                    CompletionChoice {
                        index: i as u32,
                        text,
                        logprobs: lp,
                        finish_reason: Some(openai_finish_reason(c.finish.reason).to_string()),
                    }
                })
                .collect();
            let body = CompletionResponse {
                id,
                object: "text_completion".into(),
                created,
                model,
                choices,
                usage: Some(usage),
            };
            (headers, Json(body)).into_response()
        }
        Endpoint::Chat => {
            let choices = results
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let (message, finish) =
                        chat_message(tools.as_ref(), c.visible_text(), c.finish.reason);
                    ChatChoice {
                        index: i as u32,
                        message,
                        logprobs: with_logprobs.then(|| logprobs::chat(&c.tokens)),
                        finish_reason: Some(finish),
                    }
                })
                .collect();
            let body = ChatResponse {
                id,
                object: "chat.completion".into(),
                created,
                model,
                choices,
                usage,
            };
            (headers, Json(body)).into_response()
        }
    }
}
