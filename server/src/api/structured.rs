//! Wire types of structured output and tool calling: OpenAI's `response_format`, `tools` and
//! `tool_choice`, TGI's `grammar`, and migserve's extensions (regex, Lark grammar and choice
//! formats; vLLM's `guided_*` fields).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `response_format` of a chat or completion request.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against `json_schema.schema`.
    JsonSchema { json_schema: JsonSchemaFormat },
    /// Extension: text the regular expression (Rust `regex` syntax) matches whole.
    Regex { regex: String },
    /// Extension: text of a Lark grammar (llguidance's dialect, `start` the top rule).
    Grammar { grammar: String },
    /// Extension: exactly one of these strings.
    Choice { choices: Vec<String> },
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
pub struct JsonSchemaFormat {
    pub name: Option<String>,
    pub description: Option<String>,
    /// The JSON schema the output validates against.
    #[schema(value_type = Object)]
    pub schema: Option<Value>,
    /// Accepted; the schema is always enforced.
    pub strict: Option<bool>,
}

/// vLLM's constraint fields (extensions on both OpenAI endpoints); at most one, and not with
/// `response_format`.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, utoipa::ToSchema)]
pub struct GuidedFields {
    /// A JSON schema (an object, or a string holding one).
    #[schema(value_type = Object)]
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    /// A Lark grammar.
    pub guided_grammar: Option<String>,
}

/// TGI's `parameters.grammar`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum TgiGrammar {
    /// A JSON schema (an object, or a string holding one).
    #[schema(value_type = Object)]
    Json(Value),
    /// `{"name", "schema"}`, as TGI's newer `json_schema` type.
    #[schema(value_type = Object)]
    JsonSchema(Value),
    Regex(String),
    /// Extension: a Lark grammar.
    Lark(String),
    /// Extension: exactly one of these strings.
    Choice(Vec<String>),
}

/// One tool of a chat request.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Tool {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionSpec,
}

/// A function the model may call.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
pub struct FunctionSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON schema of the arguments (an object when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub parameters: Option<Value>,
    /// Accepted; arguments are always constrained when a call is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"`, or one named function.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named(NamedToolChoice),
}

/// `{"type": "function", "function": {"name": ...}}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
pub struct NamedToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionName,
}

/// A function's name.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
pub struct FunctionName {
    pub name: String,
}

/// A tool call: in an assistant message of the request, or in the response.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ToolCall {
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

/// The function a call names, and its arguments as a JSON text.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// A tool call in a stream chunk (OpenAI's delta shape: `index` says which call).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(flatten)]
    pub call: ToolCall,
}
