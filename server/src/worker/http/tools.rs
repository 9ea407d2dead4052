//! Tool calling on chat: `tools`, `tool_choice` and `parallel_tool_calls` checked; the tools
//! for the chat template; for `required` and a named function, the grammar that makes the
//! output calls with arguments valid for their schemas; the calls read back out of the text
//! (whole, or as a stream goes).
//!
//! The calls' format is Hermes' (`<tool_call>` `{"name": ..., "arguments": {...}}`
//! `</tool_call>`), which Qwen's templates ask for and which migserve's own tool prompt asks
//! of models whose template has no tools (see `migserve_models::chat_tools`); a bare JSON
//! object `{"name": ..., "arguments"|"parameters": {...}}` (Llama 3's format) is read too.

use migserve_engine::grammar::compact_json;
use migserve_engine::Grammar;
use migserve_models::chat_tools::{TOOL_CALL_CLOSE, TOOL_CALL_OPEN};
use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::openai::ChatRequest;
use crate::api::structured::{FunctionCall, Tool, ToolCall, ToolChoice};

/// Most calls one answer may make when a call is required (a small model may otherwise
/// repeat calls until its tokens run out).
pub const MAX_REQUIRED_CALLS: usize = 8;

/// What `tool_choice` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolMode {
    /// The model chooses: text, calls, or both.
    Auto,
    /// At least one call (of any tool).
    Required,
    /// A call of this function.
    Named(String),
}

/// A chat request's tools and what it asks of them.
#[derive(Debug, Clone)]
pub struct ToolPlan {
    pub tools: Vec<Tool>,
    pub mode: ToolMode,
    /// More than one call per answer.
    pub parallel: bool,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::param(param, "invalid_value", message)
}

/// OpenAI's rule for function names: letters, digits, `_` and `-`, at most 64.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The request's tools, checked; `None` when there are none or `tool_choice` is `"none"`.
pub fn plan(req: &ChatRequest) -> Result<Option<ToolPlan>, ApiError> {
    let tools = req.tools.clone().unwrap_or_default();
    let mode = match &req.tool_choice {
        None => None,
        Some(ToolChoice::Mode(m)) => match m.as_str() {
            "none" => return Ok(None),
            "auto" => Some(ToolMode::Auto),
            "required" => Some(ToolMode::Required),
            other => {
                return Err(invalid(
                    "tool_choice",
                    format!(
                        "Invalid value {other:?} for 'tool_choice': expected \"none\", \"auto\", \
                         \"required\" or a named function"
                    ),
                ))
            }
        },
        Some(ToolChoice::Named(n)) => {
            if n.kind != "function" {
                return Err(invalid(
                    "tool_choice.type",
                    format!(
                        "Invalid value {:?} for 'tool_choice.type': only \"function\"",
                        n.kind
                    ),
                ));
            }
            Some(ToolMode::Named(n.function.name.clone()))
        }
    };
    if tools.is_empty() {
        return match mode {
            None | Some(ToolMode::Auto) => Ok(None),
            Some(_) => Err(invalid(
                "tool_choice",
                "'tool_choice' asks for a tool call, but the request has no 'tools'",
            )),
        };
    }
    let mut names = std::collections::HashSet::new();
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(invalid(
                &format!("tools[{i}].type"),
                format!(
                    "Invalid value {:?} for 'tools[{i}].type': only \"function\"",
                    t.kind
                ),
            ));
        }
        let name = &t.function.name;
        if !valid_name(name) {
            return Err(invalid(
                &format!("tools[{i}].function.name"),
                format!(
                    "Invalid 'tools[{i}].function.name' {name:?}: letters, digits, '_' and '-', \
                     1 to 64 of them"
                ),
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(invalid(
                &format!("tools[{i}].function.name"),
                format!("two tools are named {name:?}"),
            ));
        }
        if let Some(p) = &t.function.parameters {
            if !p.is_object() {
                return Err(invalid(
                    &format!("tools[{i}].function.parameters"),
                    format!("Invalid 'tools[{i}].function.parameters': a JSON schema object"),
                ));
            }
        }
    }
    let mode = mode.unwrap_or(ToolMode::Auto);
    if let ToolMode::Named(name) = &mode {
        if !names.contains(name.as_str()) {
            return Err(invalid(
                "tool_choice.function.name",
                format!("'tool_choice' names {name:?}, which is not one of the 'tools'"),
            ));
        }
    }
    Ok(Some(ToolPlan {
        tools,
        mode,
        parallel: req.parallel_tool_calls.unwrap_or(true),
    }))
}

/// A JSON string as a Lark literal (Lark reads JSON's escapes).
fn literal(text: &str) -> String {
    Value::from(text).to_string()
}

impl ToolPlan {
    /// The tools as the chat template's `tools` (OpenAI's objects).
    pub fn template_tools(&self) -> Vec<Value> {
        self.tools
            .iter()
            .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
            .collect()
    }

    /// For `required` and a named function: the grammar of the answer, calls only, each
    /// with arguments valid for its function's schema.
    pub fn grammar(&self) -> Option<Grammar> {
        let callable: Vec<&Tool> = match &self.mode {
            ToolMode::Auto => return None,
            ToolMode::Required => self.tools.iter().collect(),
            ToolMode::Named(name) => self
                .tools
                .iter()
                .filter(|t| &t.function.name == name)
                .collect(),
        };
        let mut rules = Vec::new();
        let mut alternatives = Vec::new();
        for (i, t) in callable.iter().enumerate() {
            let schema = compact_json(
                t.function
                    .parameters
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object"})),
            );
            let head = format!(
                "{TOOL_CALL_OPEN}\n{{\"name\": {}, \"arguments\": ",
                Value::from(t.function.name.as_str())
            );
            rules.push(format!(
                "call_{i}: {} args_{i} {}",
                literal(&head),
                literal(&format!("}}\n{TOOL_CALL_CLOSE}"))
            ));
            rules.push(format!("args_{i}: %json {schema}"));
            alternatives.push(format!("call_{i}"));
        }
        let top = match self.parallel {
            true => format!("start: call (\"\\n\" call){{0,{}}}", MAX_REQUIRED_CALLS - 1),
            false => "start: call".to_string(),
        };
        Some(Grammar::Lark(format!(
            "{top}\ncall: {}\n{}",
            alternatives.join(" | "),
            rules.join("\n")
        )))
    }

    fn knows(&self, name: &str) -> bool {
        self.tools.iter().any(|t| t.function.name == name)
    }

    /// The calls in `text` and the text around them (`None` when only whitespace is left).
    pub fn parse(&self, text: &str) -> (Option<String>, Vec<ToolCall>) {
        let mut calls = Vec::new();
        let mut content = String::new();
        let mut rest = text;
        while let Some(start) = rest.find(TOOL_CALL_OPEN) {
            let after = &rest[start + TOOL_CALL_OPEN.len()..];
            let (body, next) = match after.find(TOOL_CALL_CLOSE) {
                Some(end) => (&after[..end], &after[end + TOOL_CALL_CLOSE.len()..]),
                None => (after, ""),
            };
            match self.call(body) {
                Some(call) => {
                    content.push_str(&rest[..start]);
                    calls.push(call);
                }
                None => content.push_str(&rest[..start + TOOL_CALL_OPEN.len() + body.len()]),
            }
            rest = next;
        }
        content.push_str(rest);
        if calls.is_empty() {
            // Llama 3's format: the whole answer is the call's JSON.
            if let Some(call) = self.call(text) {
                return (None, vec![call]);
            }
        }
        let content = content.trim();
        ((!content.is_empty()).then(|| content.to_string()), calls)
    }

    /// One call's JSON, if it names one of the tools and has object arguments.
    fn call(&self, body: &str) -> Option<ToolCall> {
        let v: Value = serde_json::from_str(body.trim()).ok()?;
        let name = v.get("name")?.as_str()?;
        if !self.knows(name) {
            return None;
        }
        let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
            Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok()?,
            Some(a) => a.clone(),
            None => json!({}),
        };
        arguments.is_object().then(|| ToolCall {
            id: format!("call_{:024x}", rand::random::<u128>() >> 32),
            kind: "function".into(),
            function: FunctionCall {
                name: name.to_string(),
                arguments: arguments.to_string(),
            },
        })
    }
}

/// A streamed answer's text with tool calls held back: text streams until a call may be
/// starting; what follows is read for calls when the answer ends.
#[derive(Debug, Default)]
pub struct ToolStream {
    text: String,
    sent: usize,
    /// Everything is held (a call is required, or one has started).
    holding: bool,
}

impl ToolStream {
    /// For `plan`: with a call required nothing streams as text.
    pub fn new(plan: &ToolPlan) -> Self {
        Self {
            holding: plan.mode != ToolMode::Auto,
            ..Self::default()
        }
    }

    /// Adds `piece`; returns the text that can be sent now.
    pub fn push(&mut self, piece: &str) -> String {
        self.text.push_str(piece);
        if self.holding {
            return String::new();
        }
        let unsent = &self.text[self.sent..];
        let safe = match unsent.find(TOOL_CALL_OPEN) {
            Some(at) => {
                self.holding = true;
                at
            }
            // A JSON call may be the whole answer: hold an answer that starts like one.
            None if self.sent == 0 && unsent.trim_start().starts_with('{') => {
                self.holding = true;
                0
            }
            None => unsent.len() - partial_tag(unsent),
        };
        let out = unsent[..safe].to_string();
        self.sent += safe;
        out
    }

    /// At the end: what was held, as text around calls and the calls.
    pub fn finish(&mut self, plan: &ToolPlan) -> (Option<String>, Vec<ToolCall>) {
        let held = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        plan.parse(&held)
    }
}

/// Bytes at the end of `text` that could begin [`TOOL_CALL_OPEN`].
fn partial_tag(text: &str) -> usize {
    (1..TOOL_CALL_OPEN.len())
        .rev()
        .find(|n| text.ends_with(&TOOL_CALL_OPEN[..*n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    fn weather_plan(choice: Value) -> ToolPlan {
        let req = request(json!({
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "parameters": {
                    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "get_time"}}
            ],
            "tool_choice": choice
        }));
        plan(&req).unwrap().unwrap()
    }

    #[test]
    fn tool_choice_and_tools_are_checked() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let none = request(json!({"messages": user, "tool_choice": "none", "tools": [
            {"type": "function", "function": {"name": "f"}}]}));
        assert!(plan(&none).unwrap().is_none());
        let bad = [
            json!({"messages": user, "tool_choice": "required"}),
            json!({"messages": user, "tool_choice": "sometimes", "tools": [{"type": "function", "function": {"name": "f"}}]}),
            json!({"messages": user, "tools": [{"type": "function", "function": {"name": "a b"}}]}),
            json!({"messages": user, "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]}),
            json!({"messages": user, "tools": [{"type": "retrieval", "function": {"name": "f"}}]}),
            json!({"messages": user, "tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]}),
            json!({"messages": user, "tools": [{"type": "function", "function": {"name": "f"}}],
                   "tool_choice": {"type": "function", "function": {"name": "g"}}}),
        ];
        for body in bad {
            assert!(plan(&request(body.clone())).is_err(), "{body}");
        }
        assert_eq!(weather_plan(json!("required")).mode, ToolMode::Required);
        assert_eq!(
            weather_plan(json!({"type": "function", "function": {"name": "get_time"}})).mode,
            ToolMode::Named("get_time".into())
        );
        assert!(weather_plan(json!("auto")).grammar().is_none());
    }

    #[test]
    fn calls_are_read_from_tags_or_bare_json() {
        let p = weather_plan(json!("auto"));
        let (content, calls) = p.parse(
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
             <tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
        );
        assert_eq!(content.as_deref(), Some("Let me check."));
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].function.name, "get_weather");
        assert_eq!(calls[0].function.arguments, "{\"city\":\"Paris\"}");
        assert_ne!(calls[0].id, calls[1].id);
        let (content, calls) = p.parse("{\"name\": \"get_time\", \"parameters\": {}}");
        assert_eq!((content, calls.len()), (None, 1));
        // Unknown tools and broken JSON stay text.
        let (content, calls) = p.parse("<tool_call>{\"name\": \"launch\"}</tool_call>");
        assert!(calls.is_empty());
        assert!(content.unwrap().contains("launch"));
        let (content, calls) = p.parse("It is sunny.");
        assert_eq!((content.as_deref(), calls.len()), (Some("It is sunny."), 0));
    }

    #[test]
    fn a_stream_holds_back_what_may_be_a_call() {
        let p = weather_plan(json!("auto"));
        let mut s = ToolStream::new(&p);
        assert_eq!(s.push("Checking"), "Checking");
        assert_eq!(s.push(" now <tool"), " now ");
        assert_eq!(s.push("_call>\n{\"name\": \"get_time\", "), "");
        assert_eq!(s.push("\"arguments\": {}}\n</tool_call>"), "");
        let (content, calls) = s.finish(&p);
        assert_eq!((content, calls.len()), (None, 1));
        let mut plain = ToolStream::new(&p);
        assert_eq!(plain.push("a <b> c"), "a <b> c");
        assert_eq!(plain.finish(&p), (None, vec![]));
        let mut required = ToolStream::new(&weather_plan(json!("required")));
        assert_eq!(required.push("anything"), "");
    }
}
