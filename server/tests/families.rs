//! Model families end to end: a worker serving the real Gemma 3 270M (SentencePiece
//! tokenizer, sliding-window layers) over TGI and OpenAI chat, and `serve` with one SmolLM2
//! slice and one Gemma slice routing by model name.

mod common;

use std::time::Duration;

use common::{get_json, Serve, Worker};
use serde_json::{json, Value};

#[derive(serde::Deserialize)]
struct Fixture {
    completions: Vec<Completion>,
}

#[derive(serde::Deserialize)]
struct Completion {
    prompt: String,
    text: String,
    tokens: Vec<u32>,
}

/// llama.cpp's greedy completion of a prompt both implementations agree on for all its tokens
/// (models/tests/gemma3_reference.rs).
fn reference() -> Completion {
    let f: Fixture = serde_json::from_str(include_str!(
        "../../models/tests/fixtures/gemma3_reference.json"
    ))
    .unwrap();
    f.completions
        .into_iter()
        .find(|c| c.prompt.starts_with("def fibonacci"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gemma_worker_serves_tgi_and_openai_chat() {
    let gemma = common::gemma_path();
    let worker = Worker::start_model(&gemma, &["--model-id", "gemma"], &[]);
    let c = reqwest::Client::new();

    let info: Value = get_json(&c, worker.at("/info")).await;
    assert_eq!(info["model_id"], "gemma");
    assert_eq!(info["model_architecture"], "gemma3");
    let params = info["model_parameters"].as_u64().unwrap();
    assert!((267_000_000..269_000_000).contains(&params), "{info}");
    // 18 layers x 1 KV head x 256 x (key + value) x 2 bytes (the CPU cache's f16).
    assert_eq!(info["kv_bytes_per_token"], 18 * 256 * 2 * 2);

    // TGI, greedy: llama.cpp's text, token for token.
    let want = reference();
    let r: Value = c
        .post(worker.at("/generate"))
        .json(&json!({"inputs": want.prompt, "parameters": {
            "max_new_tokens": want.tokens.len(), "details": true}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["generated_text"], want.text.as_str(), "{r}");
    assert_eq!(r["details"]["generated_tokens"], want.tokens.len());

    // OpenAI chat through the Gemma turn format (the base model's file has no template).
    let r = c
        .post(worker.at("/v1/chat/completions"))
        .json(
            &json!({"model": "gemma", "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "system", "content": "Answer briefly."},
                         {"role": "user", "content": "What is the capital of France?"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty(), "{v}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 10, "{v}");

    // Gemma's template has no `tool` role (it refuses one): a tool result is folded into a
    // user turn for it, as for every template without tools.
    let r = c
        .post(worker.at("/chat_tokenize"))
        .json(&json!({"model": "gemma", "messages": [
            {"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let text = v["templated_text"].as_str().unwrap();
    assert!(
        text.contains("<start_of_turn>user\n<tool_response>\n42\n</tool_response><end_of_turn>"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_routes_smollm2_and_gemma_by_model() {
    let gemma = common::gemma_path();
    let config = r#"
[slices]
source = "emulate"
emulate = "2x1g.10gb"

[[models]]
name = "smol"
path = "{model}"

[models.engine]
kv_cache_tokens = 2048

[[models]]
name = "gemma"
path = "{gemma}"

[models.engine]
kv_cache_tokens = 2048
"#
    .replace("{gemma}", gemma.to_str().unwrap());
    let serve = Serve::start("families", &config);
    let c = reqwest::Client::new();
    let ready = |s: &[Value]| s.len() == 2 && s.iter().all(|s| s["state"] == "ready");
    serve
        .wait_slices(&c, Duration::from_secs(120), "both workers ready", ready)
        .await;
    let mut slices = Vec::new();
    for model in ["smol", "gemma"] {
        let r = c
            .post(serve.at("/v1/chat/completions"))
            .json(&json!({"model": model, "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": "Say hello."}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{model}");
        slices.push(r.headers()["x-slice"].to_str().unwrap().to_string());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["model"], model, "{v}");
        // TGI's route takes the model from x-model.
        let r = c
            .post(serve.at("/generate"))
            .header("x-model", model)
            .json(&json!({"inputs": "The capital of France is",
                "parameters": {"max_new_tokens": 4}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{model}");
    }
    assert_ne!(slices[0], slices[1], "each model has its own slice");
    let models: Value = get_json(&c, serve.at("/v1/models")).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"smol") && ids.contains(&"gemma"), "{models}");
}
