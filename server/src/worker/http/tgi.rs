//! TGI routes: `/generate`, `/generate_stream`, and `/` (either, by `stream`).

use std::convert::Infallible;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};

use migserve_engine::event::Collected;
use migserve_engine::{
    EngineEvent, EventStream, GenerateRequest as EngineRequest, LogprobsSpec, Prompt, PromptToken,
    SamplingSpec, TokenEvent, TokenLogprob,
};

use super::resume::{Marker, StreamResume};
use super::structured;
use super::{
    collect, stream_headers, submit, tgi_finish_reason, timing_headers, ApiJson, AppState,
    SharedState,
};
use crate::api::error::ApiError;
use crate::api::resume::Mark;
use crate::api::tgi::{
    BestOfSequence, Details, GenerateRequest, GenerateResponse, PrefillToken, SequenceDetails,
    StreamDetails, StreamResponse, Token,
};

/// Most samples of `best_of` (`/info`'s `max_best_of`).
pub const MAX_BEST_OF: usize = 4;

/// Most `top_n_tokens` (TGI's default `--max-top-n-tokens`).
pub const MAX_TOP_N_TOKENS: u32 = 5;

/// A TGI request as an engine request: checks what only TGI has (with TGI's messages), maps
/// the rest.
fn engine_request(
    req: &GenerateRequest,
    arrived: Instant,
    streaming: bool,
) -> Result<EngineRequest, ApiError> {
    let inputs = req
        .inputs
        .as_deref()
        .ok_or_else(|| ApiError::Validation("missing field `inputs`".into()))?;
    if inputs.is_empty() {
        return Err(ApiError::Validation("`inputs` cannot be empty".into()));
    }
    let p = &req.parameters;
    // Sampling is on when asked for, or when any sampling field is away from neutral.
    let sample = p.do_sample
        || p.temperature
            .is_some_and(|t| (t - 1.0).abs() > f32::EPSILON)
        || p.top_k.is_some()
        || p.top_p.is_some_and(|t| t < 1.0);
    if let Some(b) = p.best_of {
        // TGI's rules and words.
        if b == 0 || b > MAX_BEST_OF {
            return Err(ApiError::Validation(format!(
                "`best_of` must be > 0 and <= {MAX_BEST_OF}. Given: {b}"
            )));
        }
        if b > 1 {
            if !sample {
                return Err(ApiError::Validation(
                    "you must use sampling when `best_of` is > 1".into(),
                ));
            }
            if p.seed.is_some() {
                return Err(ApiError::Validation(
                    "`seed` must not be set when `best_of` > 1".into(),
                ));
            }
            if streaming {
                return Err(ApiError::Validation(
                    "`best_of` != 1 is not allowed for this endpoint".into(),
                ));
            }
        }
    }
    if let Some(n) = p.top_n_tokens.filter(|n| *n > MAX_TOP_N_TOKENS) {
        return Err(ApiError::Validation(format!(
            "`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}. Given: {n}"
        )));
    }
    if p.typical_p.is_some_and(|t| t < 1.0) || p.watermark {
        return Err(ApiError::Validation(
            "`typical_p` and `watermark` are not supported".into(),
        ));
    }
    if let Some(f) = p.frequency_penalty {
        if !(-2.0..=2.0).contains(&f) {
            return Err(ApiError::Validation(format!(
                "`frequency_penalty` must be >= -2.0 and <= 2.0. Given: {f}"
            )));
        }
    }
    if streaming && p.decoder_input_details {
        return Err(ApiError::Validation(
            "`decoder_input_details` == true is not supported when streaming tokens".into(),
        ));
    }
    // TGI's own rule: a temperature, when given, is strictly positive (0 is not greedy there).
    if let Some(t) = p.temperature {
        if !(t.is_finite() && t > 0.0) {
            return Err(ApiError::Validation(format!(
                "`temperature` must be strictly positive, got {t}"
            )));
        }
    }
    let grammar = p.grammar.as_ref().map(structured::tgi).transpose()?;
    let prefill_details = p.details && p.decoder_input_details;
    Ok(EngineRequest {
        prompt: Prompt::Text(inputs.to_string()),
        truncate: p.truncate,
        max_new_tokens: p.max_new_tokens,
        min_new_tokens: None,
        sampling: SamplingSpec {
            sample,
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            repetition_penalty: p.repetition_penalty,
            presence_penalty: None,
            frequency_penalty: p.frequency_penalty,
            logit_bias: Vec::new(),
            seed: p.seed,
        },
        stop: p.stop.clone(),
        ignore_eos: p.ignore_eos,
        logprobs: LogprobsSpec {
            top: p.top_n_tokens.unwrap_or(0) as usize,
            prompt: prefill_details,
        },
        return_prompt_tokens: prefill_details,
        grammar,
        resume: Vec::new(),
        arrived,
    })
}

/// TGI's token of a generated one.
fn generated_token(t: &TokenEvent) -> Token {
    Token {
        id: t.id,
        text: t.text.clone(),
        logprob: Some(t.logprob),
        special: t.special,
    }
}

/// TGI's token of an alternative.
fn tgi_token(t: &TokenLogprob) -> Token {
    Token {
        id: t.id,
        text: t.text.clone(),
        logprob: Some(t.logprob),
        special: t.special,
    }
}

/// `POST /generate`.
pub async fn generate(
    State(state): State<SharedState>,
    body: Result<ApiJson<GenerateRequest>, ApiError>,
) -> Response {
    match generate_inner(&state, body).await {
        Ok((headers, response)) => (headers, Json(response)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn generate_inner(
    state: &AppState,
    body: Result<ApiJson<GenerateRequest>, ApiError>,
) -> Result<(axum::http::HeaderMap, GenerateResponse), ApiError> {
    let arrived = Instant::now();
    let ApiJson(req) = body?;
    let request = engine_request(&req, arrived, false)?;
    let best_of = req.parameters.best_of.unwrap_or(1).max(1);
    // `best_of` samples: each with its own seed (consecutive from a random one, so each is
    // reproducible alone); the one with the highest sum of log-probabilities is the answer.
    let requests = match best_of {
        1 => vec![request],
        n => {
            let base = rand::random::<u64>() >> 1;
            (0..n as u64)
                .map(|j| {
                    let mut r = request.clone();
                    r.sampling.seed = Some(base + j);
                    r
                })
                .collect()
        }
    };
    let accepted = super::submit_all(state, requests)
        .await
        .map_err(ApiError::from)?;
    let prompts: Vec<_> = accepted.iter().map(|a| a.prompt.clone()).collect();
    // The first failure answers at once; the other samples are dropped (cancelled).
    let sequences = futures_util::future::try_join_all(accepted.into_iter().map(collect)).await?;
    let score = |c: &Collected| c.tokens.iter().map(|t| f64::from(t.logprob)).sum::<f64>();
    let best = (0..sequences.len())
        .max_by(|a, b| score(&sequences[*a]).total_cmp(&score(&sequences[*b])))
        .unwrap_or(0);
    let full_text = |c: &Collected| {
        let mut text = c.text();
        if req.parameters.return_full_text {
            text.insert_str(0, req.inputs.as_deref().unwrap_or_default());
        }
        text
    };
    let p = &req.parameters;
    let details = |c: &Collected, prompt: &[PromptToken]| SequenceDetails {
        finish_reason: tgi_finish_reason(c.finish.reason).to_string(),
        generated_tokens: c.finish.generated_tokens,
        seed: c.finish.seed,
        prefill: prompt
            .iter()
            .enumerate()
            .map(|(i, t)| PrefillToken {
                id: t.id,
                text: t.text.clone(),
                logprob: c.prefill.get(i).and_then(|p| p.logprob),
            })
            .collect(),
        top_tokens: match p.top_n_tokens {
            Some(n) if n > 0 => c
                .tokens
                .iter()
                .map(|t| t.top.iter().map(tgi_token).collect())
                .collect(),
            _ => Vec::new(),
        },
        tokens: c.tokens.iter().map(generated_token).collect(),
    };
    let chosen = &sequences[best];
    let headers = timing_headers(state, &chosen.finish, arrived);
    let details = p.details.then(|| Details {
        sequence: details(chosen, &prompts[best]),
        best_of_sequences: sequences
            .iter()
            .zip(&prompts)
            .enumerate()
            .filter(|(i, _)| *i != best)
            .map(|(_, (c, prompt))| BestOfSequence {
                generated_text: full_text(c),
                sequence: details(c, prompt),
            })
            .collect(),
    });
    Ok((
        headers,
        GenerateResponse {
            generated_text: full_text(chosen),
            details,
        },
    ))
}

/// `POST /generate_stream`: server-sent events, one per token.
pub async fn generate_stream(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<ApiJson<GenerateRequest>, ApiError>,
) -> Response {
    let arrived = Instant::now();
    let started = async {
        let ApiJson(req) = body?;
        let resume = StreamResume::from_headers(&headers)?;
        let mut request = engine_request(&req, arrived, true)?;
        resume.apply(&mut request);
        let accepted = submit(&state, request).await?;
        let prefix = req
            .parameters
            .return_full_text
            .then(|| req.inputs.clone().unwrap_or_default());
        Ok::<_, ApiError>((accepted, prefix, resume.marked))
    };
    match started.await {
        Ok((accepted, prefix, marked)) => {
            let opening = Mark {
                seed: accepted.seed,
                ..Mark::default()
            };
            let marks = Marker::new(marked, opening);
            let events = token_events(accepted.events, accepted.prompt_tokens, prefix, marks);
            (
                stream_headers(&state),
                Sse::new(events).keep_alive(KeepAlive::default()),
            )
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /`: `/generate` wrapped in a list, or `/generate_stream` when `stream` is true.
pub async fn compat_generate(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<ApiJson<GenerateRequest>, ApiError>,
) -> Response {
    match body {
        Ok(ApiJson(req)) if req.stream => {
            generate_stream(State(state), headers, Ok(ApiJson(req))).await
        }
        other => match generate_inner(&state, other).await {
            Ok((headers, response)) => (headers, Json(vec![response])).into_response(),
            Err(e) => e.into_response(),
        },
    }
}

struct StreamState {
    events: EventStream,
    index: usize,
    text: String,
    input_length: usize,
    done: bool,
    /// Marks for the front ([`crate::api::resume`]).
    marks: Marker,
}

/// TGI stream events: every token; the last one also carries `generated_text` and `details`.
/// `marks` marks each event for the front.
fn token_events(
    events: EventStream,
    input_length: usize,
    prefix: Option<String>,
    marks: Marker,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let init = StreamState {
        events,
        index: 0,
        text: prefix.unwrap_or_default(),
        input_length,
        done: false,
        marks,
    };
    stream::unfold(init, |mut st| async move {
        if st.done {
            return None;
        }
        let mut next = st.events.next().await;
        // Prompt log-probabilities are refused for streams; none come, but skip any. A resumed
        // answer's earlier tokens were sent by another worker: they only count.
        loop {
            match next {
                Some(EngineEvent::Prefill(_)) => {}
                Some(EngineEvent::Resumed(earlier)) => {
                    st.index += earlier.len();
                    st.text.extend(earlier.iter().map(|t| t.text.as_str()));
                }
                _ => break,
            }
            next = st.events.next().await;
        }
        let event = match next {
            Some(EngineEvent::Prefill(_) | EngineEvent::Resumed(_)) => return None,
            Some(EngineEvent::Token(t, finish)) => {
                st.index += 1;
                st.text.push_str(&t.text);
                let (generated_text, details) = match finish {
                    Some(f) => {
                        st.done = true;
                        let details = StreamDetails {
                            finish_reason: tgi_finish_reason(f.reason).to_string(),
                            generated_tokens: f.generated_tokens,
                            seed: f.seed,
                            input_length: st.input_length,
                        };
                        (Some(st.text.clone()), Some(details))
                    }
                    None => (None, None),
                };
                let end = details.is_some();
                let body = StreamResponse {
                    index: st.index,
                    token: generated_token(&t),
                    top_tokens: t.top.iter().map(tgi_token).collect(),
                    generated_text,
                    details,
                };
                st.marks.read(t.id);
                st.marks.token_event(json_event(&body), end)
            }
            Some(EngineEvent::Failed(e)) => {
                st.done = true;
                let event = error_event(ApiError::from(e.clone()));
                st.marks.failure_event(event, &e)
            }
            // After the final event (`done` is set then).
            None => return None,
        };
        Some((Ok(event), st))
    })
}

/// A TGI error event, counted.
fn error_event(e: ApiError) -> Event {
    crate::metrics::count_error(e.error_type());
    json_event(&e.tgi_body())
}

/// An SSE event whose data is `value` as JSON.
pub fn json_event<T: serde::Serialize>(value: &T) -> Event {
    Event::default()
        .data(serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")))
}
