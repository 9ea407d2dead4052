//! `/slices`, `/health`, `/metrics` and `/v1/models` of the front.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::backend::{Backend, Target};
use super::lifecycle::Listed;
use super::stats::StatsSnapshot;
use super::SharedFront;
use crate::api::error::ApiError;
use crate::api::openai::{ModelCard, ModelList, ModelStatus};
use crate::slices::Slice;
use crate::supervisor::slot::SlotState;

/// One slice in `GET /slices`.
#[derive(Debug, Serialize)]
pub struct SliceReport {
    pub id: String,
    pub profile: String,
    pub model: String,
    /// `local` (supervised here) or `remote`.
    pub location: &'static str,
    /// starting, ready, restarting, failed, stopping, stopped, suspended or unhealthy.
    pub state: &'static str,
    pub url: Option<String>,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub generation: u64,
    pub last_error: Option<String>,
    /// The router's measurements.
    #[serde(flatten)]
    pub stats: StatsSnapshot,
    /// 64-byte prompt chunks the router's prefix index holds for the slice.
    pub prefix_index_chunks: usize,
    /// The device, for local slices.
    pub slice: Option<Slice>,
    /// Bytes of the slice this worker may use when it shares the slice with other workers
    /// (`null`: the whole slice, or a remote worker).
    pub memory_share_bytes: Option<u64>,
}

fn report(backend: &Backend) -> SliceReport {
    let stats = backend.stats.snapshot();
    let (location, url, pid, generation, last_error, slice, share) = match &backend.target {
        Target::Local(slot) => {
            let status = slot.status();
            (
                "local",
                status.url,
                status.pid,
                status.generation,
                status.last_error,
                Some(slot.assignment.slice.clone()),
                slot.assignment.share_bytes,
            )
        }
        Target::Remote { url, .. } => ("remote", Some(url.clone()), None, 0, None, None, None),
    };
    SliceReport {
        id: backend.id.clone(),
        profile: backend.profile.clone(),
        model: backend.model.clone(),
        location,
        state: backend.state(),
        url,
        pid,
        restarts: backend.restarts(),
        generation,
        last_error,
        stats,
        prefix_index_chunks: backend.prefixes.len(),
        slice,
        memory_share_bytes: share,
    }
}

/// `GET /slices`: every slice with its model, worker status and the router's measurements.
pub async fn slices(State(front): State<SharedFront>) -> Json<Vec<SliceReport>> {
    Json(front.backends().iter().map(|b| report(b)).collect())
}

/// `GET /health`: 200 when at least one slice can take requests.
pub async fn health(State(front): State<SharedFront>) -> Response {
    if front.backends().iter().any(|b| b.routable()) {
        StatusCode::OK.into_response()
    } else {
        ApiError::Unhealthy("no worker is ready".into()).into_response()
    }
}

/// `GET /v1/models`: every catalogued model with whether it is loaded, then the models of
/// remote and discovered workers (`loaded` while one of them is healthy).
pub async fn models(State(front): State<SharedFront>) -> Json<ModelList> {
    let mut listed = front.lifecycle.listed();
    let backends = front.backends();
    for b in backends.iter() {
        if !listed.iter().any(|l| l.id == b.model) {
            let up = backends.iter().any(|o| o.model == b.model && o.routable());
            listed.push(Listed {
                id: b.model.clone(),
                state: if up { "loaded" } else { "unloaded" },
            });
        }
    }
    Json(ModelList {
        object: "list".into(),
        data: listed
            .into_iter()
            .map(|l| ModelCard {
                id: l.id,
                object: "model".into(),
                created: 0,
                owned_by: "migserve".into(),
                status: Some(ModelStatus {
                    value: l.state.into(),
                }),
            })
            .collect(),
    })
}

/// Every state a slice can report: the supervisor's, and the router's own two.
fn states() -> impl Iterator<Item = &'static str> {
    SlotState::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(["suspended", "unhealthy", "draining"])
}

/// A per-slice series: name, Prometheus type, help, and its value in a slice's report.
type SliceFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&SliceReport) -> f64,
);

/// The per-slice series of `GET /metrics`.
const SLICE_FAMILIES: &[SliceFamily] = &[
    (
        "migserve_router_in_flight",
        "gauge",
        "Requests the router has in flight on the slice",
        |r| r.stats.in_flight as f64,
    ),
    (
        "migserve_router_queued_tokens",
        "gauge",
        "Estimated prompt plus requested tokens in flight on the slice",
        |r| r.stats.queued_tokens as f64,
    ),
    (
        "migserve_router_requests_total",
        "counter",
        "Requests sent to the slice",
        |r| r.stats.requests as f64,
    ),
    (
        "migserve_router_errors_total",
        "counter",
        "Requests the slice failed (connection errors, 5xx, broken streams)",
        |r| r.stats.errors as f64,
    ),
    (
        "migserve_router_retries_total",
        "counter",
        "Requests moved from the slice to another after a failure or 429",
        |r| r.stats.retries as f64,
    ),
    (
        "migserve_router_stream_resumes_total",
        "counter",
        "Streams broken on the slice (its worker died or failed them) that went on on another",
        |r| r.stats.resumes as f64,
    ),
    (
        "migserve_router_generated_tokens_total",
        "counter",
        "Output tokens relayed from the slice",
        |r| r.stats.generated_tokens as f64,
    ),
    (
        "migserve_router_time_to_first_token_seconds",
        "gauge",
        "Moving average of time to first token",
        |r| r.stats.ttft_secs.unwrap_or(0.0),
    ),
    (
        "migserve_router_time_per_output_token_seconds",
        "gauge",
        "Moving average of time per output token",
        |r| r.stats.tpot_secs.unwrap_or(0.0),
    ),
    (
        "migserve_router_prefill_seconds_per_token",
        "gauge",
        "Cost model: measured seconds per uncached prompt token",
        |r| r.stats.prefill_secs_per_token.unwrap_or(0.0),
    ),
    (
        "migserve_router_prefix_index_chunks",
        "gauge",
        "64-byte prompt chunks the router's prefix index holds for the slice",
        |r| r.prefix_index_chunks as f64,
    ),
    (
        "migserve_router_error_rate",
        "gauge",
        "Share of errors among the slice's last 50 outcomes",
        |r| r.stats.error_rate,
    ),
    (
        "migserve_router_tokens_per_second",
        "gauge",
        "Output tokens per second over the last 30 s",
        |r| r.stats.tokens_per_second,
    ),
    (
        "migserve_slice_restarts_total",
        "counter",
        "Worker restarts after crashes or hangs",
        |r| f64::from(r.restarts),
    ),
];

/// `GET /metrics`: per-slice series in Prometheus text, labelled slice, profile, model.
pub async fn metrics(State(front): State<SharedFront>) -> Response {
    let reports: Vec<(String, SliceReport)> = front
        .backends()
        .iter()
        .map(|b| (labels(&b.id, &b.profile, &b.model), report(b)))
        .collect();
    let mut out = String::new();
    for (name, kind, help, value) in SLICE_FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, r) in &reports {
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(r));
        }
    }
    write_slice_states(&mut out, &reports);
    write_front_connections(&mut out, &front);
    front.lifecycle.write_metrics(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// `migserve_slice_state`: 1 for the state each slice is in, 0 for the others.
fn write_slice_states(out: &mut String, reports: &[(String, SliceReport)]) {
    let _ = writeln!(
        out,
        "# HELP migserve_slice_state 1 for the state the slice is in"
    );
    let _ = writeln!(out, "# TYPE migserve_slice_state gauge");
    for (labels, r) in reports {
        for state in states() {
            let _ = writeln!(
                out,
                "migserve_slice_state{{{labels},state=\"{state}\"}} {}",
                u8::from(r.state == state)
            );
        }
    }
}

/// The front's client-connection series.
fn write_front_connections(out: &mut String, front: &SharedFront) {
    let guard = front.guard_stats();
    for (name, kind, help, value) in [
        (
            "migserve_front_connections_open",
            "gauge",
            "Client connections open on the front",
            guard.open.load(Ordering::Relaxed) as u64,
        ),
        (
            "migserve_front_connections_evicted_total",
            "counter",
            "Client connections not in a request closed to make room at max_connections",
            guard.evicted.load(Ordering::Relaxed),
        ),
        (
            "migserve_front_connections_refused_total",
            "counter",
            "Client connections refused with 503 at max_connections (all were in requests)",
            guard.refused.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
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
