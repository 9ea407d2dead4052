//! OpenAI request bodies as engine requests: OpenAI's ranges and rules checked (each error
//! names its field, with OpenAI's code), then one engine request per choice (each prompt
//! `n` times). What both APIs share (lengths, stops, the model's vocabulary) is checked by
//! the engine.

use std::time::Instant;

use migserve_engine::{
    GenerateRequest, Grammar, LogprobsSpec, Prompt, SamplingSpec, MAX_TOP_LOGPROBS,
};
use migserve_models::ChatMessage;
use serde_json::Value;

use super::structured;
use super::tools::{self, ToolPlan};

use crate::api::error::ApiError;
use crate::api::openai::{
    ChatRequest, CompletionRequest, MessageContent, PromptInput, RequestMessage, SamplingFields,
};

/// Most choices one request may ask for (`n` x prompts).
pub const MAX_CHOICES: usize = 64;

/// Roles a chat message may have.
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// One choice to generate: the engine request and what the answer needs besides its events.
pub struct Choice {
    pub request: GenerateRequest,
    /// Which prompt of the request it answers (usage counts each prompt once).
    pub prompt_index: usize,
    /// The prompt's text to put before the completion (`echo`), when it is text.
    pub echo_text: Option<String>,
}

/// A checked request: its choices, and how log-probabilities are to be returned.
pub struct Prepared {
    pub choices: Vec<Choice>,
    /// `Some(n)`: each token's log-probability and its `n` most likely alternatives.
    pub logprobs: Option<usize>,
    /// Completions only: the prompt's tokens lead each choice (`echo`).
    pub echo: bool,
    /// Chat with tools: the calls are read out of each choice's text.
    pub tools: Option<ToolPlan>,
}

fn below(
    param: &str,
    code: &'static str,
    min: impl std::fmt::Display,
    got: impl std::fmt::Display,
) -> ApiError {
    ApiError::param(
        param,
        code,
        format!("Invalid '{param}': expected a value >= {min}, but got {got} instead."),
    )
}

fn above(
    param: &str,
    code: &'static str,
    max: impl std::fmt::Display,
    got: impl std::fmt::Display,
) -> ApiError {
    ApiError::param(
        param,
        code,
        format!("Invalid '{param}': expected a value <= {max}, but got {got} instead."),
    )
}

/// A decimal field within `min..=max`.
fn decimal(param: &str, value: Option<f32>, min: f32, max: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if v.is_nan() => Err(ApiError::param(
            param,
            "invalid_value",
            format!("Invalid '{param}': not a number."),
        )),
        Some(v) if v < min => Err(below(param, "decimal_below_min_value", min, v)),
        Some(v) if v > max => Err(above(param, "decimal_above_max_value", max, v)),
        _ => Ok(()),
    }
}

/// An integer field within `min..=max`.
fn integer(param: &str, value: Option<i64>, min: i64, max: i64) -> Result<(), ApiError> {
    match value {
        Some(v) if v < min => Err(below(param, "integer_below_min_value", min, v)),
        Some(v) if v > max => Err(above(param, "integer_above_max_value", max, v)),
        _ => Ok(()),
    }
}

/// The sampling fields both endpoints share, checked against OpenAI's ranges, as the engine's
/// (OpenAI's temperature defaults to 1; 0 is greedy).
fn sampling(s: &SamplingFields) -> Result<SamplingSpec, ApiError> {
    decimal("temperature", s.temperature, 0.0, 2.0)?;
    if let Some(p) = s.top_p {
        if !(p > 0.0 && p <= 1.0) {
            let code = if p > 1.0 {
                "decimal_above_max_value"
            } else {
                "decimal_below_min_value"
            };
            return Err(ApiError::param(
                "top_p",
                code,
                format!("Invalid 'top_p': expected a value in (0, 1], but got {p} instead."),
            ));
        }
    }
    decimal("presence_penalty", s.presence_penalty, -2.0, 2.0)?;
    decimal("frequency_penalty", s.frequency_penalty, -2.0, 2.0)?;
    let mut logit_bias = Vec::new();
    for (key, bias) in s.logit_bias.iter().flatten() {
        let id = key.parse::<u32>().map_err(|_| {
            ApiError::param(
                "logit_bias",
                "invalid_value",
                format!("Invalid 'logit_bias': keys are token ids, got {key:?}."),
            )
        })?;
        decimal("logit_bias", Some(*bias), -100.0, 100.0)?;
        logit_bias.push((id, *bias));
    }
    let temperature = s.temperature.unwrap_or(1.0);
    Ok(SamplingSpec {
        sample: temperature > 0.0,
        temperature: Some(temperature),
        // vLLM's convention: -1 (or 0) means no top-k.
        top_k: s.top_k.filter(|k| *k > 0),
        top_p: s.top_p,
        repetition_penalty: s.repetition_penalty,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        logit_bias,
        seed: s.seed,
    })
}

/// The engine requests for `prompts`, each `n` times; choice `j` of a prompt samples with
/// `seed + j` (so each is the same request sent alone with that seed).
fn choices(
    prompts: Vec<(Prompt, Option<String>)>,
    s: &SamplingFields,
    logprobs: LogprobsSpec,
    grammar: Option<Grammar>,
    arrived: Instant,
) -> Result<Vec<Choice>, ApiError> {
    integer("n", s.n, 1, MAX_CHOICES as i64)?;
    let n = s.n.unwrap_or(1) as usize;
    if prompts.len() * n > MAX_CHOICES {
        return Err(ApiError::param(
            "n",
            "invalid_value",
            format!(
                "{} prompts x n = {n} is {} choices; at most {MAX_CHOICES} per request",
                prompts.len(),
                prompts.len() * n
            ),
        ));
    }
    integer("max_tokens", s.max_tokens, 1, i64::MAX)?;
    integer(
        "max_completion_tokens",
        s.max_completion_tokens,
        1,
        i64::MAX,
    )?;
    integer("min_tokens", s.min_tokens, 0, i64::MAX)?;
    let spec = sampling(s)?;
    let stop = s.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    let mut out = Vec::with_capacity(prompts.len() * n);
    for (prompt_index, (prompt, echo_text)) in prompts.into_iter().enumerate() {
        for j in 0..n {
            let sampling = SamplingSpec {
                seed: spec.seed.map(|seed| seed.wrapping_add(j as u64)),
                ..spec.clone()
            };
            let request = GenerateRequest {
                max_new_tokens: s.max_completion_tokens.or(s.max_tokens),
                min_new_tokens: s.min_tokens,
                sampling,
                stop: stop.clone(),
                ignore_eos: s.ignore_eos,
                logprobs,
                return_prompt_tokens: logprobs.prompt,
                grammar: grammar.clone(),
                arrived,
                ..GenerateRequest::new(prompt.clone())
            };
            out.push(Choice {
                request,
                prompt_index,
                echo_text: echo_text.clone(),
            });
        }
    }
    Ok(out)
}

/// `POST /v1/completions`: prompts (text, token ids, or lists of either), `echo`, `logprobs`.
pub fn completion(req: &CompletionRequest, arrived: Instant) -> Result<Prepared, ApiError> {
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::param(
            "suffix",
            "invalid_value",
            "`suffix` is not supported",
        ));
    }
    integer("best_of", req.best_of, 1, 1)?;
    integer("logprobs", req.logprobs, 0, MAX_TOP_LOGPROBS as i64)?;
    let empty = || ApiError::param("prompt", "invalid_value", "`prompt` cannot be empty");
    let text = |t: &String| match t.is_empty() {
        true => Err(empty()),
        false => Ok((Prompt::Text(t.clone()), Some(t.clone()))),
    };
    let tokens = |t: &Vec<u32>| match t.is_empty() {
        true => Err(empty()),
        false => Ok((Prompt::Tokens(t.clone()), None)),
    };
    let prompts = match &req.prompt {
        None => {
            return Err(ApiError::param(
                "prompt",
                "missing_required_parameter",
                "you must provide a `prompt`",
            ))
        }
        Some(PromptInput::Text(t)) => vec![text(t)?],
        Some(PromptInput::Tokens(t)) => vec![tokens(t)?],
        Some(PromptInput::Texts(list)) => list.iter().map(text).collect::<Result<_, _>>()?,
        Some(PromptInput::TokenLists(list)) => list.iter().map(tokens).collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() {
        return Err(empty());
    }
    let top = req.logprobs.map(|n| n as usize);
    let echo = req.echo.unwrap_or(false);
    let logprobs = LogprobsSpec {
        top: top.unwrap_or(0),
        prompt: echo && top.is_some(),
    };
    let grammar = structured::openai(&req.sampling)?;
    let mut choices = choices(prompts, &req.sampling, logprobs, grammar, arrived)?;
    if echo {
        for c in &mut choices {
            // Token-id prompts are echoed from their tokens' texts.
            c.request.return_prompt_tokens |= c.echo_text.is_none();
        }
    }
    Ok(Prepared {
        choices,
        logprobs: top,
        echo,
        tools: None,
    })
}

/// One chat message, checked: a known role and content (a string, or text parts).
fn message(i: usize, m: &RequestMessage) -> Result<ChatMessage, ApiError> {
    let param = format!("messages[{i}]");
    if !ROLES.contains(&m.role.as_str()) {
        return Err(ApiError::param(
            &format!("{param}.role"),
            "invalid_value",
            format!(
                "Invalid value {:?} for '{param}.role': supported roles are {}",
                m.role,
                ROLES.join(", ")
            ),
        ));
    }
    let content = match &m.content {
        // An assistant message may be its tool calls alone.
        None if m.role == "assistant" && m.tool_calls.is_some() => String::new(),
        None => {
            return Err(ApiError::param(
                &format!("{param}.content"),
                "missing_required_parameter",
                format!("Missing required parameter: '{param}.content'."),
            ))
        }
        Some(MessageContent::Text(t)) => t.clone(),
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => text.push_str(t),
                    ("text", None) => {
                        return Err(ApiError::param(
                            &format!("{param}.content[{j}].text"),
                            "missing_required_parameter",
                            format!("Missing required parameter: '{param}.content[{j}].text'."),
                        ))
                    }
                    (kind, _) => {
                        return Err(ApiError::param(
                            &format!("{param}.content[{j}].type"),
                            "invalid_value",
                            format!(
                                "content parts of type {kind:?} are not supported; only \"text\""
                            ),
                        ))
                    }
                }
            }
            text
        }
    };
    // Chat templates know `system`; OpenAI's newer name for it is `developer`.
    let role = match m.role.as_str() {
        "developer" => "system".to_string(),
        other => other.to_string(),
    };
    let mut message = ChatMessage::new(role, content);
    if let Some(calls) = &m.tool_calls {
        if m.role != "assistant" {
            return Err(ApiError::param(
                &format!("{param}.tool_calls"),
                "invalid_value",
                "only assistant messages have 'tool_calls'",
            ));
        }
        message.tool_calls = Some(
            calls
                .iter()
                .map(|c| {
                    // Templates read the arguments as an object; a text that is not JSON
                    // stays as it is.
                    let arguments = serde_json::from_str::<Value>(&c.function.arguments)
                        .unwrap_or_else(|_| Value::String(c.function.arguments.clone()));
                    serde_json::json!({
                        "id": c.id,
                        "type": c.kind,
                        "function": {"name": c.function.name, "arguments": arguments},
                    })
                })
                .collect(),
        );
    }
    if m.role == "tool" {
        message.tool_call_id = m.tool_call_id.clone();
        message.name = m.name.clone();
    }
    Ok(message)
}

/// `POST /v1/chat/completions`: messages through the chat template, `logprobs` and
/// `top_logprobs`.
pub fn chat(req: &ChatRequest, arrived: Instant) -> Result<Prepared, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::param(
            "messages",
            "invalid_value",
            "`messages` cannot be empty",
        ));
    }
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    integer("top_logprobs", req.top_logprobs, 0, MAX_TOP_LOGPROBS as i64)?;
    let wants = req.logprobs.unwrap_or(false);
    if req.top_logprobs.is_some_and(|n| n > 0) && !wants {
        return Err(ApiError::param(
            "top_logprobs",
            "invalid_value",
            "`top_logprobs` needs `logprobs` set to true",
        ));
    }
    let top = wants.then(|| req.top_logprobs.unwrap_or(0) as usize);
    let logprobs = LogprobsSpec {
        top: top.unwrap_or(0),
        prompt: false,
    };
    let tool_plan = tools::plan(req)?;
    let mut grammar = structured::openai(&req.sampling)?;
    if let Some(calls) = tool_plan.as_ref().and_then(ToolPlan::grammar) {
        if grammar.is_some() {
            return Err(ApiError::param(
                "tool_choice",
                "invalid_value",
                "a required tool call cannot be combined with another output constraint",
            ));
        }
        grammar = Some(calls);
    }
    let prompt = Prompt::Chat {
        messages,
        tools: tool_plan
            .as_ref()
            .map(ToolPlan::template_tools)
            .unwrap_or_default(),
    };
    let choices = choices(
        vec![(prompt, None)],
        &req.sampling,
        logprobs,
        grammar,
        arrived,
    )?;
    Ok(Prepared {
        choices,
        logprobs: top,
        echo: false,
        tools: tool_plan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat_err(body: serde_json::Value) -> ApiError {
        let req: ChatRequest = serde_json::from_value(body).unwrap();
        match chat(&req, Instant::now()) {
            Err(e) => e,
            Ok(_) => panic!("accepted"),
        }
    }

    fn param_of(e: &ApiError) -> &str {
        match e {
            ApiError::InvalidParam { param, .. } => param,
            other => panic!("not a parameter error: {other:?}"),
        }
    }

    #[test]
    fn openais_ranges_and_rules_name_the_field() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (json!({"messages": user, "temperature": 9}), "temperature"),
            (
                json!({"messages": user, "temperature": -0.1}),
                "temperature",
            ),
            (json!({"messages": user, "top_p": 0}), "top_p"),
            (json!({"messages": user, "top_p": 1.5}), "top_p"),
            (
                json!({"messages": user, "presence_penalty": 2.5}),
                "presence_penalty",
            ),
            (
                json!({"messages": user, "frequency_penalty": -3}),
                "frequency_penalty",
            ),
            (
                json!({"messages": user, "logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (json!({"messages": user, "top_logprobs": 2}), "top_logprobs"),
            (json!({"messages": user, "n": 0}), "n"),
            (json!({"messages": user, "max_tokens": 0}), "max_tokens"),
            (
                json!({"messages": user, "logit_bias": {"x": 1}}),
                "logit_bias",
            ),
            (
                json!({"messages": user, "logit_bias": {"5": 101}}),
                "logit_bias",
            ),
            (
                json!({"messages": [{"role": "wizard", "content": "hi"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user"}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content[0].type",
            ),
            (json!({"messages": []}), "messages"),
        ];
        for (body, param) in cases {
            let e = chat_err(body.clone());
            assert_eq!(param_of(&e), param, "{body}: {e}");
            assert_eq!(e.openai_status(), 400);
        }
    }

    #[test]
    fn choices_are_prompts_times_n_with_consecutive_seeds() {
        let req: CompletionRequest = serde_json::from_value(json!({
            "prompt": [[1, 2, 3], [4, 5]], "n": 3, "seed": 10, "temperature": 0.5,
            "logprobs": 2, "echo": true
        }))
        .unwrap();
        let p = completion(&req, Instant::now()).unwrap();
        assert_eq!(p.choices.len(), 6);
        let seeds: Vec<_> = p.choices.iter().map(|c| c.request.sampling.seed).collect();
        assert_eq!(
            seeds,
            [Some(10), Some(11), Some(12), Some(10), Some(11), Some(12)]
        );
        assert_eq!(p.choices[3].prompt_index, 1);
        assert_eq!(p.choices[3].request.prompt, Prompt::Tokens(vec![4, 5]));
        assert!(p.choices[0].request.logprobs.prompt);
        assert_eq!(p.logprobs, Some(2));
        let developer: ChatRequest = serde_json::from_value(json!({
            "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
        }))
        .unwrap();
        let p = chat(&developer, Instant::now()).unwrap();
        let Prompt::Chat { messages: m, .. } = &p.choices[0].request.prompt else {
            panic!("a chat prompt")
        };
        assert_eq!(
            (m[0].role.as_str(), m[0].content.as_str()),
            ("system", "ab")
        );
    }
}
