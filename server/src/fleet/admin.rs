//! The admin API of the front, in the shape of llama.cpp's router mode: `GET /models`,
//! `POST /models/load`, `POST /models/unload`, and `POST /reload` (what `migserve reload`
//! and SIGHUP do). Every route needs the admin key (`--admin-key`), never a client key;
//! without one they are open only on a server with no API keys at all. Errors come in
//! OpenAI's shape, as llama.cpp's do.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::Fleet;
use crate::api::error::{ApiError, OpenAiError};
use crate::auth::{ApiKeyArgs, ApiKeys};

/// The environment variable the admin key comes in by.
pub const ADMIN_KEY_ENV: &str = "MIGSERVE_ADMIN_KEY";

/// Where the admin key comes from.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AdminKeyArgs {
    /// Require this key (`Authorization: Bearer KEY`) on the admin routes (/models,
    /// /models/load, /models/unload, /reload); a client API key never opens them. Without
    /// it they are open only when the server has no API keys at all.
    #[arg(long, env = ADMIN_KEY_ENV, hide_env_values = true)]
    pub admin_key: Option<String>,
}

/// Who may call the admin routes.
#[derive(Debug, Clone)]
pub enum AdminAccess {
    /// Holders of this key.
    Key(Arc<ApiKeys>),
    /// Anyone (a server with no keys at all).
    Open,
    /// Nobody: the server has client keys but no admin key.
    Closed,
}

impl AdminAccess {
    /// The access `args` give a server whose clients need `client_keys` (if any).
    pub fn from_args(args: &AdminKeyArgs, client_keys: Option<&ApiKeys>) -> anyhow::Result<Self> {
        let Some(key) = &args.admin_key else {
            return Ok(match client_keys {
                Some(_) => AdminAccess::Closed,
                None => AdminAccess::Open,
            });
        };
        let keys = ApiKeys::from_args(&ApiKeyArgs {
            api_key: Some(key.clone()),
            ..Default::default()
        })?
        .ok_or_else(|| anyhow::anyhow!("the admin key cannot be empty"))?;
        if client_keys.is_some_and(|c| c.accepts_key(key.trim())) {
            anyhow::bail!("the admin key must differ from every client API key");
        }
        Ok(AdminAccess::Key(keys))
    }
}

/// The admin routes over `fleet`, behind `access`.
pub fn routes(fleet: Arc<Fleet>, access: AdminAccess) -> Router {
    Router::new()
        .route("/models", get(list))
        .route("/models/load", post(load))
        .route("/models/unload", post(unload))
        .route("/reload", post(reload))
        .with_state(fleet)
        .layer(axum::middleware::from_fn_with_state(access, require_admin))
}

async fn require_admin(
    State(access): State<AdminAccess>,
    request: Request,
    next: Next,
) -> Response {
    let refusal = match &access {
        AdminAccess::Open => None,
        AdminAccess::Key(keys) if keys.accepts(request.headers()) => None,
        AdminAccess::Key(_) => Some(match request.headers().contains_key(header::AUTHORIZATION) {
            true => "invalid admin key",
            false => "missing admin key: send `Authorization: Bearer <admin key>`",
        }),
        AdminAccess::Closed => Some(
            "the admin routes are closed: this server has API keys but no admin key (start it with --admin-key)",
        ),
    };
    match refusal {
        None => next.run(request).await,
        Some(why) => {
            let mut response = OpenAiError(ApiError::Unauthorized(why.into())).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// `GET /models`: every catalogued model with its state, replicas, last use, load time,
/// memory and counts.
async fn list(State(fleet): State<Arc<Fleet>>) -> Response {
    Json(serde_json::json!({"object": "list", "data": fleet.cards()})).into_response()
}

/// Body of `POST /models/load` and `/models/unload`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelCall {
    /// A catalogued model name (never a path).
    model: String,
    /// A slice id or UUID: load there, or unload only the replica there.
    #[serde(default)]
    slice: Option<String>,
    /// Load only: answer once the model is loaded (default) or at once.
    #[serde(default = "yes")]
    wait: bool,
}

fn yes() -> bool {
    true
}

fn parse(body: &Bytes) -> Result<ModelCall, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::Validation(format!(
            "invalid body: {e} (expected {{\"model\": NAME, \"slice\"?: ID}})"
        ))
    })
}

fn answer(result: Result<serde_json::Value, ApiError>) -> Response {
    match result {
        Ok(card) => Json(serde_json::json!({"success": true, "model": card})).into_response(),
        Err(e) => OpenAiError(e).into_response(),
    }
}

/// `POST /models/load {"model", "slice"?, "wait"?}`: loads a catalogued model (on that
/// slice, making room there if needed); answers with its card once loaded.
async fn load(State(fleet): State<Arc<Fleet>>, body: Bytes) -> Response {
    let call = match parse(&body) {
        Ok(c) => c,
        Err(e) => return OpenAiError(e).into_response(),
    };
    answer(
        fleet
            .load(&call.model, call.slice.as_deref(), call.wait)
            .await,
    )
}

/// `POST /models/unload {"model", "slice"?}`: drains the model's unpinned replicas (or the
/// one on that slice); answers once they have stopped. Requests in flight finish first.
async fn unload(State(fleet): State<Arc<Fleet>>, body: Bytes) -> Response {
    let call = match parse(&body) {
        Ok(c) => c,
        Err(e) => return OpenAiError(e).into_response(),
    };
    answer(fleet.unload(&call.model, call.slice.as_deref()).await)
}

/// `POST /reload`: reads the config file again and applies the difference (the report), or
/// refuses it whole (422 with the reason) and changes nothing.
async fn reload(State(fleet): State<Arc<Fleet>>) -> Response {
    match fleet.reload_from_source() {
        Ok(report) => Json(report).into_response(),
        Err(e) => OpenAiError(ApiError::Validation(e)).into_response(),
    }
}
