//! The OpenAPI 3.1 document of the API (`GET /openapi.json`), generated from the wire types,
//! and a self-contained page that renders it (`GET /docs`: no script or style from elsewhere).
//!
//! The functions below only carry each route's description for the document; the handlers
//! are the worker's (`worker/http`) and the front's (`router`).

#![allow(dead_code)]

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use super::error::{OpenAiErrorBody, TgiErrorBody};
use super::openai::{
    ChatChunk, ChatRequest, ChatResponse, CompletionRequest, CompletionResponse, ModelList,
};
use super::tgi::{GenerateRequest, GenerateResponse, Info, StreamResponse};
use super::tokenize::{ChatTokenizeResponse, DetokenizeRequest, DetokenizeResponse, SimpleToken};

/// Generate text; with `"stream": true` the events of `/generate_stream`.
#[utoipa::path(post, path = "/", tag = "Text Generation Inference",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "The generated text, or a stream of events", body = GenerateResponse),
        (status = 422, description = "Invalid input", body = TgiErrorBody),
        (status = 429, description = "Too many requests in flight", body = TgiErrorBody),
    ))]
fn compat_generate() {}

/// Generate text.
#[utoipa::path(post, path = "/generate", tag = "Text Generation Inference",
    request_body = GenerateRequest,
    params(("x-model" = Option<String>, Header, description = "Model (through `serve`; default: the first)")),
    responses(
        (status = 200, description = "The generated text", body = GenerateResponse),
        (status = 413, description = "Body too large", body = TgiErrorBody),
        (status = 422, description = "Invalid input", body = TgiErrorBody),
        (status = 424, description = "Generation failed", body = TgiErrorBody),
        (status = 429, description = "Too many requests in flight", body = TgiErrorBody),
        (status = 503, description = "No worker can take it", body = TgiErrorBody),
    ))]
fn generate() {}

/// Generate text as server-sent events, one per token; the last carries `generated_text` and
/// `details`.
#[utoipa::path(post, path = "/generate_stream", tag = "Text Generation Inference",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "Server-sent events", body = StreamResponse, content_type = "text/event-stream"),
        (status = 422, description = "Invalid input", body = TgiErrorBody),
        (status = 429, description = "Too many requests in flight", body = TgiErrorBody),
    ))]
fn generate_stream() {}

/// Tokenize a prompt as the model would (`inputs`; the other fields are ignored).
#[utoipa::path(post, path = "/tokenize", tag = "Text Generation Inference",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "The prompt's tokens", body = Vec<SimpleToken>),
        (status = 422, description = "Invalid input", body = TgiErrorBody),
    ))]
fn tokenize() {}

/// Render a chat request through the model's chat template and tokenize it.
#[utoipa::path(post, path = "/chat_tokenize", tag = "Text Generation Inference",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The templated text and its tokens", body = ChatTokenizeResponse),
        (status = 422, description = "Invalid input", body = OpenAiErrorBody),
    ))]
fn chat_tokenize() {}

/// Token ids back to text.
#[utoipa::path(post, path = "/detokenize", tag = "Text Generation Inference",
    request_body = DetokenizeRequest,
    responses(
        (status = 200, description = "The text", body = DetokenizeResponse),
        (status = 400, description = "An id outside the vocabulary", body = OpenAiErrorBody),
    ))]
fn detokenize() {}

/// The model and the server's limits.
#[utoipa::path(get, path = "/info", tag = "Text Generation Inference",
    responses((status = 200, description = "Model and limits", body = Info)))]
fn info() {}

/// 200 while the server can take requests, else 503.
#[utoipa::path(get, path = "/health", tag = "Text Generation Inference",
    responses(
        (status = 200, description = "Healthy"),
        (status = 503, description = "Not healthy", body = TgiErrorBody),
    ))]
fn health() {}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "Text Generation Inference",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
fn metrics() {}

/// OpenAI text completion; with `"stream": true` server-sent chunks of the same shape, then
/// `data: [DONE]`.
#[utoipa::path(post, path = "/v1/completions", tag = "OpenAI",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion (or its chunks)", body = CompletionResponse),
        (status = 400, description = "Invalid input", body = OpenAiErrorBody),
        (status = 404, description = "Unknown model", body = OpenAiErrorBody),
        (status = 429, description = "Too many requests in flight", body = OpenAiErrorBody),
    ))]
fn completions() {}

/// OpenAI chat completion through the model's chat template; with `"stream": true`
/// server-sent `chat.completion.chunk` objects, then `data: [DONE]`.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "OpenAI",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The answer", body = ChatResponse),
        (status = 200, description = "Streamed chunks", body = ChatChunk, content_type = "text/event-stream"),
        (status = 400, description = "Invalid input", body = OpenAiErrorBody),
        (status = 404, description = "Unknown model", body = OpenAiErrorBody),
        (status = 429, description = "Too many requests in flight", body = OpenAiErrorBody),
    ))]
fn chat_completions() {}

/// The models served.
#[utoipa::path(get, path = "/v1/models", tag = "OpenAI",
    responses((status = 200, description = "Models", body = ModelList)))]
fn models() {}

/// The whole API of a worker and of the `serve` front.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "migserve",
        description = "Text-generation-inference and OpenAI APIs of a migserve worker or of the \
            `migserve serve` front (which also has GET /slices). With an API key set, every \
            route but /health, /metrics, /openapi.json and /docs needs `Authorization: Bearer KEY`."
    ),
    paths(
        compat_generate,
        generate,
        generate_stream,
        tokenize,
        chat_tokenize,
        detokenize,
        info,
        health,
        metrics,
        completions,
        chat_completions,
        models
    )
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// `GET /openapi.json`.
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

/// `GET /docs`: a page that fetches `/openapi.json` and lists every route with its request
/// and response schemas.
pub async fn docs_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("docs_page.html"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn doc() -> Value {
        serde_json::from_str(&document()).expect("the document is JSON")
    }

    /// The property names a schema (with `allOf` parts and `$ref`s resolved) declares.
    fn properties(doc: &Value, schema: &Value) -> Vec<String> {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap_or_default();
            return properties(doc, &doc["components"]["schemas"][name]);
        }
        let mut names: Vec<String> = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        for part in schema
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            names.extend(properties(doc, part));
        }
        names
    }

    fn schema_properties(name: &str) -> Vec<String> {
        let d = doc();
        properties(&d, &d["components"]["schemas"][name])
    }

    #[test]
    fn every_route_is_described() {
        let d = doc();
        assert!(
            d["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            d["openapi"]
        );
        for (path, method) in [
            ("/", "post"),
            ("/generate", "post"),
            ("/generate_stream", "post"),
            ("/tokenize", "post"),
            ("/chat_tokenize", "post"),
            ("/detokenize", "post"),
            ("/info", "get"),
            ("/health", "get"),
            ("/metrics", "get"),
            ("/v1/completions", "post"),
            ("/v1/chat/completions", "post"),
            ("/v1/models", "get"),
        ] {
            assert!(
                d["paths"][path][method].is_object(),
                "{method} {path} missing"
            );
        }
    }

    /// Every field the wire types serialize is in the document (it is generated from them,
    /// so this fails if a type stops deriving its schema or flattening is lost).
    #[test]
    fn the_schemas_name_every_field_of_the_wire_types() {
        let fields = |v: Value| -> Vec<String> {
            v.as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        let params =
            fields(serde_json::to_value(super::super::tgi::GenerateParameters::default()).unwrap());
        let declared = schema_properties("GenerateParameters");
        assert!(params.len() > 15);
        for f in &params {
            assert!(
                declared.contains(f),
                "GenerateParameters.{f} missing: {declared:?}"
            );
        }
        let sampling =
            fields(serde_json::to_value(super::super::openai::SamplingFields::default()).unwrap());
        for schema in ["CompletionRequest", "ChatRequest"] {
            let declared = schema_properties(schema);
            for f in sampling.iter().chain(["model".to_string()].iter()) {
                assert!(declared.contains(f), "{schema}.{f} missing: {declared:?}");
            }
        }
        assert!(schema_properties("ChatRequest").contains(&"messages".to_string()));
        assert!(schema_properties("Info").contains(&"prefix_cache".to_string()));
    }
}
