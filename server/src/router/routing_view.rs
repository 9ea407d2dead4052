//! [`RoutingView`]: the fields of a request body the front routes by (model, prompt, new
//! tokens), read in place from the parsed body, typed, borrowing its strings. Both APIs'
//! names are here in one place: TGI's `inputs` and `parameters.max_new_tokens`, OpenAI's
//! `model`, `prompt`, `messages`, `max_tokens` and `max_completion_tokens`.
//!
//! The view is lenient: a field of an unexpected type reads as absent (the worker refuses
//! the request with the API's own error; the router only estimates). It copies nothing.

use serde_json::Value;

/// The routing fields of one request body (a body that is not an object has none).
#[derive(Debug, Clone, Copy)]
pub struct RoutingView<'a> {
    body: &'a Value,
}

/// One chat message as routing reads it.
#[derive(Debug, Clone, Copy)]
pub struct MessageView<'a> {
    /// `role`, when it is a string.
    pub role: Option<&'a str>,
    /// `content` as sent: text, parts, or null.
    pub content: Option<&'a Value>,
}

impl<'a> RoutingView<'a> {
    /// The view of `body`.
    pub fn of(body: &'a Value) -> Self {
        Self { body }
    }

    fn str_field(&self, key: &str) -> Option<&'a str> {
        self.body.get(key)?.as_str()
    }

    /// OpenAI's `model`.
    pub fn model(&self) -> Option<&'a str> {
        self.str_field("model")
    }

    /// The prompt's texts, in order: TGI's `inputs`, then OpenAI's `prompt`. A list of one
    /// string is that string; a batch of several, or token ids, shares no text the router
    /// can know.
    pub fn prompt_texts(&self) -> impl Iterator<Item = &'a str> + 'a {
        let body = self.body;
        ["inputs", "prompt"]
            .into_iter()
            .filter_map(move |key| match body.get(key)? {
                Value::String(s) => Some(s.as_str()),
                Value::Array(items) if items.len() == 1 => items[0].as_str(),
                _ => None,
            })
    }

    /// OpenAI chat `messages`, in order (none when the field is not a list).
    pub fn messages(&self) -> impl Iterator<Item = MessageView<'a>> + 'a {
        let list = self.body.get("messages").and_then(Value::as_array);
        list.into_iter().flatten().map(|m| MessageView {
            role: m.get("role").and_then(Value::as_str),
            content: m.get("content"),
        })
    }

    /// The new tokens asked for: the first that is a count of TGI's
    /// `parameters.max_new_tokens`, OpenAI's `max_tokens` and `max_completion_tokens`.
    pub fn max_new_tokens(&self) -> Option<u64> {
        let tgi = self
            .body
            .get("parameters")
            .and_then(|p| p.get("max_new_tokens"));
        [
            tgi,
            self.body.get("max_tokens"),
            self.body.get("max_completion_tokens"),
        ]
        .into_iter()
        .find_map(|v| v?.as_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_both_apis_fields() {
        let tgi = json!({"inputs": "hi", "parameters": {"max_new_tokens": 7, "top_k": 3}});
        let v = RoutingView::of(&tgi);
        assert_eq!(v.prompt_texts().collect::<Vec<_>>(), ["hi"]);
        assert_eq!((v.model(), v.max_new_tokens()), (None, Some(7)));
        let chat = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 9});
        let v = RoutingView::of(&chat);
        assert_eq!((v.model(), v.max_new_tokens()), (Some("m"), Some(9)));
        let m = v.messages().next().unwrap();
        assert_eq!(m.role, Some("user"));
        assert_eq!(m.content, Some(&json!("x")));
        let both = json!({"max_tokens": 4, "max_completion_tokens": 9});
        let v = RoutingView::of(&both);
        assert_eq!(v.max_new_tokens(), Some(4), "max_tokens first");
    }

    #[test]
    fn a_list_of_one_text_is_that_text_and_anything_else_is_none() {
        let texts = |body: Value| {
            let v = RoutingView::of(&body);
            v.prompt_texts().map(str::to_string).collect::<Vec<_>>()
        };
        assert_eq!(texts(json!({"prompt": ["only"]})), ["only"]);
        assert!(texts(json!({"prompt": ["a", "b"]})).is_empty());
        assert!(texts(json!({"prompt": [1, 2, 3]})).is_empty());
        assert!(texts(json!({"prompt": [[1, 2]]})).is_empty());
    }

    #[test]
    fn fields_of_other_types_read_as_absent() {
        let odd = json!({"model": 3, "inputs": {"a": 1}, "max_tokens": -1,
            "parameters": "x", "messages": "no", "max_completion_tokens": 2});
        let v = RoutingView::of(&odd);
        assert_eq!(v.model(), None);
        assert_eq!(v.prompt_texts().count(), 0);
        assert_eq!(v.messages().count(), 0);
        assert_eq!(v.max_new_tokens(), Some(2));
        let list = json!(["not", "an", "object"]);
        let v = RoutingView::of(&list);
        assert!(v.model().is_none() && v.max_new_tokens().is_none());
        let parts = json!({"messages": [{"role": 1, "content": [{"type": "text", "text": "t"}]}]});
        let v = RoutingView::of(&parts);
        let m = v.messages().next().unwrap();
        assert_eq!(m.role, None);
        assert!(matches!(m.content, Some(Value::Array(_))));
    }
}
