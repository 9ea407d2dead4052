//! API keys: `Authorization: Bearer <key>` on every route of a worker and of the front but
//! `/health`, `/openapi.json` and `/docs` (and `/metrics`, unless `--metrics-need-key`). Keys come from `--api-key` (or
//! `MIGSERVE_API_KEY`) and from a key file (one key per line); a request's key is compared
//! with every configured key in constant time. Keys are never logged: the type that holds
//! them prints only how many there are.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use crate::api::error::{shaped, ApiError};

/// The environment variable a key comes in by (also how `serve` hands its key to workers).
pub const API_KEY_ENV: &str = "MIGSERVE_API_KEY";

/// Where API keys come from.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ApiKeyArgs {
    /// Require this API key (`Authorization: Bearer KEY`) on every route but /health.
    #[arg(long, env = API_KEY_ENV, hide_env_values = true)]
    pub api_key: Option<String>,
    /// Require one of the keys in this file (one per line; blank lines and `#` comments
    /// skipped); with --api-key, either is accepted.
    #[arg(long, env = "MIGSERVE_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Require a key on /metrics too (open by default, for Prometheus).
    #[arg(long)]
    pub metrics_need_key: bool,
}

/// The keys a server accepts.
#[derive(Clone)]
pub struct ApiKeys {
    keys: Vec<Vec<u8>>,
    metrics_need_key: bool,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

impl ApiKeys {
    /// The keys `args` name, or `None` when none are configured (the server is open).
    pub fn from_args(args: &ApiKeyArgs) -> anyhow::Result<Option<Arc<Self>>> {
        let mut keys = Vec::new();
        if let Some(key) = &args.api_key {
            keys.push(key.trim().to_string());
        }
        if let Some(path) = &args.api_key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the API key file {}", path.display()))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
            if keys.is_empty() {
                bail!("the API key file {} holds no key", path.display());
            }
        }
        if keys.iter().any(String::is_empty) {
            bail!("an API key cannot be empty");
        }
        if keys
            .iter()
            .any(|k| HeaderValue::from_str(&format!("Bearer {k}")).is_err())
        {
            bail!("an API key must be printable ASCII (it travels in an HTTP header)");
        }
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Self {
            keys: keys.into_iter().map(String::into_bytes).collect(),
            metrics_need_key: args.metrics_need_key,
        })))
    }

    /// A new random key for the workers a keyed `serve` supervises: its clients' keys are
    /// never handed on.
    pub fn worker_key() -> String {
        format!("migserve-{:032x}", rand::random::<u128>())
    }

    /// Whether `key` is one of the keys.
    pub fn accepts_key(&self, key: &str) -> bool {
        self.keys
            .iter()
            .fold(false, |ok, k| ok | constant_time_eq(k, key.as_bytes()))
    }

    /// Whether `path` may be called without a key.
    fn is_open(&self, path: &str) -> bool {
        matches!(path, "/health" | "/openapi.json" | "/docs")
            || (path == "/metrics" && !self.metrics_need_key)
    }

    /// Whether the request's `Authorization` header holds one of the keys.
    pub fn accepts(&self, headers: &HeaderMap) -> bool {
        // The scheme is case-insensitive (RFC 7235).
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
            .map(|v| &v[7..])
        else {
            return false;
        };
        // Every key is compared, whatever matched before.
        self.keys
            .iter()
            .fold(false, |ok, key| ok | constant_time_eq(key, given))
    }
}

/// Byte equality whose time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Middleware: 401 in the route's error shape (OpenAI's under `/v1/`, else TGI's) without
/// a valid key.
pub async fn require_key(
    State(keys): State<Arc<ApiKeys>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if keys.is_open(path) || keys.accepts(request.headers()) {
        return next.run(request).await;
    }
    let why = match request.headers().contains_key(header::AUTHORIZATION) {
        true => "invalid API key",
        false => "missing API key: send `Authorization: Bearer <key>`",
    };
    let mut response = shaped(path, ApiError::Unauthorized(why.into()));
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// `router` behind [`require_key`] when `keys` are configured.
pub fn protect(router: axum::Router, keys: Option<Arc<ApiKeys>>) -> axum::Router {
    match keys {
        Some(keys) => router.layer(axum::middleware::from_fn_with_state(keys, require_key)),
        None => router,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> ApiKeys {
        ApiKeys {
            keys: list.iter().map(|k| k.as_bytes().to_vec()).collect(),
            metrics_need_key: false,
        }
    }

    fn bearer(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn any_configured_key_is_accepted_and_nothing_else() {
        let k = keys(&["alpha", "beta-key"]);
        assert!(k.accepts(&bearer("Bearer alpha")));
        assert!(k.accepts(&bearer("Bearer beta-key")));
        for bad in [
            "Bearer alph",
            "Bearer alphaa",
            "alpha",
            "Basic alpha",
            "Bearer ",
        ] {
            assert!(!k.accepts(&bearer(bad)), "{bad}");
        }
        assert!(!k.accepts(&HeaderMap::new()));
        assert!(k.is_open("/health") && k.is_open("/metrics") && !k.is_open("/info"));
        assert_eq!(
            format!("{k:?}"),
            "ApiKeys(2 keys)",
            "keys are never printed"
        );
    }

    #[test]
    fn keys_come_from_the_flag_and_the_file() {
        let dir = std::env::temp_dir().join(format!("migserve-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        std::fs::write(&file, "# ops\nfirst\n\n  second  \n").unwrap();
        let args = ApiKeyArgs {
            api_key: Some("flag".into()),
            api_key_file: Some(file.clone()),
            metrics_need_key: true,
        };
        let k = ApiKeys::from_args(&args).unwrap().unwrap();
        assert!(k.accepts(&bearer("Bearer second")) && k.accepts(&bearer("Bearer flag")));
        assert_ne!(ApiKeys::worker_key(), ApiKeys::worker_key());
        assert!(!k.is_open("/metrics"));
        std::fs::write(&file, "# nothing\n").unwrap();
        let e = ApiKeys::from_args(&ApiKeyArgs {
            api_key_file: Some(file),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("holds no key"), "{e}");
        assert!(ApiKeys::from_args(&ApiKeyArgs::default())
            .unwrap()
            .is_none());
    }
}
