//! Turning a request and its prompt tokens into an [`EngineRequest`], or a validation error
//! that says what is wrong. Every rule both APIs share is here; the HTTP layer only checks
//! what one API alone has (TGI's `best_of`, OpenAI's `n`).

use crate::error::{EngineError, Field, LengthLimit, TooLong};
use crate::request::{EngineRequest, GenerateRequest, Limits, Prompt, MAX_TOP_LOGPROBS};
use crate::sampling::{random_seed, SamplingParams};

fn invalid<T>(field: Field, reason: impl Into<String>) -> Result<T, EngineError> {
    Err(EngineError::invalid(field, reason))
}

/// Refuses an empty prompt (no text, no messages, no token ids).
pub fn check_prompt(prompt: &Prompt) -> Result<(), EngineError> {
    let empty = |what: &str| invalid(Field::Prompt, format!("{what} cannot be empty"));
    match prompt {
        Prompt::Text(text) if text.is_empty() => empty("the prompt"),
        Prompt::Chat { messages, .. } if messages.is_empty() => empty("`messages`"),
        Prompt::Tokens(ids) if ids.is_empty() => empty("the prompt"),
        _ => Ok(()),
    }
}

/// Applies TGI's `truncate` (keep the last `keep` tokens) to a tokenized prompt.
pub fn truncate(prompt: &mut Vec<u32>, keep: Option<usize>) -> Result<(), EngineError> {
    match keep {
        Some(0) => invalid(Field::Truncate, "`truncate` must be strictly positive"),
        Some(keep) if prompt.len() > keep => {
            prompt.drain(..prompt.len() - keep);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Refuses token ids (those of `field`) outside the vocabulary (`0..vocab_size`).
pub fn check_token_ids(ids: &[u32], vocab_size: usize, field: Field) -> Result<(), EngineError> {
    match ids.iter().find(|t| **t as usize >= vocab_size) {
        Some(bad) => invalid(
            field,
            format!("token id {bad} is outside the vocabulary (0..{vocab_size})"),
        ),
        None => Ok(()),
    }
}

/// Checks `request` against `limits` for a prompt of `prompt` tokens (already truncated).
pub fn build_request(
    prompt: Vec<u32>,
    request: &GenerateRequest,
    limits: &Limits,
) -> Result<EngineRequest, EngineError> {
    if prompt.is_empty() {
        return invalid(Field::Prompt, "the prompt cannot be empty");
    }
    let input = prompt.len();
    let too_long = |limit_kind, limit, new_tokens| {
        Err(EngineError::TooLong(TooLong {
            limit_kind,
            limit,
            prompt_tokens: input,
            new_tokens,
        }))
    };
    if input > limits.max_input_tokens {
        return too_long(LengthLimit::Prompt, limits.max_input_tokens, 0);
    }
    check_token_ids(&prompt, limits.vocab_size, Field::Prompt)?;
    let room = limits.max_total_tokens.saturating_sub(input);
    let max_new_tokens = match request.max_new_tokens {
        Some(n) if n <= 0 => {
            return invalid(
                Field::MaxNewTokens,
                format!("`max_new_tokens` must be strictly positive, got {n}"),
            )
        }
        Some(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > room {
                return too_long(LengthLimit::Total, limits.max_total_tokens, n);
            }
            n
        }
        None if room == 0 => return too_long(LengthLimit::NoRoom, limits.max_total_tokens, 0),
        None => limits.default_max_new_tokens.min(room),
    };
    if input + max_new_tokens > limits.kv_cache_tokens {
        return too_long(LengthLimit::Cache, limits.kv_cache_tokens, max_new_tokens);
    }
    let min_new_tokens = check_output(request, limits, max_new_tokens)?;
    let params = sampling_params(request, limits.vocab_size, min_new_tokens)?;
    let mut logprobs = request.logprobs;
    // A resumed answer's prompt log-probabilities went out with its beginning.
    logprobs.prompt &= request.resume.is_empty();
    Ok(EngineRequest {
        prompt,
        params,
        max_new_tokens,
        stop: request.stop.clone(),
        ignore_eos: request.ignore_eos,
        logprobs,
        constraint: None,
        resumed: request.resume.clone(),
        arrived: request.arrived,
    })
}

/// Checks what a request asks of its output (at least `min_tokens`, log-probabilities,
/// stops, a grammar, a resumed beginning) given its `max_new_tokens`; its minimum of new
/// tokens.
fn check_output(
    request: &GenerateRequest,
    limits: &Limits,
    max_new_tokens: usize,
) -> Result<usize, EngineError> {
    let min_new_tokens = match request.min_new_tokens {
        Some(n) if n < 0 => {
            return invalid(
                Field::MinNewTokens,
                format!("`min_tokens` must be >= 0, got {n}"),
            )
        }
        Some(n) if n as usize > max_new_tokens => {
            return invalid(
                Field::MinNewTokens,
                format!(
                "`min_tokens` ({n}) must be at most the maximum of new tokens ({max_new_tokens})"
            ),
            )
        }
        Some(n) => n as usize,
        None => 0,
    };
    if request.logprobs.top > MAX_TOP_LOGPROBS {
        return invalid(
            Field::TopLogprobs,
            format!(
                "at most {MAX_TOP_LOGPROBS} top log-probabilities per token, got {}",
                request.logprobs.top
            ),
        );
    }
    if request.stop.len() > limits.max_stop_sequences {
        return invalid(
            Field::Stop,
            format!(
                "`stop` supports up to {} stop sequences. Given: {}",
                limits.max_stop_sequences,
                request.stop.len()
            ),
        );
    }
    if request.stop.iter().any(String::is_empty) {
        return invalid(Field::Stop, "stop sequences cannot be empty");
    }
    if request.grammar.is_some() && request.ignore_eos {
        return invalid(
            Field::IgnoreEos,
            "`ignore_eos` cannot be combined with a grammar (it ends the output)",
        );
    }
    check_token_ids(&request.resume, limits.vocab_size, Field::Resume)?;
    if request.resume.len() >= max_new_tokens {
        return invalid(Field::Resume, format!(
            "the output to resume from has {} tokens: nothing is left of `max_new_tokens` ({max_new_tokens})",
            request.resume.len()
        ));
    }
    Ok(min_new_tokens)
}

/// The sampler's parameters, after checking every value's range.
fn sampling_params(
    request: &GenerateRequest,
    vocab: usize,
    min_tokens: usize,
) -> Result<SamplingParams, EngineError> {
    let spec = &request.sampling;
    if let Some(t) = spec.temperature {
        if !t.is_finite() || t < 0.0 {
            return invalid(
                Field::Temperature,
                format!("`temperature` must be a non-negative number, got {t}"),
            );
        }
    }
    if let Some(p) = spec.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return invalid(
                Field::TopP,
                format!("`top_p` must be > 0.0 and <= 1.0, got {p}"),
            );
        }
    }
    let top_k = match spec.top_k {
        Some(k) if k <= 0 => {
            return invalid(
                Field::TopK,
                format!("`top_k` must be strictly positive, got {k}"),
            )
        }
        Some(k) => Some(usize::try_from(k).unwrap_or(usize::MAX)),
        None => None,
    };
    if let Some(r) = spec.repetition_penalty {
        if !(r.is_finite() && r > 0.0) {
            return invalid(
                Field::RepetitionPenalty,
                format!("`repetition_penalty` must be strictly positive, got {r}"),
            );
        }
    }
    for (field, name, value) in [
        (
            Field::PresencePenalty,
            "presence_penalty",
            spec.presence_penalty,
        ),
        (
            Field::FrequencyPenalty,
            "frequency_penalty",
            spec.frequency_penalty,
        ),
    ] {
        if let Some(v) = value.filter(|v| !v.is_finite()) {
            return invalid(field, format!("`{name}` must be a finite number, got {v}"));
        }
    }
    if let Some((id, b)) = spec.logit_bias.iter().find(|(_, b)| !b.is_finite()) {
        return invalid(
            Field::LogitBias,
            format!("`logit_bias` of token {id} must be finite, got {b}"),
        );
    }
    if let Some((id, _)) = spec.logit_bias.iter().find(|(id, _)| *id as usize >= vocab) {
        return invalid(
            Field::LogitBias,
            format!("`logit_bias` names token {id}, outside the vocabulary (0..{vocab})"),
        );
    }
    let temperature = if spec.sample {
        spec.temperature.unwrap_or(1.0)
    } else {
        0.0
    };
    let mut params = SamplingParams {
        temperature,
        top_k,
        top_p: spec.top_p,
        repetition_penalty: spec.repetition_penalty,
        presence_penalty: spec.presence_penalty.unwrap_or(0.0),
        frequency_penalty: spec.frequency_penalty.unwrap_or(0.0),
        logit_bias: spec.logit_bias.clone(),
        min_tokens,
        // The engine sets the model's end-of-sequence tokens.
        end_tokens: Vec::new(),
        seed: spec.seed,
    };
    // A sampled request always has a seed (drawn when it names none), so its choices can be
    // reported and a stream continued elsewhere draws what it would have drawn here.
    if !params.is_greedy() && params.seed.is_none() {
        params.seed = Some(random_seed());
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Prompt, SamplingSpec};

    const LIMITS: Limits = Limits {
        max_input_tokens: 10,
        max_total_tokens: 20,
        max_stop_sequences: 2,
        default_max_new_tokens: 8,
        kv_cache_tokens: 100,
        vocab_size: 50,
    };

    /// A request with these new-token limit, sampling fields and stops.
    fn spec(max_new_tokens: Option<i64>, sampling: SamplingSpec) -> GenerateRequest {
        GenerateRequest {
            max_new_tokens,
            sampling,
            ..GenerateRequest::new(Prompt::Text("unused".into()))
        }
    }

    fn build(prompt_len: usize, request: GenerateRequest) -> Result<EngineRequest, EngineError> {
        build_request(vec![1; prompt_len], &request, &LIMITS)
    }

    fn err(prompt_len: usize, request: GenerateRequest) -> String {
        match build(prompt_len, request) {
            Err(EngineError::Validation(m)) => m.reason,
            Err(EngineError::TooLong(t)) => t.to_string(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn default() -> GenerateRequest {
        spec(None, SamplingSpec::default())
    }

    fn sampling(s: SamplingSpec) -> GenerateRequest {
        spec(None, s)
    }

    #[test]
    fn limits_on_lengths() {
        assert!(err(0, default()).contains("cannot be empty"));
        assert!(err(11, default()).contains("less than 10"));
        assert!(err(5, spec(Some(0), SamplingSpec::default())).contains("strictly positive"));
        assert!(err(5, spec(Some(16), SamplingSpec::default())).contains("<= 20"));
        assert_eq!(
            build(5, spec(Some(15), SamplingSpec::default()))
                .unwrap()
                .max_new_tokens,
            15
        );
        assert_eq!(build(5, default()).unwrap().max_new_tokens, 8, "default");
        assert_eq!(build(10, default()).unwrap().max_new_tokens, 8);
    }

    #[test]
    fn a_request_the_cache_can_never_hold_is_refused() {
        let small = Limits {
            kv_cache_tokens: 12,
            ..LIMITS
        };
        let e = build_request(vec![1; 5], &spec(Some(8), SamplingSpec::default()), &small);
        assert!(matches!(e, Err(EngineError::TooLong(t)) if t.to_string().contains("KV cache")));
    }

    #[test]
    fn sampling_values() {
        assert!(err(
            3,
            sampling(SamplingSpec {
                temperature: Some(-0.5),
                ..Default::default()
            })
        )
        .contains("temperature"));
        assert!(err(
            3,
            sampling(SamplingSpec {
                top_p: Some(0.0),
                ..Default::default()
            })
        )
        .contains("top_p"));
        assert!(err(
            3,
            sampling(SamplingSpec {
                top_p: Some(1.01),
                ..Default::default()
            })
        )
        .contains("top_p"));
        assert!(err(
            3,
            sampling(SamplingSpec {
                top_k: Some(0),
                ..Default::default()
            })
        )
        .contains("top_k"));
        assert!(err(
            3,
            sampling(SamplingSpec {
                repetition_penalty: Some(0.0),
                ..Default::default()
            })
        )
        .contains("repetition_penalty"));
        assert!(err(
            3,
            sampling(SamplingSpec {
                frequency_penalty: Some(f32::NAN),
                ..Default::default()
            })
        )
        .contains("frequency_penalty"));
        assert!(err(
            3,
            sampling(SamplingSpec {
                logit_bias: vec![(3, f32::INFINITY)],
                ..Default::default()
            })
        )
        .contains("logit_bias"));
        let stops = GenerateRequest {
            stop: vec!["a".to_string(), "b".into(), "c".into()],
            ..default()
        };
        assert!(err(3, stops).contains("up to 2"));
        let greedy = build(
            3,
            sampling(SamplingSpec {
                temperature: Some(0.7),
                ..Default::default()
            }),
        )
        .unwrap();
        assert!(greedy.params.is_greedy(), "no sampling unless asked");
        let sampled = build(
            3,
            sampling(SamplingSpec {
                sample: true,
                temperature: Some(0.7),
                seed: Some(1),
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(sampled.params.temperature, 0.7);
        assert_eq!(sampled.params.seed, Some(1));
    }

    #[test]
    fn min_tokens_logprobs_bias_and_token_ids_are_checked() {
        let r = |f: fn(&mut GenerateRequest)| {
            let mut r = spec(Some(4), SamplingSpec::default());
            f(&mut r);
            r
        };
        assert!(err(3, r(|r| r.min_new_tokens = Some(5))).contains("min_tokens"));
        assert!(err(3, r(|r| r.min_new_tokens = Some(-1))).contains("min_tokens"));
        assert_eq!(
            build(3, r(|r| r.min_new_tokens = Some(4)))
                .unwrap()
                .params
                .min_tokens,
            4
        );
        assert!(err(3, r(|r| r.logprobs.top = 21)).contains("at most 20"));
        assert!(err(3, r(|r| r.sampling.logit_bias = vec![(50, 1.0)])).contains("logit_bias"));
        let e = build_request(vec![1, 99], &default(), &LIMITS);
        assert!(matches!(e, Err(EngineError::Validation(m)) if m.reason.contains("token id 99")));
        let ok = build(
            3,
            r(|r| {
                r.sampling.presence_penalty = Some(0.5);
                r.sampling.logit_bias = vec![(49, -1.0)];
            }),
        )
        .unwrap();
        assert_eq!(ok.params.presence_penalty, 0.5);
        assert_eq!(ok.params.logit_bias, [(49, -1.0)]);
    }

    #[test]
    fn length_errors_keep_tgis_words() {
        let Err(EngineError::TooLong(t)) = build(12, default()) else {
            panic!("a prompt over the limit is too long")
        };
        assert_eq!(
            t.to_string(),
            "`inputs` must have less than 10 tokens. Given: 12"
        );
        let Err(EngineError::TooLong(t)) = build(5, spec(Some(16), SamplingSpec::default())) else {
            panic!("too many new tokens is too long")
        };
        assert_eq!((t.prompt_tokens, t.new_tokens), (5, 16));
    }

    #[test]
    fn truncate_keeps_the_last_tokens_and_refuses_zero() {
        let mut prompt = vec![1, 2, 3, 4];
        truncate(&mut prompt, Some(2)).unwrap();
        assert_eq!(prompt, [3, 4]);
        truncate(&mut prompt, Some(5)).unwrap();
        assert_eq!(prompt, [3, 4]);
        assert!(matches!(
            truncate(&mut prompt, Some(0)),
            Err(EngineError::Validation(m)) if m.reason.contains("strictly positive")
        ));
    }
}
