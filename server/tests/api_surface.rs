//! The API surface beyond plain generation, on the real worker and front with the real
//! model: `n` choices, penalties and `logit_bias`, tokenize routes, API keys, and OpenAI's
//! validation (400 with `param`), each bad input leaving the worker serving.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{model_path, Serve, Worker};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

async fn post(c: &reqwest::Client, url: String, body: &Value) -> (u16, Value) {
    let r = c.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn ok(c: &reqwest::Client, url: String, body: &Value) -> Value {
    let (status, v) = post(c, url, body).await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn n_choices_each_equal_the_request_alone_with_its_seed() {
    let w = Worker::start(&["--max-batch-size", "8", "--max-concurrent-requests", "6"]);
    let c = client();
    let body = |n: u32, seed: u64| {
        json!({"messages": [{"role": "user", "content": "Tell me about cats."}],
               "n": n, "seed": seed, "temperature": 0.9, "max_tokens": 12})
    };
    let v = ok(&c, w.at("/v1/chat/completions"), &body(4, 7)).await;
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    // The prompt's whole blocks were computed once and shared by the other three choices.
    let metrics = c
        .get(w.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let hit = common::metric_value(&metrics, "migserve_prefix_cache_hit_tokens_total");
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap() as f64;
    let whole_blocks = ((prompt - 1.0) / 16.0).floor() * 16.0;
    assert_eq!(hit, Some(3.0 * whole_blocks), "{prompt} prompt tokens");
    let texts: Vec<&str> = choices
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap())
        .collect();
    for (j, text) in texts.iter().enumerate() {
        assert_eq!(choices[j]["index"], j);
        let alone = ok(&c, w.at("/v1/chat/completions"), &body(1, 7 + j as u64)).await;
        assert_eq!(
            alone["choices"][0]["message"]["content"].as_str().unwrap(),
            *text,
            "choice {j} is the request alone with seed {}",
            7 + j
        );
    }
    let distinct: std::collections::HashSet<_> = texts.iter().collect();
    assert!(distinct.len() > 1, "sampled choices differ: {texts:?}");
    // More choices than the worker ever runs at once: 400 naming `n`, not a 429.
    let (status, e) = post(&c, w.at("/v1/chat/completions"), &body(8, 1)).await;
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (400, Some("n")),
        "{e}"
    );
    // The prompt is counted once, the completions of all four.
    let alone = ok(&c, w.at("/v1/chat/completions"), &body(1, 7)).await;
    assert_eq!(v["usage"]["prompt_tokens"], alone["usage"]["prompt_tokens"]);

    // TGI's best_of: the sample with the highest log-probability sum, the others listed,
    // each reproducible alone from its seed.
    let tgi = |extra: Value| {
        let mut p =
            json!({"max_new_tokens": 10, "do_sample": true, "temperature": 1.2, "details": true});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        json!({"inputs": "My favourite food is", "parameters": p})
    };
    let v = ok(&c, w.at("/generate"), &tgi(json!({"best_of": 3}))).await;
    let others = v["details"]["best_of_sequences"].as_array().unwrap();
    assert_eq!(others.len(), 2);
    let sum = |tokens: &Value| -> f64 {
        tokens
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .sum()
    };
    let best = sum(&v["details"]["tokens"]);
    assert!(others.iter().all(|o| sum(&o["tokens"]) <= best), "{v}");
    let seed = v["details"]["seed"].clone();
    let alone = ok(&c, w.at("/generate"), &tgi(json!({"seed": seed}))).await;
    assert_eq!(alone["generated_text"], v["generated_text"]);
    let (status, _) = post(
        &c,
        w.at("/generate"),
        &tgi(json!({"best_of": 3, "seed": 1})),
    )
    .await;
    assert_eq!(status, 422, "best_of with a seed is refused, as TGI does");

    // A list of prompts (text and token ids) gives one choice each.
    let v = ok(
        &c,
        w.at("/v1/completions"),
        &json!({"prompt": [[504, 3458, 282], [1780, 2365]], "max_tokens": 3, "temperature": 0}),
    )
    .await;
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn penalties_and_logit_bias_steer_greedy_output() {
    let w = Worker::start(&[]);
    let c = client();
    let prompt = "one one one one one one one one";
    let body = |extra: Value| {
        let mut b = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": true,
                           "logprobs": 0});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let tokens = |v: &Value| -> Vec<String> {
        v["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    let plain = tokens(&ok(&c, w.at("/v1/completions"), &body(json!({}))).await);
    // Token 30 forced by a +100 bias: every generated token is it.
    let forced = ok(
        &c,
        w.at("/v1/completions"),
        &body(json!({"logit_bias": {"30": 100}})),
    )
    .await;
    let tokenized = ok(&c, w.at("/detokenize"), &json!({"tokens": [30]})).await;
    assert!(
        tokens(&forced).iter().all(|t| *t == tokenized["prompt"]),
        "{forced}"
    );
    // A frequency penalty keeps a token from repeating as the plain run does.
    let penalized = tokens(
        &ok(
            &c,
            w.at("/v1/completions"),
            &body(json!({"frequency_penalty": 2.0})),
        )
        .await,
    );
    let repeats = |t: &[String]| t.len() - t.iter().collect::<std::collections::HashSet<_>>().len();
    assert!(
        repeats(&penalized) < repeats(&plain),
        "{plain:?} vs {penalized:?}"
    );
    // presence_penalty through TGI's frequency_penalty field too.
    let tgi = ok(
        &c,
        w.at("/generate"),
        &json!({"inputs": prompt, "parameters": {"max_new_tokens": 8, "frequency_penalty": 2.0, "ignore_eos": true}}),
    )
    .await;
    assert_eq!(tgi["generated_text"].as_str().unwrap(), penalized.concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokenize_routes_agree_with_generation() {
    let w = Worker::start(&[]);
    let c = client();
    let text = "Hello, wörld! 1234";
    let tokens = ok(&c, w.at("/tokenize"), &json!({"inputs": text})).await;
    let tokens = tokens.as_array().unwrap();
    let gen = ok(
        &c,
        w.at("/generate"),
        &json!({"inputs": text, "parameters": {"max_new_tokens": 1, "details": true, "decoder_input_details": true}}),
    )
    .await;
    let prefill: Vec<&Value> = gen["details"]["prefill"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["id"])
        .collect();
    let ids: Vec<&Value> = tokens.iter().map(|t| &t["id"]).collect();
    assert_eq!(ids, prefill);
    let joined: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(joined, text);
    for t in tokens {
        let (start, stop) = (
            t["start"].as_u64().unwrap() as usize,
            t["stop"].as_u64().unwrap() as usize,
        );
        assert_eq!(&text[start..stop], t["text"].as_str().unwrap());
    }
    let ids: Vec<u64> = tokens.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let back = ok(&c, w.at("/detokenize"), &json!({"tokens": ids})).await;
    assert_eq!(back["prompt"], text);
    let chat = json!({"messages": [{"role": "user", "content": "Hi there"}], "max_tokens": 1});
    let templated = ok(&c, w.at("/chat_tokenize"), &chat).await;
    assert!(templated["templated_text"]
        .as_str()
        .unwrap()
        .contains("Hi there"));
    let answer = ok(&c, w.at("/v1/chat/completions"), &chat).await;
    assert_eq!(
        templated["tokenize_response"].as_array().unwrap().len() as u64,
        answer["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    let (status, v) = post(&c, w.at("/detokenize"), &json!({"tokens": [99999999]})).await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_openai_input_gets_400_naming_the_field_and_the_worker_keeps_serving() {
    let w = Worker::start(&["--max-input-tokens", "64", "--max-total-tokens", "128"]);
    let c = client();
    let user = json!([{"role": "user", "content": "hi"}]);
    let chat_cases = [
        (
            json!({"messages": [{"role": "wizard", "content": "hi"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user"}]}),
            "messages[0].content",
        ),
        (json!({"messages": user, "temperature": 9}), "temperature"),
        (json!({"messages": user, "top_p": 2}), "top_p"),
        (
            json!({"messages": user, "presence_penalty": -2.5}),
            "presence_penalty",
        ),
        (
            json!({"messages": user, "logprobs": true, "top_logprobs": 30}),
            "top_logprobs",
        ),
        (json!({"messages": user, "n": 0}), "n"),
        (json!({"messages": user, "max_tokens": 0}), "max_tokens"),
        (json!({"messages": user, "max_tokens": 500}), "max_tokens"),
        (
            json!({"messages": user, "logit_bias": {"a": 1}}),
            "logit_bias",
        ),
        (
            json!({"messages": [{"role": "user", "content": "word ".repeat(200)}]}),
            "messages",
        ),
    ];
    for (body, param) in chat_cases {
        let (status, v) = post(&c, w.at("/v1/chat/completions"), &body).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    let (_, v) = post(
        &c,
        w.at("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "word ".repeat(200)}]}),
    )
    .await;
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("messages"),
        "{v}"
    );
    let (status, v) = post(
        &c,
        w.at("/v1/completions"),
        &json!({"prompt": "hi", "logprobs": 21}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("logprobs")),
        "{v}"
    );
    let (status, v) = post(
        &c,
        w.at("/v1/completions"),
        &json!({"prompt": [], "max_tokens": 2}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("prompt")),
        "{v}"
    );
    // TGI keeps its own rules and status.
    let (status, v) = post(
        &c,
        w.at("/generate"),
        &json!({"inputs": "hi", "parameters": {"top_n_tokens": 9}}),
    )
    .await;
    assert_eq!(
        (status, v["error_type"].as_str()),
        (422, Some("validation")),
        "{v}"
    );
    let (status, v) = post(
        &c,
        w.at("/generate_stream"),
        &json!({"inputs": "hi", "parameters": {"details": true, "decoder_input_details": true}}),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    // Unknown routes and methods: JSON errors.
    let r = c.get(w.at("/no/such/route")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error_type"], "not_found");
    let r = c.get(w.at("/generate")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error_type"],
        "method_not_allowed"
    );
    let r = c.get(w.at("/v1/chat/completions")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
    // Still serving; ids never repeat.
    let a = ok(
        &c,
        w.at("/v1/chat/completions"),
        &json!({"messages": user, "max_tokens": 2}),
    )
    .await;
    let b = ok(
        &c,
        w.at("/v1/chat/completions"),
        &json!({"messages": user, "max_tokens": 2}),
    )
    .await;
    assert_ne!(a["id"], b["id"]);
    assert!(a["id"].as_str().unwrap().starts_with("chatcmpl-"));
}

const KEY: &str = "test-key-5f3a9c1e";

/// Every keyed route: method, path, body.
fn keyed_routes() -> Vec<(&'static str, &'static str, Value)> {
    let tgi = json!({"inputs": "Hello", "parameters": {"max_new_tokens": 2}});
    let chat =
        json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
    vec![
        ("POST", "/generate", tgi.clone()),
        ("POST", "/generate_stream", tgi.clone()),
        ("POST", "/", tgi.clone()),
        (
            "POST",
            "/v1/completions",
            json!({"model": "smol", "prompt": "Hello", "max_tokens": 2}),
        ),
        ("POST", "/v1/chat/completions", chat.clone()),
        ("POST", "/tokenize", tgi),
        ("POST", "/chat_tokenize", chat),
        (
            "POST",
            "/detokenize",
            json!({"model": "smol", "tokens": [504]}),
        ),
        ("GET", "/info", Value::Null),
        ("GET", "/v1/models", Value::Null),
    ]
}

async fn check_keys(c: &reqwest::Client, base: &str, who: &str) {
    for (method, path, body) in keyed_routes() {
        let send = |key: Option<&str>| {
            let mut r = match method {
                "GET" => c.get(format!("{base}{path}")),
                _ => c.post(format!("{base}{path}")).json(&body),
            };
            if let Some(k) = key {
                r = r.bearer_auth(k);
            }
            r.send()
        };
        for key in [None, Some("wrong-key")] {
            let r = send(key).await.unwrap();
            assert_eq!(r.status(), 401, "{who} {path} with {key:?}");
            let v: Value = r.json().await.unwrap();
            let shape_ok = match path.starts_with("/v1/") {
                true => v["error"]["type"] == "authentication_error",
                false => v["error_type"] == "unauthorized",
            };
            assert!(shape_ok, "{who} {path}: {v}");
        }
        let r = send(Some(KEY)).await.unwrap();
        assert_eq!(r.status(), 200, "{who} {path} with the key");
        let _ = r.bytes().await;
    }
    let r = c.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{who}: /health is open");
    let r = c.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{who}: /metrics is open by default");
    // The API's description is open too: the OpenAPI document and the page that renders it.
    let r = c.get(format!("{base}/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{who}: /openapi.json is open");
    let doc: Value = r.json().await.unwrap();
    for path in ["/generate", "/v1/chat/completions", "/tokenize"] {
        assert!(
            doc["paths"][path].is_object(),
            "{who}: {path} in /openapi.json"
        );
    }
    assert!(
        doc["components"]["schemas"]["GenerateParameters"]["properties"]["max_new_tokens"]
            .is_object()
    );
    let r = c.get(format!("{base}/docs")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{who}: /docs is open");
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = r.text().await.unwrap();
    assert!(
        page.contains("openapi.json") && !page.contains("https://"),
        "{who}: /docs is self-contained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_keys_guard_every_route_of_worker_and_front_and_never_reach_the_log() {
    let dir = std::env::temp_dir().join(format!("migserve-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = client();
    let worker_log = dir.join("worker.log");
    {
        let w = Worker::start_logged(
            &model_path(),
            &["--model-id", "smol"],
            &[("MIGSERVE_API_KEY", KEY), ("RUST_LOG", "debug")],
            Stdio::from(std::fs::File::create(&worker_log).unwrap()),
        );
        check_keys(&c, &w.url, "worker").await;
    }
    let serve_log = dir.join("serve.log");
    let config = r#"
[slices]
source = "emulate"
emulate = "2x1g.10gb"

[[models]]
name = "smol"
path = "{model}"
replicas = 2
"#;
    let s = Serve::start_logged(
        "keys",
        config,
        &[("MIGSERVE_API_KEY", KEY), ("RUST_LOG", "debug")],
        Stdio::from(std::fs::File::create(&serve_log).unwrap()),
    );
    // /slices is keyed too: read it with a client that sends the key.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {KEY}").parse().unwrap(),
    );
    let keyed = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    // The workers come up behind the key too: the front's calls carry it.
    s.wait_slices(&keyed, Duration::from_secs(120), "both ready", |slices| {
        slices.len() == 2 && slices.iter().all(|s| s["state"] == "ready")
    })
    .await;
    check_keys(&c, &s.url, "front").await;
    // A tokenize body that says `"stream": true` is still answered whole, and costs the
    // slices nothing (it once looked like a stream that never started).
    for _ in 0..3 {
        let body = json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "stream": true});
        let r = keyed
            .post(s.at("/chat_tokenize"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let slices = s.slices(&keyed).await;
    assert!(
        slices
            .iter()
            .all(|s| s["state"] == "ready" && s["errors"] == 0),
        "{slices:?}"
    );
    // Workers the front started require the key themselves.
    let worker_url = s.slices(&keyed).await[0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .post(format!("{worker_url}/generate"))
        .json(&json!({"inputs": "Hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a worker of serve is keyed");
    drop(s);
    for log in [&worker_log, &serve_log] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(text.len() > 100, "{} has log lines", log.display());
        assert!(!text.contains(KEY), "{} holds the key", log.display());
        // One line per request: refused and answered, whole and streamed (the front's own,
        // not its workers' lines, which it prefixes with `[slice]`).
        let lines = |needles: &[&str]| {
            text.lines()
                .filter(|l| !l.starts_with('['))
                .filter(|l| needles.iter().all(|n| l.contains(n)))
                .count()
        };
        let who = log.display();
        assert!(
            lines(&["request", "path=/generate ", "status=401"]) >= 2,
            "{who}"
        );
        assert!(
            lines(&[
                "request",
                "path=/generate ",
                "status=200",
                "model=smol",
                "generated_tokens=2"
            ]) >= 1,
            "{who}"
        );
        assert!(
            lines(&[
                "request",
                "path=/generate_stream",
                "status=200",
                "streamed=true"
            ]) >= 1,
            "{who}"
        );
    }
}
