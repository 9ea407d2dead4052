//! What a worker tells the front about a request it answered, in response headers: the
//! contract between `migserve worker` and the router's cost model, statistics and access log.
//! One type writes the headers ([`WorkerReport::write_to`]) and reads them back
//! ([`WorkerReport::from_headers`]), so a renamed header cannot silently feed zeros into
//! the router. Times travel as whole milliseconds (TGI's convention); any field may be
//! missing (a stream's headers go out before anything is counted; a remote server may not
//! send them).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};

/// The headers' names.
pub mod names {
    /// Time waiting in the worker's queue (the front adds its own wait), ms.
    pub const QUEUE_TIME: &str = "x-queue-time";
    /// Time from arrival to the first token, ms.
    pub const TIME_TO_FIRST_TOKEN: &str = "x-time-to-first-token";
    /// Time from first scheduling to the end, ms.
    pub const INFERENCE_TIME: &str = "x-inference-time";
    /// Inference time per generated token, ms.
    pub const TIME_PER_TOKEN: &str = "x-time-per-token";
    /// Prompt tokens (every choice of the answer).
    pub const PROMPT_TOKENS: &str = "x-prompt-tokens";
    /// Prompt tokens the prefix cache held.
    pub const PROMPT_CACHED_TOKENS: &str = "x-prompt-cached-tokens";
    /// Tokens generated (every choice of the answer).
    pub const GENERATED_TOKENS: &str = "x-generated-tokens";
    /// The size of the worker's KV cache, in tokens.
    pub const KV_CACHE_TOKENS: &str = "x-kv-cache-tokens";
    /// The model that answered.
    pub const MODEL: &str = "x-model";
    /// The slice that answered.
    pub const SLICE: &str = "x-slice";
}

/// A worker's account of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub queue: Option<Duration>,
    pub time_to_first_token: Option<Duration>,
    pub inference: Option<Duration>,
    pub per_token: Option<Duration>,
    pub prompt_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub generated_tokens: Option<u64>,
    pub kv_cache_tokens: Option<u64>,
}

impl WorkerReport {
    /// Writes every field present as its header (replacing one already there).
    pub fn write_to(&self, headers: &mut HeaderMap) {
        let durations = [
            (names::QUEUE_TIME, self.queue),
            (names::TIME_TO_FIRST_TOKEN, self.time_to_first_token),
            (names::INFERENCE_TIME, self.inference),
            (names::TIME_PER_TOKEN, self.per_token),
        ];
        for (name, value) in durations {
            if let Some(d) = value {
                headers.insert(name, HeaderValue::from(d.as_millis() as u64));
            }
        }
        let counts = [
            (names::PROMPT_TOKENS, self.prompt_tokens),
            (names::PROMPT_CACHED_TOKENS, self.cached_tokens),
            (names::GENERATED_TOKENS, self.generated_tokens),
            (names::KV_CACHE_TOKENS, self.kv_cache_tokens),
        ];
        for (name, value) in counts {
            if let Some(n) = value {
                headers.insert(name, HeaderValue::from(n));
            }
        }
    }

    /// The report's headers alone.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.write_to(&mut headers);
        headers
    }

    /// Reads a report back from response headers (a field whose header is missing or not a
    /// whole number stays `None`).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let count = |name: &str| header_u64(headers, name);
        let millis = |name: &str| count(name).map(Duration::from_millis);
        Self {
            queue: millis(names::QUEUE_TIME),
            time_to_first_token: millis(names::TIME_TO_FIRST_TOKEN),
            inference: millis(names::INFERENCE_TIME),
            per_token: millis(names::TIME_PER_TOKEN),
            prompt_tokens: count(names::PROMPT_TOKENS),
            cached_tokens: count(names::PROMPT_CACHED_TOKENS),
            generated_tokens: count(names::GENERATED_TOKENS),
            kv_cache_tokens: count(names::KV_CACHE_TOKENS),
        }
    }
}

/// A header's value as a whole number.
pub fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_round_trips_through_its_headers_to_the_millisecond() {
        let report = WorkerReport {
            queue: Some(Duration::from_micros(12_700)),
            time_to_first_token: Some(Duration::from_millis(40)),
            inference: Some(Duration::from_millis(900)),
            per_token: Some(Duration::from_millis(14)),
            prompt_tokens: Some(31),
            cached_tokens: Some(16),
            generated_tokens: Some(64),
            kv_cache_tokens: Some(65_536),
        };
        let back = WorkerReport::from_headers(&report.to_headers());
        let expected = WorkerReport {
            queue: Some(Duration::from_millis(12)),
            ..report
        };
        assert_eq!(back, expected);
    }

    #[test]
    fn missing_or_garbled_headers_stay_unknown() {
        let mut headers = HeaderMap::new();
        headers.insert(names::GENERATED_TOKENS, HeaderValue::from_static("seven"));
        headers.insert(names::KV_CACHE_TOKENS, HeaderValue::from_static("4096"));
        let report = WorkerReport::from_headers(&headers);
        assert_eq!(report.generated_tokens, None);
        assert_eq!(report.queue, None);
        assert_eq!(report.kv_cache_tokens, Some(4096));
    }
}
