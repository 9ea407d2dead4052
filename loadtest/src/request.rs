//! One streamed request: send it, time every token, classify failures.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

impl Api {
    /// The name on the command line and in reports (`tgi`, `openai-chat`, ...).
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

/// The API a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// TGI `POST /generate_stream`.
    Tgi,
    /// OpenAI `POST /v1/chat/completions` with `stream`.
    OpenaiChat,
    /// OpenAI `POST /v1/completions` with `stream`.
    OpenaiCompletions,
}

/// Where requests go.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Target {
    pub url: String,
    pub api: Api,
    /// OpenAI `model` (and the `x-model` header for TGI); none: the server's default.
    pub model: Option<String>,
    /// Ask the server to generate exactly the requested tokens (migserve's `ignore_eos`).
    pub ignore_eos: bool,
    /// Merged into every body (OpenAI: at the top; TGI: into `parameters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_body: Option<Value>,
    #[serde(skip)]
    pub timeout: Duration,
}

/// What one request measured.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Seconds from the start of its level to sending.
    pub sent_at: f64,
    /// Seconds to the first token.
    pub ttft: Option<f64>,
    /// Seconds between consecutive tokens.
    pub itl: Vec<f64>,
    /// Seconds to the end of the response.
    pub e2e: f64,
    pub output_tokens: u64,
    pub prompt_tokens: Option<u64>,
    /// Prompt tokens the server found in its prefix cache (OpenAI
    /// `usage.prompt_tokens_details.cached_tokens`), when it says.
    #[serde(default)]
    pub cached_tokens: Option<u64>,
    /// The server's `x-slice` header.
    pub slice: Option<String>,
    /// Failure class, when it failed: connect, timeout, http_429, http_4xx, http_5xx,
    /// stream_error (an error event), stream_broken (connection lost mid-stream),
    /// invalid_response.
    pub error: Option<String>,
}

impl Target {
    fn path(&self) -> &'static str {
        match self.api {
            Api::Tgi => "/generate_stream",
            Api::OpenaiChat => "/v1/chat/completions",
            Api::OpenaiCompletions => "/v1/completions",
        }
    }

    fn body(&self, prompt: &str, max_tokens: u64) -> Value {
        let mut body = self.base_body(prompt, max_tokens);
        let extra = self.extra_body.as_ref().and_then(Value::as_object);
        let into = match self.api {
            Api::Tgi => body.get_mut("parameters"),
            Api::OpenaiChat | Api::OpenaiCompletions => Some(&mut body),
        };
        if let (Some(extra), Some(Value::Object(into))) = (extra, into) {
            for (k, v) in extra {
                into.insert(k.clone(), v.clone());
            }
        }
        body
    }

    fn base_body(&self, prompt: &str, max_tokens: u64) -> Value {
        match self.api {
            Api::Tgi => json!({
                "inputs": prompt,
                "parameters": {"max_new_tokens": max_tokens, "details": true, "ignore_eos": self.ignore_eos}
            }),
            Api::OpenaiChat => json!({
                "model": self.model.clone().unwrap_or_default(),
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens, "stream": true, "ignore_eos": self.ignore_eos,
                "stream_options": {"include_usage": true}
            }),
            Api::OpenaiCompletions => json!({
                "model": self.model.clone().unwrap_or_default(),
                "prompt": prompt,
                "max_tokens": max_tokens, "stream": true, "ignore_eos": self.ignore_eos,
                "stream_options": {"include_usage": true}
            }),
        }
    }
}

/// Sends one request and measures it; never fails (failures are in [`Sample::error`]).
pub async fn send(
    client: &reqwest::Client,
    target: &Target,
    prompt: &str,
    max_tokens: u64,
    level_start: Instant,
) -> Sample {
    let started = Instant::now();
    let mut sample = Sample {
        sent_at: started.duration_since(level_start).as_secs_f64(),
        ..Default::default()
    };
    let outcome = tokio::time::timeout(
        target.timeout,
        exchange(client, target, prompt, max_tokens, started, &mut sample),
    )
    .await;
    if outcome.is_err() {
        sample.error = Some("timeout".into());
    }
    sample.e2e = started.elapsed().as_secs_f64();
    sample
}

async fn exchange(
    client: &reqwest::Client,
    target: &Target,
    prompt: &str,
    max_tokens: u64,
    started: Instant,
    sample: &mut Sample,
) {
    let mut request = client
        .post(format!(
            "{}{}",
            target.url.trim_end_matches('/'),
            target.path()
        ))
        .json(&target.body(prompt, max_tokens));
    if let (Api::Tgi, Some(model)) = (target.api, &target.model) {
        request = request.header("x-model", model);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            sample.error = Some(if e.is_timeout() { "timeout" } else { "connect" }.into());
            return;
        }
    };
    sample.slice = response
        .headers()
        .get("x-slice")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = response.status();
    if !status.is_success() {
        sample.error = Some(
            match status.as_u16() {
                429 => "http_429",
                400..=499 => "http_4xx",
                500..=599 => "http_5xx",
                _ => "http_other",
            }
            .into(),
        );
        return;
    }
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut parse = StreamParse::new(target.api, started);
    let mut broken = false;
    let mut arrived = Instant::now();
    while let Some(chunk) = body.next().await {
        // Token times are when their bytes arrived, not when parsing reached them.
        arrived = Instant::now();
        let chunk = match chunk {
            Ok(c) => c,
            Err(_) => {
                broken = true;
                break;
            }
        };
        // CR LF and CR line ends are legal in SSE: keep only LF.
        buffer.extend(chunk.iter().copied().filter(|b| *b != b'\r'));
        while let Some(end) = find_event_end(&buffer) {
            let event: Vec<u8> = buffer.drain(..end).collect();
            parse.event(&event, arrived, sample);
        }
    }
    if !broken && !buffer.is_empty() {
        // A last event without its blank line.
        parse.event(&buffer, arrived, sample);
    }
    sample.output_tokens = parse.reported_tokens.unwrap_or(parse.events);
    if broken {
        sample.error = Some("stream_broken".into());
    } else if sample.error.is_none() && !parse.finished {
        // The body ended cleanly but without its final event.
        sample.error = Some("stream_broken".into());
    }
}

/// What a stream has shown so far.
struct StreamParse {
    api: Api,
    started: Instant,
    events: u64,
    last_token: Option<Instant>,
    reported_tokens: Option<u64>,
    finished: bool,
}

impl StreamParse {
    fn new(api: Api, started: Instant) -> Self {
        Self {
            api,
            started,
            events: 0,
            last_token: None,
            reported_tokens: None,
            finished: false,
        }
    }

    /// Reads one SSE event (its `data:` lines) whose bytes arrived at `arrived`.
    fn event(&mut self, event: &[u8], arrived: Instant, sample: &mut Sample) {
        for line in String::from_utf8_lossy(event).lines() {
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                self.finished = true;
                continue;
            }
            let Ok(value) = serde_json::from_str::<Value>(data) else {
                sample.error = Some("invalid_response".into());
                continue;
            };
            if value.get("error").is_some() {
                sample.error = Some("stream_error".into());
                continue;
            }
            if let Some(usage) = value.get("usage").filter(|u| !u.is_null()) {
                self.reported_tokens = usage.get("completion_tokens").and_then(Value::as_u64);
                sample.prompt_tokens = usage.get("prompt_tokens").and_then(Value::as_u64);
                sample.cached_tokens = usage
                    .pointer("/prompt_tokens_details/cached_tokens")
                    .and_then(Value::as_u64);
            }
            if let Some(details) = value.get("details").filter(|d| !d.is_null()) {
                self.reported_tokens = details.get("generated_tokens").and_then(Value::as_u64);
                sample.prompt_tokens = details.get("input_length").and_then(Value::as_u64);
                self.finished = true;
            }
            if is_token_event(self.api, &value) {
                let now = arrived;
                match self.last_token {
                    None => sample.ttft = Some(now.duration_since(self.started).as_secs_f64()),
                    Some(prev) => sample.itl.push(now.duration_since(prev).as_secs_f64()),
                }
                self.last_token = Some(now);
                self.events += 1;
            }
        }
    }
}

/// End (exclusive) of the first complete SSE event in `buffer`.
fn find_event_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// Whether an event carries a generated token (OpenAI's usage-only chunk does not).
fn is_token_event(api: Api, value: &Value) -> bool {
    match api {
        Api::Tgi => value.get("token").is_some(),
        Api::OpenaiChat | Api::OpenaiCompletions => value
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
            .map(|choice| {
                let text = choice
                    .get("delta")
                    .and_then(|d| d.get("content"))
                    .or_else(|| choice.get("text"));
                text.and_then(Value::as_str).is_some_and(|t| !t.is_empty())
            })
            .unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(api: Api, extra: Value) -> Target {
        Target {
            url: String::new(),
            api,
            model: None,
            ignore_eos: false,
            extra_body: Some(extra),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn extra_body_goes_to_the_top_for_openai_and_into_parameters_for_tgi() {
        let extra = json!({"response_format": {"type": "json_object"}, "max_tokens": 9});
        let chat = target(Api::OpenaiChat, extra.clone()).body("hi", 5);
        assert_eq!(chat["response_format"]["type"], "json_object");
        assert_eq!(chat["max_tokens"], 9);
        assert_eq!(chat["messages"][0]["content"], "hi");
        let tgi = target(
            Api::Tgi,
            json!({"grammar": {"type": "regex", "value": "a+"}}),
        )
        .body("hi", 5);
        assert_eq!(tgi["parameters"]["grammar"]["value"], "a+");
        assert_eq!(tgi["parameters"]["max_new_tokens"], 5);
        assert!(tgi.get("grammar").is_none());
    }
}
