//! Models over time with real models on emulated CPU slices: a catalogue larger than the
//! slices loads on demand and evicts the least recently used; two models share a slice,
//! each with its memory share; a busy model gets more replicas up to `max_replicas`; a
//! shutdown drain answers new requests at once.

mod common;

use std::time::{Duration, Instant};

use common::{client, get_json, metric_value, metrics_text, process_env, Serve};
use serde_json::{json, Value};

/// POSTs an OpenAI completion for `model` (greedy); the status, `x-model`, `x-slice` and
/// the answer's text.
async fn complete(
    c: &reqwest::Client,
    serve: &Serve,
    model: &str,
    prompt: &str,
) -> (u16, String, String, String) {
    let r = c
        .post(serve.at("/v1/completions"))
        .json(&json!({"model": model, "prompt": prompt, "max_tokens": 6, "temperature": 0}))
        .send()
        .await
        .expect("POST /v1/completions");
    let status = r.status().as_u16();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let (model_header, slice) = (header("x-model"), header("x-slice"));
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let text = body["choices"][0]["text"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    (status, model_header, slice, text)
}

/// `GET /models` as a map from id to card.
async fn cards(c: &reqwest::Client, serve: &Serve) -> std::collections::HashMap<String, Value> {
    let list = get_json(c, serve.at("/models")).await;
    list["data"]
        .as_array()
        .expect("GET /models data")
        .iter()
        .map(|m| (m["id"].as_str().unwrap().to_string(), m.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_on_demand_models_take_turns_on_two_slices() {
    let dir = std::env::temp_dir().join(format!("migserve-lifecycle-{}", std::process::id()));
    let qwen = common::synth_qwen(&dir, 2);
    let config = format!(
        r#"
[slices]
source = "emulate"
emulate = "2x1g.10gb"

[lifecycle]
max_models_per_slice = 1
load_timeout_secs = 120

[[models]]
name = "smol-gguf"
path = "{{model}}"
replicas = 0

[[models]]
name = "smol-hf"
path = "{{hf}}"
replicas = 0

[[models]]
name = "gemma"
path = "{{gemma}}"
replicas = 0

[[models]]
name = "qwen-synth"
path = "{}"
replicas = 0
"#,
        qwen.display()
    );
    let serve = Serve::start("four-on-demand", &config);
    let c = client();
    let order = ["smol-gguf", "smol-hf", "gemma", "qwen-synth"];

    // Catalogued, nothing loaded yet.
    let listed = get_json(&c, serve.at("/v1/models")).await;
    let states: Vec<(&str, &str)> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap(),
                m["status"]["value"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(states, order.map(|m| (m, "unloaded")), "{listed}");

    let prompt = "The capital of France is";
    let mut first: std::collections::HashMap<&str, String> = Default::default();
    for round in 0..2 {
        for model in order {
            let started = Instant::now();
            let (status, answered_by, slice, text) = complete(&c, &serve, model, prompt).await;
            assert_eq!(status, 200, "{model}: {text}");
            assert_eq!(answered_by, model, "answered by the model it named");
            assert!(slice == "cpu0" || slice == "cpu1", "{slice}");
            eprintln!(
                "round {round} {model}: {:.1} s on {slice}",
                started.elapsed().as_secs_f64()
            );
            // The same greedy answer every time the model comes back.
            let seen = first.entry(model).or_insert_with(|| text.clone());
            assert_eq!(*seen, text, "{model} answered differently after a reload");
        }
    }
    // The two GGUF/HF forms of one model agree.
    assert_eq!(first["smol-gguf"], first["smol-hf"]);

    // A cycle of four over two slices: every request after the first two evicts the least
    // recently used model, so each model was loaded twice and a, b evicted twice, c, d once.
    let cards = cards(&c, &serve).await;
    let counts: Vec<(u64, u64)> = order
        .iter()
        .map(|m| {
            let card = &cards[*m];
            (
                card["loads"].as_u64().unwrap(),
                card["evictions"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, [(2, 2), (2, 2), (2, 1), (2, 1)], "{cards:#?}");
    let loaded: Vec<&str> = order
        .iter()
        .copied()
        .filter(|m| cards[*m]["status"]["value"] == "loaded")
        .collect();
    assert_eq!(loaded, ["gemma", "qwen-synth"]);
    for m in &loaded {
        assert!(cards[*m]["load_seconds"].as_f64().unwrap() > 0.0);
        assert_eq!(cards[*m]["replicas"].as_array().unwrap().len(), 1);
    }
    let text = metrics_text(&c, &serve.url).await;
    assert_eq!(
        metric_value(&text, "migserve_model_loads_total{model=\"gemma\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "migserve_model_drains_total{model=\"smol-gguf\",reason=\"evicted\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "migserve_model_state{model=\"smol-hf\",state=\"unloaded\"}"
        ),
        Some(1.0)
    );
    assert!(text.contains("migserve_model_load_seconds_count{model=\"qwen-synth\"} 2"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_share_one_slice_each_with_its_share() {
    let serve = Serve::start(
        "shared-slice",
        r#"
[slices]
source = "emulate"
emulate = "1g.2gb"

[lifecycle]
max_models_per_slice = 2

[[models]]
name = "smol"
path = "{model}"
replicas = 1

[[models]]
name = "gemma"
path = "{gemma}"
replicas = 1
"#,
    );
    let c = client();
    let slices = serve
        .wait_slices(&c, Duration::from_secs(180), "both workers ready", |s| {
            s.len() == 2 && s.iter().all(|x| x["state"] == "ready")
        })
        .await;
    let share = 1_000_000_000u64;
    for s in &slices {
        assert_eq!(s["id"], "cpu0", "both on the one slice: {s}");
        assert_eq!(s["memory_share_bytes"], share, "{s}");
        // Both workers see the slice itself.
        let pid = s["pid"].as_u64().unwrap();
        assert_eq!(
            process_env(pid, "CUDA_VISIBLE_DEVICES").as_deref(),
            Some("EMU-cpu-0")
        );
    }
    for model in ["smol", "gemma"] {
        let r = c
            .post(serve.at("/v1/completions"))
            .json(&json!({"model": model, "prompt": "Hello", "max_tokens": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let kv: u64 = r.headers()["x-kv-cache-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let info = get_json(
            &c,
            format!(
                "{}/info",
                slices.iter().find(|s| s["model"] == model).unwrap()["url"]
                    .as_str()
                    .unwrap()
            ),
        )
        .await;
        let per_token = info["kv_bytes_per_token"].as_u64().unwrap();
        // The cache was sized from the share (weights + cache + 10 % = the share), not the
        // CPU default of 16,384 positions nor the whole 2 GB slice.
        let cache = kv * per_token;
        assert!(kv != 16_384, "{model}: the default cache");
        assert!(
            cache > share / 2 && cache < share * 10 / 11,
            "{model}: {kv} positions x {per_token} B = {cache} B of a {share} B share"
        );
    }
    let cards = cards(&c, &serve).await;
    for model in ["smol", "gemma"] {
        let replicas = cards[model]["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 1);
        assert_eq!(replicas[0]["slice"], "cpu0");
        assert_eq!(replicas[0]["memory_share_bytes"], share);
        assert_eq!(replicas[0]["pinned"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_requests_during_a_shutdown_drain_are_answered_at_once() {
    let mut serve = Serve::start(
        "shutdown-drain",
        r#"
[slices]
source = "emulate"
emulate = "1g.10gb"

[supervisor]
drain_timeout_secs = 60

[[models]]
name = "smol"
path = "{model}"
"#,
    );
    let c = client();
    serve
        .wait_slices(&c, Duration::from_secs(120), "ready", |s| {
            s.iter().all(|x| x["state"] == "ready")
        })
        .await;
    // A long request in flight when the drain begins: it must finish whole.
    let long = {
        let c = c.clone();
        let url = serve.at("/generate");
        tokio::spawn(async move {
            let r = c
                .post(url)
                .json(&json!({"inputs": "Once upon a time", "parameters": {"max_new_tokens": 120, "ignore_eos": true}}))
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    serve.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New requests, each on a new connection, for a second: refused or 503 + Retry-After,
    // within 100 ms; never held, never reset.
    let mut answered = 0;
    let mut refused = 0;
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let sent = Instant::now();
        match fresh
            .post(serve.at("/generate"))
            .json(&json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}))
            .send()
            .await
        {
            Ok(r) => {
                assert_eq!(r.status(), 503, "a new request during the drain");
                assert_eq!(r.headers()["retry-after"], "1");
                answered += 1;
            }
            Err(e) => {
                assert!(e.is_connect(), "not a refused connection: {e:?}");
                refused += 1;
            }
        }
        let took = sent.elapsed();
        assert!(took < Duration::from_millis(100), "answered after {took:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        answered + refused > 10,
        "{answered} answered, {refused} refused"
    );
    let (status, body) = long.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["generated_text"].as_str().map(|t| !t.is_empty()),
        Some(true)
    );
    assert!(
        serve.wait_exit(Duration::from_secs(60)).is_some(),
        "serve exited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_on_demand_model_gets_another_replica_up_to_max_replicas() {
    let serve = Serve::start(
        "max-replicas",
        r#"
[slices]
source = "emulate"
emulate = "2x1g.10gb"

[router]
max_queue_per_slice = 1

[lifecycle]
max_models_per_slice = 1

[[models]]
name = "smol"
path = "{model}"
replicas = 0
max_replicas = 2
"#,
    );
    let c = client();
    let long = |c: reqwest::Client, url: String| async move {
        let r = c
            .post(url)
            // Long enough to still run while the second replica loads, on a busy machine too.
            .json(
                &json!({"model": "smol", "prompt": "Once upon a time", "max_tokens": 400,
                          "ignore_eos": true, "temperature": 0}),
            )
            .send()
            .await
            .unwrap();
        let slice = r.headers()["x-slice"].to_str().unwrap().to_string();
        (r.status().as_u16(), slice)
    };
    // The first loads a replica and keeps it busy (its queue holds one request).
    let first = tokio::spawn(long(c.clone(), serve.at("/v1/completions")));
    let deadline = Instant::now() + Duration::from_secs(60);
    while cards(&c, &serve).await["smol"]["replicas"][0]["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "the first request never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The second finds it full: a second replica loads on the other slice and takes it.
    let second = tokio::spawn(long(c.clone(), serve.at("/v1/completions")));
    let deadline = Instant::now() + Duration::from_secs(120);
    while cards(&c, &serve).await["smol"]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["in_flight"] == 1)
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "no second replica took the second request"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A third, with both full and max_replicas reached: 429 at once.
    let (status, body, ..) = {
        let r = c
            .post(serve.at("/v1/completions"))
            .json(&json!({"model": "smol", "prompt": "Hi", "max_tokens": 2}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let retry = r.headers().contains_key("retry-after");
        (status, r.json::<Value>().await.unwrap(), retry)
    };
    assert_eq!(status, 429, "{body}");
    let (a, b) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!((a.0, b.0), (200, 200));
    assert_ne!(a.1, b.1, "the two ran on different slices");
    let cards = cards(&c, &serve).await;
    assert_eq!(cards["smol"]["loads"], 2, "{cards:#?}");
    assert_eq!(cards["smol"]["replicas"].as_array().unwrap().len(), 2);
}
