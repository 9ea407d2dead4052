//! API errors: each has an HTTP status and an `error_type` label shared by the body and metrics.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use migserve_engine::{EngineError, Field, Invalid, LengthLimit, TooLong};
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
    /// `prompt`): length errors in OpenAI's words, and refusals of a field naming its OpenAI
    /// `param`.
    pub fn from_engine_openai(e: EngineError, prompt_field: &str) -> Self {
        match e {
            EngineError::TooLong(t) => ApiError::param(
                openai_length_param(&t, prompt_field),
                "context_length_exceeded",
                openai_length_message(&t, prompt_field),
            ),
            EngineError::Validation(Invalid {
                field: Some(field),
                reason,
            }) => match openai_param(field, prompt_field) {
                Some(param) => ApiError::param(param, "invalid_value", reason),
                None => ApiError::Validation(reason),
            },
            other => other.into(),
        }
    }
}

/// The OpenAI request field an engine rule's field is, where OpenAI has one.
fn openai_param(field: Field, prompt_field: &str) -> Option<&str> {
    Some(match field {
        Field::Prompt => prompt_field,
        Field::MaxNewTokens => "max_tokens",
        Field::MinNewTokens => "min_tokens",
        // Completions name the number of alternatives `logprobs`.
        Field::TopLogprobs if prompt_field == "prompt" => "logprobs",
        Field::TopLogprobs => "top_logprobs",
        Field::Stop => "stop",
        Field::IgnoreEos => "ignore_eos",
        Field::Temperature => "temperature",
        Field::TopP => "top_p",
        Field::TopK => "top_k",
        Field::RepetitionPenalty => "repetition_penalty",
        Field::PresencePenalty => "presence_penalty",
        Field::FrequencyPenalty => "frequency_penalty",
        Field::LogitBias => "logit_bias",
        Field::Grammar => "response_format",
        Field::Truncate | Field::Resume => return None,
    })
}

/// A length error in OpenAI's words, where the prompt is called `prompt_field`.
fn openai_length_message(t: &TooLong, prompt_field: &str) -> String {
    let (input, limit, n) = (t.prompt_tokens, t.limit, t.new_tokens);
    match t.limit_kind {
        // No room: the prompt takes the whole total, one token short of a reply.
        LengthLimit::Prompt | LengthLimit::NoRoom => {
            let max_input = match t.limit_kind {
                LengthLimit::NoRoom => limit.saturating_sub(1),
                _ => limit,
            };
            format!(
                "This model's maximum input length is {max_input} tokens. However, your {prompt_field} resulted in {input} tokens. Please reduce the length of the {prompt_field}."
            )
        }
        LengthLimit::Total | LengthLimit::Cache => format!(
            "This model's maximum context length is {limit} tokens. However, you requested {} tokens ({input} in the {prompt_field}, {n} in the completion). Please reduce the length of the {prompt_field} or completion.",
            input + n
        ),
    }
}

/// The OpenAI field a length error blames: the prompt when it alone is too long, else
/// `max_tokens`.
fn openai_length_param<'a>(t: &TooLong, prompt_field: &'a str) -> &'a str {
    match t.limit_kind {
        LengthLimit::Prompt | LengthLimit::NoRoom => prompt_field,
        LengthLimit::Total | LengthLimit::Cache => "max_tokens",
    }
}

impl From<EngineError> for ApiError {
    /// The engine's errors as HTTP errors (their `error_type` labels are kept).
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Validation(m) => ApiError::Validation(m.reason),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_errors_in_openais_words() {
        let too_long = |limit_kind, limit, prompt_tokens, new_tokens| TooLong {
            limit_kind,
            limit,
            prompt_tokens,
            new_tokens,
        };
        let t = too_long(LengthLimit::Prompt, 10, 12, 0);
        assert!(
            openai_length_message(&t, "messages").contains("your messages resulted in 12 tokens")
        );
        assert_eq!(openai_length_param(&t, "messages"), "messages");
        let t = too_long(LengthLimit::Total, 20, 5, 16);
        assert!(openai_length_message(&t, "prompt")
            .contains("you requested 21 tokens (5 in the prompt, 16 in the completion)"));
        assert_eq!(openai_length_param(&t, "prompt"), "max_tokens");
    }

    #[test]
    fn an_engine_refusal_of_a_field_names_openais_param() {
        let refused = |field, prompt_field| {
            let e = EngineError::invalid(field, "bad value");
            ApiError::from_engine_openai(e, prompt_field)
                .openai_body()
                .error
        };
        let stop = refused(Some(Field::Stop), "messages");
        assert_eq!(
            (stop.param.as_deref(), stop.message.as_str()),
            (Some("stop"), "bad value")
        );
        assert_eq!(
            refused(Some(Field::Prompt), "prompt").param.as_deref(),
            Some("prompt")
        );
        assert_eq!(
            refused(Some(Field::TopLogprobs), "prompt").param.as_deref(),
            Some("logprobs")
        );
        let whole = refused(None, "messages");
        assert_eq!(
            (whole.param, whole.code.as_deref()),
            (None, Some("validation"))
        );
    }
}
