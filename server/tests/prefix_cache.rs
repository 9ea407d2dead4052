//! The prefix cache on the real worker with the real model: greedy answers are the same with
//! caching on and off (prompts sharing whole blocks, diverging inside a block, a prompt that
//! is entirely cached, 32 at once under KV pressure), and the cached tokens are reported.

mod common;

use std::time::Duration;

use common::{metric_value, Worker};
use serde_json::{json, Value};

const SYSTEM: &str = "You are a museum guide in Paris. You answer visitors' questions about \
                      the city's history, its monuments and its art, in one or two short \
                      sentences, and you say so when you do not know.";

fn questions() -> Vec<String> {
    let mut q: Vec<String> = [
        "When was the Eiffel Tower built?",
        "When was the Louvre built?",
        "Who painted the Mona Lisa?",
        "What is the Seine?",
    ]
    .map(String::from)
    .to_vec();
    // The same question again: its whole prompt is cached.
    q.push(q[0].clone());
    q
}

fn body(question: &str, max_tokens: u32) -> Value {
    json!({"messages": [{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": question}],
           "max_tokens": max_tokens, "temperature": 0})
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
}

/// The answer's text, its usage's cached tokens and its `x-prompt-cached-tokens` header.
async fn ask(
    c: &reqwest::Client,
    w: &Worker,
    question: &str,
    max_tokens: u32,
) -> (String, u64, u64) {
    let r = c
        .post(w.at("/v1/chat/completions"))
        .json(&body(question, max_tokens))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let header: u64 = r.headers()["x-prompt-cached-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    (text, cached, header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn greedy_answers_are_the_same_with_caching_on_and_off() {
    let c = client();
    let off = Worker::start(&["--no-prefix-caching"]);
    let on = Worker::start(&[]);
    let (mut want, mut long) = (Vec::new(), Vec::new());
    for q in questions() {
        let (text, cached, header) = ask(&c, &off, &q, 16).await;
        assert_eq!((cached, header), (0, 0), "caching is off");
        want.push(text);
        long.push(ask(&c, &off, &q, 48).await.0);
    }
    let info: Value = c
        .get(off.at("/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(info["prefix_cache"].is_null(), "{info}");

    // One after another: the second question on shares the system prompt's blocks.
    let mut cached = Vec::new();
    for (i, q) in questions().iter().enumerate() {
        let (text, hit, header) = ask(&c, &on, q, 16).await;
        assert_eq!(text, want[i], "question {i}");
        assert_eq!(hit, header);
        cached.push(hit);
    }
    assert_eq!(cached[0], 0);
    assert!(cached[1..].iter().all(|h| *h >= 32), "{cached:?}");
    assert!(cached[4] >= cached[1], "the repeated question: {cached:?}");
    let info: Value = c
        .get(on.at("/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p = &info["prefix_cache"];
    assert_eq!(
        p["hit_tokens"].as_u64(),
        Some(cached.iter().sum::<u64>()),
        "{info}"
    );
    assert!(p["hit_rate"].as_f64().unwrap() > 0.3, "{info}");
    let metrics = c
        .get(on.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric_value(&metrics, "migserve_prefix_cache_hit_tokens_total"),
        Some(cached.iter().sum::<u64>() as f64)
    );
    drop(on);

    // 32 at once on a cache of 1,024 positions (32 prompts of ~60 tokens growing by 48 do
    // not fit): preemption, eviction, and the same answers.
    let small = Worker::start(&["--kv-cache-tokens", "1024", "--max-batch-size", "32"]);
    let runs: Vec<_> = (0..32)
        .map(|i| {
            let (c, url, q) = (
                c.clone(),
                small.at("/v1/chat/completions"),
                questions()[i % 5].clone(),
            );
            tokio::spawn(async move {
                let v: Value = c
                    .post(url)
                    .json(&body(&q, 48))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        assert_eq!(r.await.unwrap(), long[i % 5], "request {i}");
    }
    let metrics = c
        .get(small.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let preempted = metric_value(&metrics, "migserve_preemptions_total").unwrap_or(0.0);
    let hits = metric_value(&metrics, "migserve_prefix_cache_hit_tokens_total").unwrap_or(0.0);
    assert!(preempted > 0.0, "the cache was small enough to preempt");
    assert!(hits > 0.0, "prefixes were shared under pressure");
}
