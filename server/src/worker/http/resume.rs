//! The worker's side of streams that continue elsewhere ([`crate::api::resume`]): reading the
//! front's headers, marking stream events, and starting a request from a [`Resume`].

use axum::http::HeaderMap;
use axum::response::sse::Event;
use migserve_engine::{EngineError, GenerateRequest};

use crate::api::error::ApiError;
use crate::api::resume::{Mark, Resume, RESUMABLE_HEADER, RESUME_HEADER};

/// What the front asked of a stream.
#[derive(Debug, Default)]
pub struct StreamResume {
    /// Mark each event ([`Mark`]).
    pub marked: bool,
    /// Continue an answer begun elsewhere.
    pub from: Option<Resume>,
}

impl StreamResume {
    /// From a request's headers; a [`RESUME_HEADER`] that does not parse is a 400.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let from = match headers.get(RESUME_HEADER) {
            Some(value) => Some(serde_json::from_slice::<Resume>(value.as_bytes()).map_err(
                |e| ApiError::Validation(format!("`{RESUME_HEADER}` is not a resume point: {e}")),
            )?),
            None => None,
        };
        Ok(Self {
            marked: headers.contains_key(RESUMABLE_HEADER) || from.is_some(),
            from,
        })
    }

    /// Makes `request` continue from the resume point (its tokens and seed), if any.
    pub fn apply(&self, request: &mut GenerateRequest) {
        if let Some(from) = &self.from {
            request.resume = from.tokens.clone();
            if from.seed.is_some() {
                request.sampling.seed = from.seed;
            }
        }
    }

    /// The id and creation time of an OpenAI answer being continued.
    pub fn identity(&self) -> Option<(String, u64)> {
        let from = self.from.as_ref()?;
        Some((from.id.clone()?, from.created?))
    }
}

/// The marks of one stream's events (nothing, for a stream the front did not ask to mark):
/// the tokens read since the last marked event, and on the first mark `opening`'s fields.
#[derive(Debug, Default)]
pub struct Marker {
    on: bool,
    opening: Option<Mark>,
    read: Vec<u32>,
}

impl Marker {
    /// Marks when `on`; the first mark carries `opening` (the seed, an OpenAI answer's id).
    pub fn new(on: bool, opening: Mark) -> Self {
        Self {
            on,
            opening: Some(opening),
            read: Vec::new(),
        }
    }

    /// A token whose output goes out with the next marked event.
    pub fn read(&mut self, token: u32) {
        if self.on {
            self.read.push(token);
        }
    }

    /// Forgets the tokens read (a resumed answer's earlier ones: another worker sent them).
    pub fn forget(&mut self) {
        self.read.clear();
    }

    /// `event` marked with the tokens read since the last mark; `end`: it completes the answer.
    pub fn token_event(&mut self, event: Event, end: bool) -> Event {
        if !self.on {
            return event;
        }
        let mark = Mark {
            tokens: std::mem::take(&mut self.read),
            end,
            ..self.opening.take().unwrap_or_default()
        };
        event.comment(mark.comment())
    }

    /// An error event for `e`, marked `retry` when it is the worker's fault rather than the
    /// request's (so that another worker may continue the stream).
    pub fn failure_event(&mut self, event: Event, e: &EngineError) -> Event {
        if !self.on {
            return event;
        }
        let retry = matches!(
            e,
            EngineError::Generation(_) | EngineError::Crashed(_) | EngineError::Unavailable(_)
        );
        event.comment(
            Mark {
                retry,
                ..Mark::default()
            }
            .comment(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_ask_for_marks_and_give_the_resume_point() {
        let mut h = HeaderMap::new();
        assert!(!StreamResume::from_headers(&h).unwrap().marked);
        h.insert(RESUMABLE_HEADER, "1".parse().unwrap());
        assert!(StreamResume::from_headers(&h).unwrap().marked);
        h.insert(
            RESUME_HEADER,
            r#"{"tokens":[5,6],"seed":9,"id":"cmpl-1","created":3}"#
                .parse()
                .unwrap(),
        );
        let r = StreamResume::from_headers(&h).unwrap();
        let mut request = GenerateRequest::new(migserve_engine::Prompt::Text("x".into()));
        r.apply(&mut request);
        assert_eq!(request.resume, [5, 6]);
        assert_eq!(request.sampling.seed, Some(9));
        assert_eq!(r.identity(), Some(("cmpl-1".into(), 3)));
        h.insert(RESUME_HEADER, "nope".parse().unwrap());
        assert!(StreamResume::from_headers(&h).is_err());
    }
}
