//! Tool calling on the real worker with the real SmolLM2 (whose template has no tools: the
//! worker describes them in the system message): `tool_choice: "required"` and a named
//! function always give calls whose arguments validate against the tool's schema (checked
//! with the `jsonschema` crate), whole and streamed; a follow-up turn with the tool's result
//! renders and is answered; bad tool fields are 400s.

mod common;

use common::{client, post_json as post, post_sse, Worker};
use futures_util::future::join_all;
use serde_json::{json, Value};

fn tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {
            "name": "get_time",
            "description": "The local time in a time zone.",
            "parameters": {"type": "object", "properties": {
                "timezone": {"type": "string", "maxLength": 40}},
                "required": ["timezone"], "additionalProperties": false}}}
    ])
}

const QUESTIONS: [&str; 4] = [
    "What's the weather like in Paris?",
    "What time is it in Tokyo?",
    "Is it raining in London right now?",
    "Tell me the time in New York and the weather in Rome.",
];

/// Asserts each call names one of the tools and its arguments validate; their names.
fn check_calls(calls: &[Value]) -> Vec<String> {
    let tools = tools();
    assert!(!calls.is_empty(), "no calls");
    calls
        .iter()
        .map(|call| {
            assert_eq!(call["type"], "function", "{call}");
            assert!(call["id"].as_str().unwrap().starts_with("call_"), "{call}");
            let name = call["function"]["name"].as_str().unwrap();
            let tool = tools
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["function"]["name"] == name)
                .unwrap_or_else(|| panic!("unknown tool {name}"));
            let arguments: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
                    .unwrap_or_else(|e| panic!("{e}: {call}"));
            let schema = &tool["function"]["parameters"];
            let v = jsonschema::validator_for(schema).unwrap();
            let errors: Vec<String> = v.iter_errors(&arguments).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{call}: {errors:?}");
            name.to_string()
        })
        .collect()
}

/// A streamed answer's content and tool calls (deltas gathered by index), and its finish.
async fn stream(c: &reqwest::Client, url: String, body: &Value) -> (String, Vec<Value>, String) {
    let (mut content, mut calls, mut finish) = (String::new(), Vec::<Value>::new(), String::new());
    for chunk in post_sse(c, url, body).await {
        let choice = &chunk["choices"][0];
        content.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        for d in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = d["index"].as_u64().unwrap() as usize;
            if calls.len() <= i {
                calls.resize(i + 1, json!({"function": {"name": "", "arguments": ""}}));
            }
            let call = &mut calls[i];
            for key in ["id", "type"] {
                if let Some(v) = d.get(key) {
                    call[key] = v.clone();
                }
            }
            let name = d["function"]["name"].as_str().unwrap_or("");
            let args = d["function"]["arguments"].as_str().unwrap_or("");
            let f = &mut call["function"];
            f["name"] = format!("{}{name}", f["name"].as_str().unwrap()).into();
            f["arguments"] = format!("{}{args}", f["arguments"].as_str().unwrap()).into();
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (content, calls, finish)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn required_and_named_tool_choices_always_call_with_valid_arguments() {
    let w = Worker::start(&["--max-batch-size", "16"]);
    let c = client();
    let body = |i: u64, choice: Value, stream: bool| {
        json!({"messages": [{"role": "user", "content": QUESTIONS[i as usize % QUESTIONS.len()]}],
               "tools": tools(), "tool_choice": choice, "max_tokens": 300,
               "temperature": if i.is_multiple_of(2) { 0.0 } else { 0.8 }, "seed": i, "stream": stream})
    };
    let whole = join_all((0..12u64).map(|i| {
        let (c, url, b) = (
            c.clone(),
            w.at("/v1/chat/completions"),
            body(i, json!("required"), false),
        );
        async move { post(&c, url, &b).await }
    }))
    .await;
    let mut names = std::collections::HashSet::new();
    for (status, v) in whole {
        assert_eq!(status, 200, "{v}");
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
        assert!(choice["message"]["content"].is_null(), "{v}");
        names.extend(check_calls(
            choice["message"]["tool_calls"].as_array().unwrap(),
        ));
    }
    assert!(
        names.contains("get_weather") && names.contains("get_time"),
        "{names:?}"
    );

    let streamed = join_all((0..6u64).map(|i| {
        let (c, url, b) = (
            c.clone(),
            w.at("/v1/chat/completions"),
            body(i, json!("required"), true),
        );
        async move { stream(&c, url, &b).await }
    }))
    .await;
    for (content, calls, finish) in streamed {
        assert_eq!(finish, "tool_calls");
        assert!(content.is_empty(), "{content:?}");
        check_calls(&calls);
    }

    // A named function: every call is of it, even for a question about the other tool.
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    for i in 0..3u64 {
        let mut b = body(0, named.clone(), false);
        b["messages"][0]["content"] = QUESTIONS[0].into();
        b["seed"] = i.into();
        b["temperature"] = 0.8.into();
        let (status, v) = post(&c, w.at("/v1/chat/completions"), &b).await;
        assert_eq!(status, 200, "{v}");
        let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
        assert!(check_calls(calls).iter().all(|n| n == "get_time"), "{v}");
    }
    // Not parallel: exactly one call.
    let mut b = body(3, json!("required"), false);
    b["parallel_tool_calls"] = false.into();
    let (_, v) = post(&c, w.at("/v1/chat/completions"), &b).await;
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follow_up_turn_with_the_tools_result_renders_and_answers() {
    let w = Worker::start(&[]);
    let c = client();
    let first = json!({"messages": [{"role": "user", "content": QUESTIONS[0]}],
                       "tools": tools(), "tool_choice": "required", "max_tokens": 200,
                       "parallel_tool_calls": false});
    let (status, v) = post(&c, w.at("/v1/chat/completions"), &first).await;
    assert_eq!(status, 200, "{v}");
    let message = v["choices"][0]["message"].clone();
    let call = &message["tool_calls"][0];
    let follow_up = json!({
        "messages": [
            {"role": "user", "content": QUESTIONS[0]},
            message,
            {"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
             "content": "{\"temperature\": 21, \"sky\": \"sunny\"}"}
        ],
        "tools": tools(), "max_tokens": 40, "temperature": 0
    });
    // The conversation as the model sees it: the tools, the call, the result.
    let (status, t) = post(&c, w.at("/chat_tokenize"), &follow_up).await;
    assert_eq!(status, 200, "{t}");
    let rendered = t["templated_text"].as_str().unwrap();
    assert!(
        rendered.contains("<tools>") && rendered.contains("get_weather"),
        "{rendered}"
    );
    assert!(rendered.contains("<tool_call>"), "{rendered}");
    let arguments = call["function"]["arguments"].as_str().unwrap();
    let args: Value = serde_json::from_str(arguments).unwrap();
    assert!(
        rendered.contains(&args.to_string()),
        "{args} not in {rendered}"
    );
    assert!(
        rendered.contains(
            "<tool_response>\n{\"temperature\": 21, \"sky\": \"sunny\"}\n</tool_response>"
        ),
        "{rendered}"
    );
    assert!(rendered.ends_with("<|im_start|>assistant\n"), "{rendered}");
    let (status, v) = post(&c, w.at("/v1/chat/completions"), &follow_up).await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    let answered = choice["message"]["content"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
        || choice["message"]["tool_calls"].is_array();
    assert!(answered, "{v}");

    // `auto` and `none` run; `none` never reports calls.
    for mode in ["auto", "none"] {
        let b = json!({"messages": [{"role": "user", "content": QUESTIONS[1]}],
                       "tools": tools(), "tool_choice": mode, "max_tokens": 60});
        let (status, v) = post(&c, w.at("/v1/chat/completions"), &b).await;
        assert_eq!(status, 200, "{v}");
        if mode == "none" {
            assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
        }
    }

    // Bad tool fields: 400 naming the field; the worker keeps serving.
    let user = json!([{"role": "user", "content": "hi"}]);
    let bad = [
        (
            json!({"messages": user, "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"messages": user, "tools": [{"type": "function", "function": {"name": "bad name"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"messages": user, "tools": tools(),
                   "tool_choice": {"type": "function", "function": {"name": "launch"}}}),
            "tool_choice.function.name",
        ),
        (
            json!({"messages": user, "tools": [{"type": "function", "function": {"name": "f",
                   "parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}}],
                   "tool_choice": "required"}),
            "",
        ),
    ];
    for (body, param) in bad {
        let (status, v) = post(&c, w.at("/v1/chat/completions"), &body).await;
        assert_eq!(status, 400, "{v}");
        if !param.is_empty() {
            assert_eq!(v["error"]["param"], param, "{v}");
        } else {
            assert!(
                v["error"]["message"].as_str().unwrap().contains("nonsense"),
                "{v}"
            );
        }
    }
    let (status, _) = post(
        &c,
        w.at("/v1/chat/completions"),
        &json!({"messages": user, "max_tokens": 3}),
    )
    .await;
    assert_eq!(status, 200);
}
