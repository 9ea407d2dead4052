//! What an OpenAI answer is made of, whether it goes out whole or streamed: the endpoint, the
//! setup every part shares, finish reasons, token counts, the echoed prompt.

use migserve_engine::{FinishReason, PromptToken};

use super::openai_finish_reason;
use super::tools::ToolPlan;
use crate::api::openai::{ResponseMessage, Usage};

/// Which OpenAI endpoint a response is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completion,
    Chat,
}

impl Endpoint {
    /// The request field holding the prompt (named in length errors).
    pub(super) fn prompt_field(self) -> &'static str {
        match self {
            Endpoint::Completion => "prompt",
            Endpoint::Chat => "messages",
        }
    }
}

/// What every part of an answer shares (the body, or each chunk of a stream).
pub struct AnswerSetup {
    pub id: String,
    /// Unix seconds (OpenAI's `created`).
    pub created: u64,
    pub model: String,
    pub endpoint: Endpoint,
    /// Streams: a last chunk carries the usage.
    pub include_usage: bool,
    /// Each token's log-probability is returned.
    pub logprobs: bool,
    /// Completions: each choice starts with its prompt.
    pub echo: bool,
    /// Chat with tools: calls are read out of the text.
    pub tools: Option<ToolPlan>,
}

/// A chat choice's finish reason: `tool_calls` when it made calls and was not cut short.
pub fn chat_finish_reason(reason: FinishReason, has_calls: bool) -> &'static str {
    match has_calls && reason != FinishReason::Length {
        true => "tool_calls",
        false => openai_finish_reason(reason),
    }
}

/// A chat choice's message and finish reason: with tools, the calls read out of its text.
pub fn chat_message(
    tools: Option<&ToolPlan>,
    text: String,
    reason: FinishReason,
) -> (ResponseMessage, String) {
    let (content, calls) = match tools {
        Some(plan) => plan.parse(&text),
        None => (Some(text), Vec::new()),
    };
    let finish = chat_finish_reason(reason, !calls.is_empty());
    let message = ResponseMessage {
        role: "assistant".into(),
        content,
        tool_calls: (!calls.is_empty()).then_some(calls),
    };
    (message, finish.to_string())
}

/// One choice's token counts.
pub struct Counts {
    /// Which prompt of the request it answers.
    pub prompt_index: usize,
    pub prompt: usize,
    /// Prompt tokens found in the prefix cache.
    pub cached: usize,
    pub generated: usize,
}

/// Token counts over choices: each prompt counted once, whatever its `n` (its cached tokens
/// as its first choice found them).
pub fn usage(choices: impl Iterator<Item = Counts>) -> Usage {
    let mut seen = std::collections::HashSet::new();
    let (mut prompt, mut cached, mut generated) = (0, 0, 0);
    for c in choices {
        if seen.insert(c.prompt_index) {
            prompt += c.prompt;
            cached += c.cached;
        }
        generated += c.generated;
    }
    Usage::new(prompt, generated).with_cached(cached)
}

/// A choice's prompt as `echo` shows it: its text, or its tokens' texts.
pub fn echo_text(text: Option<String>, tokens: &[PromptToken]) -> String {
    text.unwrap_or_else(|| tokens.iter().map(|t| t.text.as_str()).collect())
}
