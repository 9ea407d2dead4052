//! Counting the tokens of a relayed SSE stream: token events as they pass, and the server's
//! own total (TGI `details.generated_tokens`, OpenAI `usage.completion_tokens`) when it sends
//! one.

use serde_json::Value;

use super::proxy::Api;

/// Consumes a stream's bytes, event by event.
#[derive(Debug)]
pub struct TokenCounter {
    api: Api,
    pending: Vec<u8>,
    events: u64,
    reported: Option<u64>,
}

impl TokenCounter {
    pub fn new(api: Api) -> Self {
        Self {
            api,
            pending: Vec::new(),
            events: 0,
            reported: None,
        }
    }

    /// Feeds the next chunk (events may span chunks).
    pub fn feed(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.pending.drain(..end + 2).collect();
            for line in event.split(|b| *b == b'\n') {
                if let Some(data) = line.strip_prefix(b"data:") {
                    self.data(data);
                }
            }
        }
    }

    fn data(&mut self, data: &[u8]) {
        let Ok(value) = serde_json::from_slice::<Value>(data.trim_ascii()) else {
            return; // `[DONE]` or not JSON
        };
        match self.api {
            Api::Tgi => {
                if value.get("token").is_some() {
                    self.events += 1;
                }
                if let Some(n) = value
                    .get("details")
                    .and_then(|d| d.get("generated_tokens"))
                    .and_then(Value::as_u64)
                {
                    self.reported = Some(n);
                }
            }
            Api::OpenAi => {
                let content = value
                    .get("choices")
                    .and_then(|c| c.get(0))
                    .and_then(|c| {
                        c.get("delta")
                            .and_then(|d| d.get("content"))
                            .or_else(|| c.get("text"))
                    })
                    .and_then(Value::as_str);
                if content.is_some_and(|t| !t.is_empty()) {
                    self.events += 1;
                }
                if let Some(n) = value
                    .get("usage")
                    .and_then(|u| u.get("completion_tokens"))
                    .and_then(Value::as_u64)
                {
                    self.reported = Some(n);
                }
            }
        }
    }

    /// Token events seen so far.
    pub fn events(&self) -> u64 {
        self.events
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
}
