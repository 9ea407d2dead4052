//! [`RoutingView`]: the fields of a request body the front routes by (model, prompt, new
//! tokens), read once, typed, borrowing the body's strings. Both APIs' names are here in one
//! place: TGI's `inputs` and `parameters.max_new_tokens`, OpenAI's `model`, `prompt`,
//! `messages`, `max_tokens` and `max_completion_tokens`.
//!
//! The view is lenient: a field of an unexpected type reads as absent (the worker refuses
//! the request with the API's own error; the router only estimates).

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The routing fields of one request body.
#[derive(Debug, Default, Deserialize)]
pub struct RoutingView<'a> {
    /// OpenAI `model`.
    #[serde(default, borrow, deserialize_with = "lenient")]
    pub model: Option<&'a str>,
    /// TGI `inputs`.
    #[serde(default, borrow, deserialize_with = "lenient")]
    pub inputs: Option<PromptField<'a>>,
    /// OpenAI completions `prompt`.
    #[serde(default, borrow, deserialize_with = "lenient")]
    pub prompt: Option<PromptField<'a>>,
    /// OpenAI chat `messages`.
    #[serde(default, borrow, deserialize_with = "lenient")]
    pub messages: Option<Vec<MessageView<'a>>>,
    /// TGI `parameters` (only `max_new_tokens` is read).
    #[serde(default, deserialize_with = "lenient")]
    pub parameters: Option<ParametersView>,
    /// OpenAI `max_tokens`.
    #[serde(default, deserialize_with = "lenient")]
    pub max_tokens: Option<u64>,
    /// OpenAI `max_completion_tokens`.
    #[serde(default, deserialize_with = "lenient")]
    pub max_completion_tokens: Option<u64>,
}

/// A prompt as either API sends it: one string, or a list (of strings, or token ids).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField<'a> {
    Text(&'a str),
    List(#[serde(borrow)] Vec<PromptItem<'a>>),
}

/// One item of a prompt list: a text, or something else (token ids, a number).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptItem<'a> {
    Text(&'a str),
    Other(serde::de::IgnoredAny),
}

impl<'a> PromptField<'a> {
    /// The one text this prompt is: a string, or a list of one string (a batch of several
    /// prompts, or token ids, shares no text the router can know).
    pub fn text(&self) -> Option<&'a str> {
        match self {
            PromptField::Text(s) => Some(s),
            PromptField::List(items) => match items.as_slice() {
                [PromptItem::Text(s)] => Some(s),
                _ => None,
            },
        }
    }
}

/// One chat message: its role and its content (text, or parts kept as JSON).
#[derive(Debug, Deserialize)]
pub struct MessageView<'a> {
    #[serde(default, borrow, deserialize_with = "lenient")]
    pub role: Option<&'a str>,
    #[serde(default, borrow, deserialize_with = "lenient")]
    pub content: Option<ContentField<'a>>,
}

/// A message's content: text, or anything else (parts, null) as it was sent.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ContentField<'a> {
    Text(&'a str),
    Other(Value),
}

/// TGI's `parameters`, as far as routing reads them.
#[derive(Debug, Default, Deserialize)]
pub struct ParametersView {
    #[serde(default, deserialize_with = "lenient")]
    pub max_new_tokens: Option<u64>,
}

impl<'a> RoutingView<'a> {
    /// The view of `body` (a body that is not an object has no routing fields).
    pub fn of(body: &'a Value) -> Self {
        match body {
            // Not through `deserialize` for anything else: serde reads a struct from an
            // array too, by position.
            Value::Object(_) => Self::deserialize(body).unwrap_or_default(),
            _ => Self::default(),
        }
    }

    /// The new tokens asked for: TGI's `parameters.max_new_tokens`, else OpenAI's
    /// `max_tokens`, else `max_completion_tokens`.
    pub fn max_new_tokens(&self) -> Option<u64> {
        self.parameters
            .as_ref()
            .and_then(|p| p.max_new_tokens)
            .or(self.max_tokens)
            .or(self.max_completion_tokens)
    }

    /// The prompt's texts, in order: TGI's `inputs`, then OpenAI's `prompt`.
    pub fn prompt_texts(&self) -> impl Iterator<Item = &'a str> + '_ {
        [&self.inputs, &self.prompt]
            .into_iter()
            .filter_map(|field| field.as_ref().and_then(PromptField::text))
    }
}

/// `T` when the field has `T`'s type, else absent.
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Wanted(T),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Either::<T>::deserialize(deserializer)? {
        Either::Wanted(v) => Some(v),
        Either::Other(_) => None,
    })
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
        assert_eq!((v.model, v.max_new_tokens()), (None, Some(7)));
        let chat = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 9});
        let v = RoutingView::of(&chat);
        assert_eq!((v.model, v.max_new_tokens()), (Some("m"), Some(9)));
        let m = &v.messages.as_ref().unwrap()[0];
        assert_eq!(m.role, Some("user"));
        assert!(matches!(m.content, Some(ContentField::Text("x"))));
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
        assert_eq!(v.model, None);
        assert_eq!(v.prompt_texts().count(), 0);
        assert!(v.messages.is_none());
        assert_eq!(v.max_new_tokens(), Some(2));
        let list = json!(["not", "an", "object"]);
        let v = RoutingView::of(&list);
        assert!(v.model.is_none() && v.max_new_tokens().is_none());
        let parts = json!({"messages": [{"role": 1, "content": [{"type": "text", "text": "t"}]}]});
        let v = RoutingView::of(&parts);
        let m = &v.messages.as_ref().unwrap()[0];
        assert_eq!(m.role, None);
        assert!(matches!(
            m.content,
            Some(ContentField::Other(Value::Array(_)))
        ));
    }
}
