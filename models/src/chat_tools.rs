//! Tools in a conversation whose chat template knows nothing of them: the tools are described
//! in the system message, earlier tool calls are written into their assistant messages, and
//! tool results become user turns, all in the Hermes format that Qwen's own templates use
//! (`<tool_call>` JSON `</tool_call>`, `<tool_response>` ... `</tool_response>`), so one
//! parser reads the calls of every family.

use serde_json::Value;

use crate::chat_message::ChatMessage;

/// Opens one tool call in the model's output.
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
/// Closes one tool call.
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";

/// The text of one call as the model writes it: `{"name": ..., "arguments": {...}}` between
/// the tags, each on its own line.
pub fn tool_call_text(name: &str, arguments: &Value) -> String {
    let name = Value::from(name);
    format!("{TOOL_CALL_OPEN}\n{{\"name\": {name}, \"arguments\": {arguments}}}\n{TOOL_CALL_CLOSE}")
}

/// What the system message says about `tools`.
fn instructions(tools: &[Value]) -> String {
    let listed: Vec<String> = tools.iter().map(|t| t.to_string()).collect();
    format!(
        "You can call functions to answer. They are described by these JSON schemas:\n\
         <tools>\n{}\n</tools>\n\
         To call a function, answer with its name and arguments as a JSON object between \
         tags, one call per block:\n\
         {TOOL_CALL_OPEN}\n{{\"name\": <function name>, \"arguments\": <arguments object>}}\n\
         {TOOL_CALL_CLOSE}",
        listed.join("\n")
    )
}

/// Whether the conversation needs folding for a template that does not read tools.
pub fn needs_folding(messages: &[ChatMessage], tools: &[Value]) -> bool {
    !tools.is_empty()
        || messages
            .iter()
            .any(|m| m.role == "tool" || m.tool_calls.is_some())
}

/// The conversation with the tools described in its system message (one is added first when
/// it has none), each assistant message's calls written after its text, and each tool result
/// a user turn.
pub fn fold_tools(messages: &[ChatMessage], tools: &[Value]) -> Vec<ChatMessage> {
    let mut out = Vec::with_capacity(messages.len() + 1);
    if !tools.is_empty() {
        let text = instructions(tools);
        match messages.first().filter(|m| m.role == "system") {
            Some(system) => out.push(ChatMessage::new(
                "system",
                format!("{}\n\n{text}", system.content),
            )),
            None => out.push(ChatMessage::new("system", text)),
        }
    }
    let skip =
        usize::from(!tools.is_empty() && messages.first().is_some_and(|m| m.role == "system"));
    for m in &messages[skip..] {
        let folded = match m.role.as_str() {
            "tool" => ChatMessage::new(
                "user",
                format!("<tool_response>\n{}\n</tool_response>", m.content),
            ),
            _ => {
                let calls: Vec<String> = m
                    .tool_calls
                    .iter()
                    .flatten()
                    .map(|c| {
                        let f = &c["function"];
                        tool_call_text(f["name"].as_str().unwrap_or_default(), &f["arguments"])
                    })
                    .collect();
                let mut content = m.content.clone();
                for call in calls {
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    content.push_str(&call);
                }
                ChatMessage::new(m.role.clone(), content)
            }
        };
        out.push(folded);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tools_calls_and_results_become_plain_turns() {
        let tools = [json!({"type": "function", "function": {"name": "get_weather"}})];
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![json!({
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}
        })]);
        let mut result = ChatMessage::new("tool", "{\"celsius\": 21}");
        result.tool_call_id = Some("call_1".into());
        let chat = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Weather in Paris?"),
            call,
            result,
        ];
        assert!(needs_folding(&chat, &tools));
        let folded = fold_tools(&chat, &tools);
        assert_eq!(folded.len(), 4);
        assert!(folded[0]
            .content
            .starts_with("Be brief.\n\nYou can call functions"));
        assert!(folded[0].content.contains("\"get_weather\""));
        assert_eq!(
            folded[2].content,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>"
        );
        assert_eq!(folded[3].role, "user");
        assert_eq!(
            folded[3].content,
            "<tool_response>\n{\"celsius\": 21}\n</tool_response>"
        );
        assert!(!needs_folding(&[ChatMessage::new("user", "hi")], &[]));
        // Without a system message, one is added.
        let added = fold_tools(&[ChatMessage::new("user", "hi")], &tools);
        assert_eq!(added[0].role, "system");
        assert_eq!(added[1].content, "hi");
    }
}
