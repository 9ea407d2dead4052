//! Cut streams: a layer over the worker's routes that drops the connection of every Nth
//! event stream after its second chunk, as a worker dying mid-stream would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;

/// Which streams to cut.
#[derive(Debug, Default)]
pub struct CutEvery {
    every: u64,
    streams: AtomicU64,
}

impl CutEvery {
    /// Cuts every `every`-th stream (0: none).
    pub fn new(every: u64) -> Arc<Self> {
        Arc::new(Self {
            every,
            streams: AtomicU64::new(0),
        })
    }
}

/// The middleware (`axum::middleware::from_fn_with_state(CutEvery::new(n), cut_streams)`).
pub async fn cut_streams(
    State(cut): State<Arc<CutEvery>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let is_stream = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !is_stream || cut.every == 0 {
        return response;
    }
    let number = cut.streams.fetch_add(1, Ordering::Relaxed) + 1;
    if !number.is_multiple_of(cut.every) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let mut chunks = 0u32;
    let cut_body = body.into_data_stream().map(move |chunk| {
        chunks += 1;
        match chunk {
            // An error in the body makes the server drop the connection mid-stream.
            Ok(_) if chunks > 2 => Err(axum::BoxError::from("injected cut")),
            Ok(bytes) => Ok(bytes),
            Err(e) => Err(axum::BoxError::from(e)),
        }
    });
    Response::from_parts(parts, Body::from_stream(cut_body))
}
