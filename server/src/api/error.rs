//! API errors: each has an HTTP status and an `error_type` label shared by the body and metrics.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use migserve_engine::EngineError;
use serde::Serialize;

/// An error returned to an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or asks for something outside the limits (422; 400 on
    /// OpenAI routes).
    #[error("{0}")]
    Validation(String),
    /// One named field is missing or out of range (as `Validation`; OpenAI's body names it
    /// in `param`, with OpenAI's `code`).
    #[error("{message}")]
    InvalidParam {
        param: String,
        message: String,
        code: &'static str,
    },
    /// No valid API key came with the request (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The route exists but not for this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The body is larger than the server accepts (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body did not arrive within the server's body-read timeout (408).
    #[error("{0}")]
    RequestTimeout(String),
    /// Generation failed after the request was accepted (424).
    #[error("{0}")]
    Generation(String),
    /// Too many requests in flight (429).
    #[error("{0}")]
    Overloaded(String),
    /// The server cannot serve right now (503).
    #[error("{0}")]
    Unhealthy(String),
    /// No such model or route (404).
    #[error("{0}")]
    NotFound(String),
    /// The engine crashed while the request was in flight (500); the worker restarts.
    #[error("{0}")]
    Crashed(String),
    /// The requested model can go on no slice of this machine (too big, wrong device): 422
    /// (400 on OpenAI routes), naming the model and what it needs.
    #[error("{0}")]
    Unplaceable(String),
    /// The request conflicts with the server's state (an admin call: unload a pinned
    /// model, load past `max_replicas`) (409).
    #[error("{0}")]
    Conflict(String),
}

impl ApiError {
    /// The HTTP status code.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) | ApiError::InvalidParam { .. } | ApiError::Unplaceable(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Generation(_) => StatusCode::FAILED_DEPENDENCY,
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unhealthy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Crashed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error_type` label (TGI's names where TGI has one).
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Validation(_) | ApiError::InvalidParam { .. } => "validation",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Generation(_) => "generation",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Unhealthy(_) => "unhealthy",
            ApiError::NotFound(_) => "not_found",
            ApiError::Crashed(_) => "engine_crashed",
            ApiError::Unplaceable(_) => "unplaceable",
            ApiError::Conflict(_) => "conflict",
        }
    }

    /// TGI's error body.
    pub fn tgi_body(&self) -> TgiErrorBody {
        TgiErrorBody {
            error: self.to_string(),
            error_type: self.error_type().to_string(),
        }
    }

    /// A missing or bad value of the OpenAI field `param`.
    pub fn param(param: &str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::InvalidParam {
            param: param.to_string(),
            message: message.into(),
            code,
        }
    }

    /// The status on OpenAI routes: as [`ApiError::status`], but 400 for a bad request
    /// (OpenAI's and vLLM's status; TGI's is 422).
    pub fn openai_status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) | ApiError::InvalidParam { .. } | ApiError::Unplaceable(_) => {
                StatusCode::BAD_REQUEST
            }
            other => other.status(),
        }
    }

    /// OpenAI's error body.
    pub fn openai_body(&self) -> OpenAiErrorBody {
        let kind = match self {
            ApiError::Validation(_)
            | ApiError::InvalidParam { .. }
            | ApiError::PayloadTooLarge(_)
            | ApiError::RequestTimeout(_)
            | ApiError::MethodNotAllowed(_)
            | ApiError::Unplaceable(_)
            | ApiError::Conflict(_) => "invalid_request_error",
            ApiError::Unauthorized(_) => "authentication_error",
            ApiError::NotFound(_) => "not_found_error",
            ApiError::Overloaded(_) => "rate_limit_error",
            ApiError::Generation(_) | ApiError::Unhealthy(_) | ApiError::Crashed(_) => {
                "server_error"
            }
        };
        let (param, code) = match self {
            ApiError::InvalidParam { param, code, .. } => (Some(param.clone()), *code),
            ApiError::Unauthorized(_) => (None, "invalid_api_key"),
            other => (None, other.error_type()),
        };
        OpenAiErrorBody {
            error: OpenAiErrorDetail {
                message: self.to_string(),
                kind: kind.to_string(),
                param,
                code: Some(code.to_string()),
            },
        }
    }

    /// An engine error on an OpenAI route whose prompt field is `prompt_field` (`messages`,
    /// `prompt`): length errors in OpenAI's words, naming the field.
    pub fn from_engine_openai(e: EngineError, prompt_field: &str) -> Self {
        match e {
            EngineError::TooLong(t) => ApiError::param(
                t.openai_param(prompt_field),
                "context_length_exceeded",
                t.openai_message(prompt_field),
            ),
            other => other.into(),
        }
    }
}

impl From<EngineError> for ApiError {
    /// The engine's errors as HTTP errors (their `error_type` labels are kept).
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Validation(m) => ApiError::Validation(m),
            EngineError::TooLong(t) => ApiError::Validation(t.to_string()),
            EngineError::Overloaded(m) => ApiError::Overloaded(m),
            EngineError::Unavailable(m) => ApiError::Unhealthy(m),
            EngineError::Generation(m) => ApiError::Generation(m),
            EngineError::Crashed(m) => ApiError::Crashed(m),
        }
    }
}

/// `{"error": "...", "error_type": "..."}` as TGI sends it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TgiErrorBody {
    pub error: String,
    pub error_type: String,
}

/// `{"error": {"message", "type", "param", "code"}}` as OpenAI sends it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

/// The inner object of an OpenAI error.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::metrics::count_error(self.error_type());
        (self.status(), Json(self.tgi_body())).into_response()
    }
}

/// An [`ApiError`] rendered in OpenAI's shape (for `/v1/*`).
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        crate::metrics::count_error(self.0.error_type());
        (self.0.openai_status(), Json(self.0.openai_body())).into_response()
    }
}

/// `error` in the shape of the API `path` belongs to (OpenAI's under `/v1/`, else TGI's).
pub fn shaped(path: &str, error: ApiError) -> Response {
    match path.starts_with("/v1/") {
        true => OpenAiError(error).into_response(),
        false => error.into_response(),
    }
}

/// Fallback for unknown routes: 404 with an error body.
pub async fn route_not_found(uri: axum::http::Uri) -> Response {
    shaped(
        uri.path(),
        ApiError::NotFound(format!("no route {}", uri.path())),
    )
}

/// Fallback for a known route called with the wrong method: 405 with an error body.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    shaped(
        uri.path(),
        ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path())),
    )
}
