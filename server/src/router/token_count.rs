//! Counting the tokens of a relayed SSE stream: token events as they pass, and the server's
//! own total (TGI `details.generated_tokens`, OpenAI `usage.completion_tokens`) when it sends
//! one.

use serde_json::Value;

use super::sse::EventSplitter;
use crate::api::Api;

/// The number at `path` in a JSON event.
fn parse_total(data: &[u8], path: &[&str]) -> Option<u64> {
    let value: Value = serde_json::from_slice(data).ok()?;
    path.iter().try_fold(&value, |v, key| v.get(key))?.as_u64()
}

/// Consumes a stream's bytes, event by event.
#[derive(Debug)]
pub struct TokenCounter {
    api: Api,
    split: EventSplitter,
    /// Token events.
    events: u64,
    /// `data:` events of any kind except OpenAI's `[DONE]`.
    data_events: u64,
    reported: Option<u64>,
}

impl TokenCounter {
    pub fn new(api: Api) -> Self {
        Self {
            api,
            split: EventSplitter::default(),
            events: 0,
            data_events: 0,
            reported: None,
        }
    }

    /// Feeds the next chunk (events may span chunks; an unfinished tail stays buffered).
    pub fn feed(&mut self, chunk: &[u8]) {
        for event in self.split.push(chunk) {
            self.event(&event);
        }
    }

    /// Reads one whole event.
    pub fn event(&mut self, event: &[u8]) {
        for line in event.split(|b| *b == b'\n') {
            if let Some(data) = line.strip_prefix(b"data:") {
                self.data(data);
            }
        }
    }

    fn data(&mut self, data: &[u8]) {
        let data = data.trim_ascii();
        if data != b"[DONE]" {
            self.data_events += 1;
        }
        // Cheap byte checks on the per-token path; JSON is parsed only for the event that
        // carries the server's total.
        let has = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
        match self.api {
            Api::Tgi => {
                if has(b"\"token\"") {
                    self.events += 1;
                }
                if has(b"\"generated_tokens\"") {
                    self.reported = parse_total(data, &["details", "generated_tokens"]);
                }
            }
            Api::OpenAi => {
                if has(b"\"content\":\"") && !has(b"\"content\":\"\"")
                    || has(b"\"text\":\"") && !has(b"\"text\":\"\"")
                {
                    self.events += 1;
                }
                if has(b"\"completion_tokens\"") {
                    self.reported =
                        parse_total(data, &["usage", "completion_tokens"]).or(self.reported);
                }
            }
        }
    }

    /// Token events seen so far.
    #[cfg(test)]
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Complete `data:` events seen so far (OpenAI's `[DONE]` not counted).
    pub fn data_events(&self) -> u64 {
        self.data_events
    }

    /// The server's total if it sent one, else the token events seen.
    pub fn tokens(&self) -> u64 {
        self.reported.unwrap_or(self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tgi_events_and_details() {
        let mut c = TokenCounter::new(Api::Tgi);
        c.feed(b"data: {\"token\":{\"id\":1},\"details\":null}\n\ndata: {\"tok");
        assert_eq!(c.tokens(), 1);
        c.feed(b"en\":{\"id\":2},\"details\":{\"generated_tokens\":2}}\n\n");
        assert_eq!((c.events(), c.tokens()), (2, 2));
    }

    #[test]
    fn openai_counts_content_chunks_and_prefers_usage() {
        let mut c = TokenCounter::new(Api::OpenAi);
        c.feed(b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n");
        c.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n");
        c.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"\"},\"finish_reason\":\"length\"}]}\n\n");
        assert_eq!(c.tokens(), 1);
        c.feed(b"data: {\"choices\":[],\"usage\":{\"completion_tokens\":3}}\n\ndata: [DONE]\n\n");
        assert_eq!((c.events(), c.tokens()), (1, 3));
    }

    fn data_events(bytes: &[u8]) -> u64 {
        let mut c = TokenCounter::new(Api::OpenAi);
        c.feed(bytes);
        c.data_events()
    }

    #[test]
    fn events_are_counted_without_done() {
        assert_eq!(data_events(b"data: {}\n\ndata: {}\n\n"), 2);
        assert_eq!(data_events(b"data: {}\n\ndata: [DONE]\n\n"), 1);
        assert_eq!(data_events(b": keep-alive\n\n"), 0);
    }

    #[test]
    fn an_event_boundary_split_over_chunks_is_found() {
        let mut c = TokenCounter::new(Api::Tgi);
        c.feed(b"data: {\"token\":{\"id\":1}}\n");
        assert_eq!(c.data_events(), 0);
        c.feed(b"\ndata: {\"tok");
        assert_eq!(c.data_events(), 1);
    }
}
