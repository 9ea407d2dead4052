//! Turning a request (TGI or OpenAI) into an [`EngineRequest`], or a 422 that says what is wrong.

use std::time::Instant;

use migserve_models::SamplingParams;

use super::error::ApiError;
use crate::worker::engine::EngineRequest;

/// What a worker accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest prompt, in tokens.
    pub max_input_tokens: usize,
    /// Longest prompt plus new tokens.
    pub max_total_tokens: usize,
    /// Most stop sequences per request.
    pub max_stop_sequences: usize,
    /// New tokens when the request names no limit (capped by what is left of the total).
    pub default_max_new_tokens: usize,
    /// Positions the whole KV cache holds: a request needing more could never run.
    pub kv_cache_tokens: usize,
}

/// Protocol-neutral request fields, as the client sent them.
#[derive(Debug, Clone, Default)]
pub struct RequestSpec {
    pub max_new_tokens: Option<i64>,
    /// Whether to sample at all (otherwise greedy).
    pub sample: bool,
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
}

fn invalid<T>(message: impl Into<String>) -> Result<T, ApiError> {
    Err(ApiError::Validation(message.into()))
}

/// Checks `spec` against `limits` for a prompt of `prompt` tokens.
pub fn build_request(
    prompt: Vec<u32>,
    spec: RequestSpec,
    limits: &Limits,
    arrived: Instant,
) -> Result<EngineRequest, ApiError> {
    if prompt.is_empty() {
        return invalid("`inputs` cannot be empty");
    }
    let input = prompt.len();
    if input > limits.max_input_tokens {
        return invalid(format!(
            "`inputs` must have less than {} tokens. Given: {input}",
            limits.max_input_tokens
        ));
    }
    let room = limits.max_total_tokens.saturating_sub(input);
    let max_new_tokens = match spec.max_new_tokens {
        Some(n) if n <= 0 => {
            return invalid(format!(
                "`max_new_tokens` must be strictly positive, got {n}"
            ))
        }
        Some(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > room {
                return invalid(format!(
                    "`inputs` tokens + `max_new_tokens` must be <= {}. Given: {input} `inputs` tokens and {n} `max_new_tokens`",
                    limits.max_total_tokens
                ));
            }
            n
        }
        None if room == 0 => {
            return invalid(format!(
                "`inputs` has {input} tokens: no room left in {}",
                limits.max_total_tokens
            ))
        }
        None => limits.default_max_new_tokens.min(room),
    };
    if input + max_new_tokens > limits.kv_cache_tokens {
        return invalid(format!(
            "this request needs up to {} KV cache positions but the whole cache holds {}",
            input + max_new_tokens,
            limits.kv_cache_tokens
        ));
    }
    if spec.stop.len() > limits.max_stop_sequences {
        return invalid(format!(
            "`stop` supports up to {} stop sequences. Given: {}",
            limits.max_stop_sequences,
            spec.stop.len()
        ));
    }
    if spec.stop.iter().any(String::is_empty) {
        return invalid("stop sequences cannot be empty");
    }
    if let Some(t) = spec.temperature {
        if !t.is_finite() || t < 0.0 {
            return invalid(format!(
                "`temperature` must be a non-negative number, got {t}"
            ));
        }
    }
    if let Some(p) = spec.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return invalid(format!("`top_p` must be > 0.0 and <= 1.0, got {p}"));
        }
    }
    let top_k = match spec.top_k {
        Some(k) if k <= 0 => return invalid(format!("`top_k` must be strictly positive, got {k}")),
        Some(k) => Some(usize::try_from(k).unwrap_or(usize::MAX)),
        None => None,
    };
    if let Some(r) = spec.repetition_penalty {
        if !(r.is_finite() && r > 0.0) {
            return invalid(format!(
                "`repetition_penalty` must be strictly positive, got {r}"
            ));
        }
    }
    let temperature = if spec.sample {
        spec.temperature.unwrap_or(1.0)
    } else {
        0.0
    };
    let params = SamplingParams {
        temperature,
        top_k,
        top_p: spec.top_p,
        repetition_penalty: spec.repetition_penalty,
        seed: spec.seed,
    };
    params
        .validate()
        .map_err(|e| ApiError::Validation(e.to_string()))?;
    Ok(EngineRequest {
        prompt,
        params,
        max_new_tokens,
        stop: spec.stop,
        ignore_eos: spec.ignore_eos,
        arrived,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_input_tokens: 10,
        max_total_tokens: 20,
        max_stop_sequences: 2,
        default_max_new_tokens: 8,
        kv_cache_tokens: 100,
    };

    fn build(prompt_len: usize, spec: RequestSpec) -> Result<EngineRequest, ApiError> {
        build_request(vec![1; prompt_len], spec, &LIMITS, Instant::now())
    }

    fn err(prompt_len: usize, spec: RequestSpec) -> String {
        match build(prompt_len, spec) {
            Err(ApiError::Validation(m)) => m,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn limits_on_lengths() {
        assert!(err(0, RequestSpec::default()).contains("cannot be empty"));
        assert!(err(11, RequestSpec::default()).contains("less than 10"));
        assert!(err(
            5,
            RequestSpec {
                max_new_tokens: Some(0),
                ..Default::default()
            }
        )
        .contains("strictly positive"));
        assert!(err(
            5,
            RequestSpec {
                max_new_tokens: Some(16),
                ..Default::default()
            }
        )
        .contains("<= 20"));
        assert_eq!(
            build(
                5,
                RequestSpec {
                    max_new_tokens: Some(15),
                    ..Default::default()
                }
            )
            .unwrap()
            .max_new_tokens,
            15
        );
        assert_eq!(
            build(5, RequestSpec::default()).unwrap().max_new_tokens,
            8,
            "default"
        );
        assert_eq!(build(10, RequestSpec::default()).unwrap().max_new_tokens, 8);
    }

    #[test]
    fn a_request_the_cache_can_never_hold_is_refused() {
        let small = Limits {
            kv_cache_tokens: 12,
            ..LIMITS
        };
        let e = build_request(
            vec![1; 5],
            RequestSpec {
                max_new_tokens: Some(8),
                ..Default::default()
            },
            &small,
            Instant::now(),
        );
        assert!(matches!(e, Err(ApiError::Validation(m)) if m.contains("KV cache")));
    }

    #[test]
    fn sampling_values() {
        assert!(err(
            3,
            RequestSpec {
                temperature: Some(-0.5),
                ..Default::default()
            }
        )
        .contains("temperature"));
        assert!(err(
            3,
            RequestSpec {
                top_p: Some(0.0),
                ..Default::default()
            }
        )
        .contains("top_p"));
        assert!(err(
            3,
            RequestSpec {
                top_p: Some(1.01),
                ..Default::default()
            }
        )
        .contains("top_p"));
        assert!(err(
            3,
            RequestSpec {
                top_k: Some(0),
                ..Default::default()
            }
        )
        .contains("top_k"));
        assert!(err(
            3,
            RequestSpec {
                repetition_penalty: Some(0.0),
                ..Default::default()
            }
        )
        .contains("repetition_penalty"));
        let stops = vec!["a".to_string(), "b".into(), "c".into()];
        assert!(err(
            3,
            RequestSpec {
                stop: stops,
                ..Default::default()
            }
        )
        .contains("up to 2"));
        let greedy = build(
            3,
            RequestSpec {
                temperature: Some(0.7),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(greedy.params.is_greedy(), "no sampling unless asked");
        let sampled = build(
            3,
            RequestSpec {
                sample: true,
                temperature: Some(0.7),
                seed: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(sampled.params.temperature, 0.7);
        assert_eq!(sampled.params.seed, Some(1));
    }
}
