//! The request fields that constrain the output, as the engine's [`Grammar`]: OpenAI's
//! `response_format` and vLLM's `guided_*` fields, TGI's `grammar`. What the grammar itself
//! says is checked when the engine compiles it (a 4xx with the parser's message).

use migserve_engine::Grammar;
use serde_json::Value;

use crate::api::error::ApiError;
use crate::api::openai::SamplingFields;
use crate::api::structured::{ResponseFormat, TgiGrammar};

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::param(param, "invalid_value", message)
}

/// A schema given as JSON, or as a string holding JSON (TGI and vLLM accept both).
fn schema(param: &str, value: &Value) -> Result<Value, ApiError> {
    match value {
        Value::String(text) => serde_json::from_str(text).map_err(|e| {
            invalid(
                param,
                format!("Invalid '{param}': the schema is not JSON: {e}"),
            )
        }),
        Value::Object(_) | Value::Bool(_) => Ok(value.clone()),
        _ => Err(invalid(
            param,
            format!("Invalid '{param}': a JSON schema is an object"),
        )),
    }
}

/// The grammar of an OpenAI request: `response_format`, or one `guided_*` field.
pub fn openai(fields: &SamplingFields) -> Result<Option<Grammar>, ApiError> {
    let (format, guided) = (fields.response_format.as_ref(), &fields.guided);
    let mut found: Vec<(&str, Grammar)> = Vec::new();
    match format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => found.push(("response_format", Grammar::JsonObject)),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let param = "response_format.json_schema.schema";
            let value = json_schema.schema.as_ref().ok_or_else(|| {
                ApiError::param(
                    param,
                    "missing_required_parameter",
                    format!("Missing required parameter: '{param}'."),
                )
            })?;
            found.push((
                "response_format",
                Grammar::JsonSchema(schema(param, value)?),
            ));
        }
        Some(ResponseFormat::Regex { regex }) => {
            found.push(("response_format", Grammar::Regex(regex.clone())))
        }
        Some(ResponseFormat::Grammar { grammar }) => {
            found.push(("response_format", Grammar::Lark(grammar.clone())))
        }
        Some(ResponseFormat::Choice { choices }) => {
            found.push(("response_format", Grammar::Choice(choices.clone())))
        }
    }
    if let Some(v) = &guided.guided_json {
        found.push((
            "guided_json",
            Grammar::JsonSchema(schema("guided_json", v)?),
        ));
    }
    if let Some(rx) = &guided.guided_regex {
        found.push(("guided_regex", Grammar::Regex(rx.clone())));
    }
    if let Some(c) = &guided.guided_choice {
        found.push(("guided_choice", Grammar::Choice(c.clone())));
    }
    if let Some(g) = &guided.guided_grammar {
        found.push(("guided_grammar", Grammar::Lark(g.clone())));
    }
    match found.len() {
        0 | 1 => Ok(found.pop().map(|(_, g)| g)),
        _ => {
            let names: Vec<&str> = found.iter().map(|(n, _)| *n).collect();
            Err(invalid(
                names[1],
                format!(
                    "at most one output constraint per request, got {}",
                    names.join(" and ")
                ),
            ))
        }
    }
}

/// The grammar of TGI's `parameters.grammar`.
pub fn tgi(grammar: &TgiGrammar) -> Result<Grammar, ApiError> {
    let validation = |e: ApiError| ApiError::Validation(e.to_string());
    Ok(match grammar {
        TgiGrammar::Json(v) => Grammar::JsonSchema(schema("grammar.value", v).map_err(validation)?),
        TgiGrammar::JsonSchema(v) => {
            let inner = v.get("schema").ok_or_else(|| {
                ApiError::Validation("`grammar.value.schema` is required for `json_schema`".into())
            })?;
            Grammar::JsonSchema(schema("grammar.value.schema", inner).map_err(validation)?)
        }
        TgiGrammar::Regex(rx) => Grammar::Regex(rx.clone()),
        TgiGrammar::Lark(text) => Grammar::Lark(text.clone()),
        TgiGrammar::Choice(choices) => Grammar::Choice(choices.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::structured::GuidedFields;
    use serde_json::json;

    fn format(v: Value) -> ResponseFormat {
        serde_json::from_value(v).unwrap()
    }

    /// The request fields `openai` reads.
    fn openai(
        format: Option<&ResponseFormat>,
        guided: &GuidedFields,
    ) -> Result<Option<Grammar>, ApiError> {
        super::openai(&SamplingFields {
            response_format: format.cloned(),
            guided: guided.clone(),
            ..SamplingFields::default()
        })
    }

    #[test]
    fn each_field_becomes_its_grammar() {
        let none = GuidedFields::default();
        let schema = json!({"type": "object"});
        let cases = [
            (json!({"type": "text"}), None),
            (json!({"type": "json_object"}), Some(Grammar::JsonObject)),
            (
                json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}),
                Some(Grammar::JsonSchema(schema.clone())),
            ),
            (
                json!({"type": "regex", "regex": "[0-9]+"}),
                Some(Grammar::Regex("[0-9]+".into())),
            ),
            (
                json!({"type": "choice", "choices": ["a", "b"]}),
                Some(Grammar::Choice(vec!["a".into(), "b".into()])),
            ),
            (
                json!({"type": "grammar", "grammar": "start: \"x\""}),
                Some(Grammar::Lark("start: \"x\"".into())),
            ),
        ];
        for (f, want) in cases {
            assert_eq!(
                openai(Some(&format(f.clone())), &none).unwrap(),
                want,
                "{f}"
            );
        }
        let guided = GuidedFields {
            guided_json: Some(Value::String("{\"type\": \"object\"}".into())),
            ..GuidedFields::default()
        };
        assert_eq!(
            openai(None, &guided).unwrap(),
            Some(Grammar::JsonSchema(schema.clone()))
        );
        let tgi_json: TgiGrammar =
            serde_json::from_value(json!({"type": "json", "value": schema})).unwrap();
        assert_eq!(tgi(&tgi_json).unwrap(), Grammar::JsonSchema(schema));
    }

    #[test]
    fn two_constraints_or_a_schema_that_is_not_json_are_refused() {
        let both = GuidedFields {
            guided_regex: Some("a".into()),
            ..GuidedFields::default()
        };
        let e = openai(Some(&format(json!({"type": "json_object"}))), &both).unwrap_err();
        assert!(
            e.to_string().contains("response_format and guided_regex"),
            "{e}"
        );
        let e = openai(
            Some(&format(
                json!({"type": "json_schema", "json_schema": {"name": "x"}}),
            )),
            &GuidedFields::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("json_schema.schema"), "{e}");
        let bad = GuidedFields {
            guided_json: Some(Value::String("{not json".into())),
            ..GuidedFields::default()
        };
        assert!(openai(None, &bad).is_err());
        assert!(serde_json::from_value::<ResponseFormat>(json!({"type": "xml"})).is_err());
    }
}
