//! What the engine sends back for a request: one event per generated token, the last one with
//! the finish details, or a failure.

use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::error::EngineError;

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_new_tokens` reached (or the model's context).
    Length,
    /// The model produced an end-of-sequence token.
    EosToken,
    /// The text produced one of the request's stop sequences.
    StopSequence,
    /// The request's grammar is complete: nothing more may follow.
    GrammarComplete,
}

/// A token and its log-probability (an alternative at a position, or a prompt token).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    /// The token's text as it reads after the token before it.
    pub text: String,
    pub logprob: f32,
    /// Whether it is an end-of-sequence token.
    pub special: bool,
}

/// A prompt token's log-probability given the tokens before it (none for the first).
#[derive(Debug, Clone, PartialEq)]
pub struct PrefillLogprob {
    pub id: u32,
    pub logprob: Option<f32>,
    /// The most likely tokens at this position, most likely first (empty for the first).
    pub top: Vec<TokenLogprob>,
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub id: u32,
    /// New text this token completes (may be empty inside a multi-byte character; the last
    /// token also carries whatever the decoder still held). The texts of all tokens together
    /// are the whole generated text, stop sequence included (TGI's `generated_text`).
    pub text: String,
    /// New text that can be shown where a stop sequence must never appear (OpenAI): text
    /// that could be the start of a stop sequence is held back until it is known not to be,
    /// and nothing from a stop sequence on is ever released.
    pub visible: String,
    /// Log-probability of the token under the model (before sampling transforms).
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first: as many as the request
    /// asked for ([`crate::request::LogprobsSpec::top`]), else none.
    pub top: Vec<TokenLogprob>,
    /// Whether this is a special token (the end-of-sequence token).
    pub special: bool,
}

/// Timings and counts of a finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishEvent {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens found in the prefix cache at admission (not computed).
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    /// Arrival to first scheduled step.
    pub queue_time: Duration,
    /// First scheduled step to finish.
    pub inference_time: Duration,
    /// Arrival to first token.
    pub time_to_first_token: Duration,
    pub seed: Option<u64>,
}

/// One event of a request's stream.
#[derive(Debug, Clone)]
pub enum EngineEvent {
    /// The prompt's log-probabilities, once, before the first token (only when asked for).
    Prefill(Vec<PrefillLogprob>),
    /// A resumed request's earlier output ([`crate::GenerateRequest::resume`]) as output
    /// processing read it, once, before the first new token: their texts are what was sent
    /// already, for the answer's whole text; their log-probabilities are not known (0).
    Resumed(Vec<TokenEvent>),
    /// A token; the last one comes with the finish details.
    Token(TokenEvent, Option<FinishEvent>),
    /// The request failed; nothing follows.
    Failed(EngineError),
}

/// The events of one request, in order, ending with a final token or a failure. Dropping it
/// cancels the request: the engine frees its KV blocks before its next step.
#[derive(Debug)]
pub struct EventStream {
    rx: UnboundedReceiver<EngineEvent>,
    ended: bool,
}

impl EventStream {
    /// A stream and the sender that feeds it.
    pub fn channel() -> (UnboundedSender<EngineEvent>, Self) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (tx, Self { rx, ended: false })
    }

    /// The next event; `None` after the final one. A sender that goes away before sending a
    /// final event (the engine dropped the request) ends the stream with a failure, so every
    /// stream ends in a final token or a failure.
    pub async fn next(&mut self) -> Option<EngineEvent> {
        if self.ended {
            return None;
        }
        let event = self.rx.recv().await.unwrap_or_else(|| {
            EngineEvent::Failed(EngineError::Generation(
                "the engine dropped the request".into(),
            ))
        });
        self.ended = matches!(
            event,
            EngineEvent::Token(_, Some(_)) | EngineEvent::Failed(_)
        );
        Some(event)
    }

    /// Everything of a request, for answers that are not streamed: the tokens and the finish
    /// details, or the failure.
    pub async fn collect(mut self) -> Result<Collected, EngineError> {
        let mut tokens = Vec::new();
        let mut prefill = Vec::new();
        loop {
            match self.next().await {
                Some(EngineEvent::Prefill(p)) => prefill = p,
                Some(EngineEvent::Resumed(earlier)) => tokens.extend(earlier),
                Some(EngineEvent::Token(t, None)) => tokens.push(t),
                Some(EngineEvent::Token(t, Some(finish))) => {
                    tokens.push(t);
                    return Ok(Collected {
                        tokens,
                        prefill,
                        finish,
                    });
                }
                Some(EngineEvent::Failed(e)) => return Err(e),
                // Not reached: `next` ends every stream with a final event first.
                None => return Err(EngineError::Generation("the stream ended".into())),
            }
        }
    }
}

/// A whole generation.
#[derive(Debug, Clone)]
pub struct Collected {
    pub tokens: Vec<TokenEvent>,
    /// The prompt's log-probabilities, when asked for.
    pub prefill: Vec<PrefillLogprob>,
    pub finish: FinishEvent,
}

impl Collected {
    /// The whole generated text, stop sequence included (TGI).
    pub fn text(&self) -> String {
        self.tokens.iter().map(|t| t.text.as_str()).collect()
    }

    /// The generated text up to (not including) a stop sequence (OpenAI).
    pub fn visible_text(&self) -> String {
        self.tokens.iter().map(|t| t.visible.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sender_gone_before_the_final_event_ends_the_stream_with_a_failure() {
        let (tx, mut events) = EventStream::channel();
        let token = TokenEvent {
            id: 1,
            text: "a".into(),
            visible: "a".into(),
            logprob: 0.0,
            top: Vec::new(),
            special: false,
        };
        tx.send(EngineEvent::Token(token, None)).unwrap();
        drop(tx);
        assert!(matches!(
            events.next().await,
            Some(EngineEvent::Token(_, None))
        ));
        assert!(matches!(
            events.next().await,
            Some(EngineEvent::Failed(EngineError::Generation(m))) if m.contains("dropped")
        ));
        assert!(events.next().await.is_none(), "nothing after the failure");
    }
}
