//! Streams that continue on another worker: what the front and a worker say to each other.
//!
//! The front asks for a resumable stream with [`RESUMABLE_HEADER`]. The worker then marks
//! each event of its stream with an SSE comment line, `: migserve {Mark as JSON}`: the
//! tokens whose output the event completes, on the first event the seed (and an OpenAI
//! answer's id and creation time), on the last that the answer is complete. The front takes
//! the marks out before relaying the events. When the worker dies mid-stream (or its engine
//! fails the request), the front sends the same request to another worker with
//! [`RESUME_HEADER`]: the tokens relayed so far, the seed, the id. That worker runs the
//! tokens through its output processing as if it had generated them (nothing is sent for
//! them), samples on from the same step of the same seed, and streams the rest, so the
//! client sees one answer with no gap and nothing twice; its final event (TGI's
//! `generated_text` and `details`, OpenAI's usage) counts the whole answer.
//!
//! Only streams of one sequence are marked (not OpenAI's `n` > 1).

use serde::{Deserialize, Serialize};

/// Request header (any value) by which the front asks a worker to mark its stream.
pub const RESUMABLE_HEADER: &str = "x-migserve-resumable";

/// Request header carrying a [`Resume`] as JSON: continue this answer from there.
pub const RESUME_HEADER: &str = "x-migserve-resume";

/// What a mark's SSE comment starts with.
pub const MARK_PREFIX: &str = "migserve ";

/// The mark of one stream event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    /// Tokens whose output this event completes (generated since the previous mark).
    #[serde(default, rename = "t", skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<u32>,
    /// The seed sampling uses (first mark of a sampled stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// OpenAI: the answer's id (first mark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// OpenAI: the answer's `created` time (first mark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    /// The answer is complete with this event (what follows needs no worker).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end: bool,
    /// This event reports a failure of the worker, not of the request: the front may
    /// continue the stream elsewhere instead of relaying it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

impl Mark {
    /// The comment line's text (no newline: JSON of these fields has none).
    pub fn comment(&self) -> String {
        format!(
            "{MARK_PREFIX}{}",
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    /// The mark in an SSE line (`: migserve {...}` or `:migserve {...}`), if it is one.
    pub fn parse_line(line: &str) -> Option<Mark> {
        let comment = line.strip_prefix(':')?;
        let json = comment.trim_start().strip_prefix(MARK_PREFIX)?;
        serde_json::from_str(json).ok()
    }
}

/// Where a continued stream starts: the [`RESUME_HEADER`]'s value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    /// Every token the client has been sent the output of, in order.
    pub tokens: Vec<u32>,
    /// The seed the stream sampled with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// OpenAI: the answer's id and `created` time, kept by its continuation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_their_comment_line() {
        let mark = Mark {
            tokens: vec![1, 22, 333],
            seed: Some(u64::MAX),
            id: Some("chatcmpl-x".into()),
            created: Some(7),
            end: true,
            retry: false,
        };
        let line = format!(": {}", mark.comment());
        assert!(!line.contains('\n'));
        assert_eq!(Mark::parse_line(&line), Some(mark));
        assert_eq!(Mark::parse_line(":migserve {}"), Some(Mark::default()));
        assert_eq!(Mark::parse_line(": keep-alive"), None);
        assert_eq!(Mark::parse_line("data: {}"), None);
    }
}
