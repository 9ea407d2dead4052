//! `/slices`, `/health` and `/metrics` of the front.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::SharedFront;
use crate::api::error::ApiError;
use crate::slices::Slice;
use crate::supervisor::{SlotState, SlotStatus};

/// One slice in `GET /slices`.
#[derive(Debug, Serialize)]
pub struct SliceReport {
    pub id: String,
    pub profile: String,
    pub model: String,
    pub slice: Slice,
    #[serde(flatten)]
    pub status: SlotStatus,
}

/// `GET /slices`: every slice with its model and worker status.
pub async fn slices(State(front): State<SharedFront>) -> Json<Vec<SliceReport>> {
    Json(
        front
            .slots
            .iter()
            .map(|slot| SliceReport {
                id: slot.id().to_string(),
                profile: slot.profile().to_string(),
                model: slot.model().to_string(),
                slice: slot.assignment.slice.clone(),
                status: slot.status(),
            })
            .collect(),
    )
}

/// `GET /health`: 200 when at least one worker is ready.
pub async fn health(State(front): State<SharedFront>) -> Response {
    if front
        .slots
        .iter()
        .any(|slot| slot.status().state == SlotState::Ready)
    {
        StatusCode::OK.into_response()
    } else {
        ApiError::Unhealthy("no worker is ready".into()).into_response()
    }
}

/// `GET /metrics`: per-slice supervisor series in Prometheus text.
pub async fn metrics(State(front): State<SharedFront>) -> Response {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP migserve_slice_state 1 for the state the slice's worker is in"
    );
    let _ = writeln!(out, "# TYPE migserve_slice_state gauge");
    for slot in front.slots.iter() {
        let status = slot.status();
        for state in SlotState::ALL {
            let _ = writeln!(
                out,
                "migserve_slice_state{{{},state=\"{}\"}} {}",
                labels(slot.id(), slot.profile(), slot.model()),
                state.as_str(),
                u8::from(status.state == state)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP migserve_slice_restarts_total Worker restarts after crashes or hangs"
    );
    let _ = writeln!(out, "# TYPE migserve_slice_restarts_total counter");
    for slot in front.slots.iter() {
        let _ = writeln!(
            out,
            "migserve_slice_restarts_total{{{}}} {}",
            labels(slot.id(), slot.profile(), slot.model()),
            slot.status().restarts
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// `slice="…",profile="…",model="…"` with Prometheus escaping.
pub fn labels(slice: &str, profile: &str, model: &str) -> String {
    let esc = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    format!(
        "slice=\"{}\",profile=\"{}\",model=\"{}\"",
        esc(slice),
        esc(profile),
        esc(model)
    )
}
