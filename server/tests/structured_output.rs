//! Constrained decoding on the real worker with the real SmolLM2: JSON schemas (checked by an
//! independent validator, the `jsonschema` crate), regexes (checked by the `regex` crate),
//! choice lists and Lark grammars, through the OpenAI and TGI routes, streamed and not; bad
//! schemas and grammars refused with the parser's message while the worker keeps serving.

mod common;

use common::{client, post_json as post, post_sse, Worker};
use futures_util::future::join_all;
use serde_json::{json, Value};

/// A profile: nested object, array of objects, enums, integer ranges, required fields,
/// bounded strings.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 30},
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "role": {"enum": ["admin", "editor", "viewer"]},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 30},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"}
                },
                "required": ["city", "zip"],
                "additionalProperties": false
            },
            "pets": {
                "type": "array",
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {
                        "kind": {"enum": ["cat", "dog", "fish"]},
                        "legs": {"type": "integer", "minimum": 0, "maximum": 4}
                    },
                    "required": ["kind", "legs"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["name", "age", "role", "address", "pets"],
        "additionalProperties": false
    })
}

const PEOPLE: [&str; 5] = [
    "Describe a librarian from Lyon as a JSON profile.",
    "Make up a user profile for a young programmer with two cats.",
    "Give me a JSON record of a retired sailor who keeps a fish.",
    "Profile of an editor living in Berlin, as JSON.",
    "Invent a person. Answer in JSON.",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_schema_answers_all_validate() {
    let w = Worker::start(&["--max-batch-size", "16"]);
    let c = client();
    let schema = person_schema();
    let validator = jsonschema::validator_for(&schema).expect("the test's schema is valid");
    let requests = (0..50u64).map(|i| {
        let c = c.clone();
        let url = w.at("/v1/chat/completions");
        // A third greedy, the rest sampled with their own seeds.
        let temperature = if i.is_multiple_of(3) { 0.0 } else { 0.9 };
        let body = json!({
            "messages": [{"role": "user", "content": PEOPLE[i as usize % PEOPLE.len()]}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "person", "schema": schema, "strict": true}},
            "temperature": temperature, "seed": i, "max_tokens": 400
        });
        async move { post(&c, url, &body).await }
    });
    let answers = join_all(requests).await;
    let mut distinct = std::collections::HashSet::new();
    for (i, (status, v)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "request {i}: {v}");
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(
            v["choices"][0]["finish_reason"], "stop",
            "request {i}: {text}"
        );
        let parsed: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("request {i}: not JSON ({e}): {text}"));
        let errors: Vec<String> = validator
            .iter_errors(&parsed)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "request {i}: {text}: {errors:?}");
        distinct.insert(text.to_string());
    }
    // Sampled answers differ: the model writes them, the grammar only keeps them valid.
    assert!(distinct.len() >= 20, "{} distinct answers", distinct.len());

    // Streamed: the pieces add up to a valid answer too.
    let body = json!({
        "messages": [{"role": "user", "content": PEOPLE[0]}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        "temperature": 0.7, "seed": 99, "max_tokens": 400, "stream": true
    });
    let mut text = String::new();
    let mut finish = Value::Null;
    for chunk in post_sse(&c, w.at("/v1/chat/completions"), &body).await {
        text.push_str(
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or(""),
        );
        if !chunk["choices"][0]["finish_reason"].is_null() {
            finish = chunk["choices"][0]["finish_reason"].clone();
        }
    }
    assert_eq!(finish, "stop");
    let parsed: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(validator.is_valid(&parsed), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regexes_choices_and_grammars_hold_on_every_route() {
    let w = Worker::start(&["--max-batch-size", "16"]);
    let c = client();
    let pattern = r"[A-Z][a-z]{2,9}, [0-9]{1,2} (January|March|July) 20[0-9]{2}";
    let whole = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
    let choices = ["positive", "negative", "neutral"];
    let mut jobs = Vec::new();
    for i in 0..12u64 {
        let temperature = if i == 0 { 0.0 } else { 1.0 };
        // OpenAI's completions with the regex extension, chat with vLLM's guided_regex.
        jobs.push((
            "regex",
            w.at("/v1/completions"),
            json!({"prompt": "The meeting was held in", "max_tokens": 40, "seed": i,
                   "temperature": temperature,
                   "response_format": {"type": "regex", "regex": pattern}}),
        ));
        jobs.push((
            "regex",
            w.at("/v1/chat/completions"),
            json!({"messages": [{"role": "user", "content": "Name a city and a date."}],
                   "max_tokens": 40, "seed": i, "temperature": temperature,
                   "guided_regex": pattern}),
        ));
        // A choice list: OpenAI's extension and TGI's.
        jobs.push((
            "choice",
            w.at("/v1/chat/completions"),
            json!({"messages": [{"role": "user", "content": "Is 'I loved it' positive?"}],
                   "max_tokens": 10, "seed": i, "temperature": temperature,
                   "response_format": {"type": "choice", "choices": choices}}),
        ));
        jobs.push((
            "choice",
            w.at("/generate"),
            json!({"inputs": "Sentiment of 'awful service':",
                   "parameters": {"max_new_tokens": 10, "seed": i, "do_sample": i > 0,
                                  "grammar": {"type": "choice", "value": choices}}}),
        ));
    }
    let answers = join_all(jobs.into_iter().map(|(kind, url, body)| {
        let c = c.clone();
        async move { (kind, post(&c, url, &body).await) }
    }))
    .await;
    let mut seen = std::collections::HashSet::new();
    for (kind, (status, v)) in answers {
        assert_eq!(status, 200, "{v}");
        let text = v["choices"][0]["text"]
            .as_str()
            .or(v["choices"][0]["message"]["content"].as_str())
            .or(v["generated_text"].as_str())
            .unwrap();
        match kind {
            "regex" => assert!(whole.is_match(text), "{text:?} does not match {pattern}"),
            _ => assert!(choices.contains(&text), "{text:?} is not a choice"),
        }
        seen.insert(text.to_string());
    }
    assert!(seen.len() > 4, "{seen:?}");

    // TGI's json grammar (schema as a string), with details: the grammar's end is an eos.
    let body = json!({"inputs": "A JSON point:", "parameters": {"max_new_tokens": 60, "details": true,
        "grammar": {"type": "json", "value": "{\"type\": \"object\", \"properties\": {\"x\": {\"type\": \"integer\"}, \"y\": {\"type\": \"integer\"}}, \"required\": [\"x\", \"y\"], \"additionalProperties\": false}"}}});
    let (status, v) = post(&c, w.at("/generate"), &body).await;
    assert_eq!(status, 200, "{v}");
    let point: Value = serde_json::from_str(v["generated_text"].as_str().unwrap()).unwrap();
    assert!(point["x"].is_i64() && point["y"].is_i64(), "{point}");
    assert_eq!(v["details"]["finish_reason"], "eos_token");

    // A Lark grammar (extension), with JSON inside it.
    let lark =
        "start: \"Answer: \" (\"yes\" | \"no\") \" because \" reason\nreason: /[a-z ]{3,40}/ \".\"";
    let body = json!({"prompt": "Is the sky blue?", "max_tokens": 40,
                      "response_format": {"type": "grammar", "grammar": lark}});
    let (status, v) = post(&c, w.at("/v1/completions"), &body).await;
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["text"].as_str().unwrap();
    let lark_rx = regex::Regex::new(r"^Answer: (yes|no) because [a-z ]{3,40}\.$").unwrap();
    assert!(lark_rx.is_match(text), "{text:?}");

    // json_object: some object.
    let body = json!({"messages": [{"role": "user", "content": "Give me any JSON."}],
                      "max_tokens": 200, "response_format": {"type": "json_object"}});
    let (status, v) = post(&c, w.at("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    if v["choices"][0]["finish_reason"] == "stop" {
        let o: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(o.is_object(), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_schemas_and_grammars_are_4xx_with_the_parsers_message() {
    let w = Worker::start(&[]);
    let c = client();
    let chat = |format: Value| {
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
               "response_format": format})
    };
    let openai_cases = [
        (
            chat(
                json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}),
            ),
            "bogus",
        ),
        (
            chat(json!({"type": "regex", "regex": "(unclosed"})),
            "regex",
        ),
        (
            chat(json!({"type": "grammar", "grammar": "start: missing_rule"})),
            "missing_rule",
        ),
        (chat(json!({"type": "choice", "choices": []})), "empty"),
        (
            chat(json!({"type": "json_schema", "json_schema": {"name": "x"}})),
            "json_schema.schema",
        ),
        (chat(json!({"type": "yaml"})), "yaml"),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "guided_regex": "a",
                   "guided_choice": ["a"]}),
            "at most one",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}], "ignore_eos": true,
                   "response_format": {"type": "json_object"}}),
            "ignore_eos",
        ),
    ];
    for (body, needle) in openai_cases {
        let (status, v) = post(&c, w.at("/v1/chat/completions"), &body).await;
        assert!(status == 400 || status == 422, "{status} {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{needle:?} not in {v}");
    }
    let tgi = json!({"inputs": "hi", "parameters": {"grammar": {"type": "regex", "value": "[a-"}}});
    let (status, v) = post(&c, w.at("/generate"), &tgi).await;
    assert_eq!(status, 422, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("invalid regex grammar"),
        "{v}"
    );
    let tgi =
        json!({"inputs": "hi", "parameters": {"grammar": {"type": "json", "value": "{oops"}}});
    let (status, v) = post(&c, w.at("/generate"), &tgi).await;
    assert_eq!(status, 422, "{v}");
    // Still serving.
    let (status, v) = post(
        &c,
        w.at("/generate"),
        &json!({"inputs": "The capital of France is", "parameters": {"max_new_tokens": 4}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}
