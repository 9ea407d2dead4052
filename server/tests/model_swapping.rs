//! Constant swapping under load: 16 clients over three models that two slices (one model
//! each) cannot hold at once, for two minutes, greedy, half of them streamed. Every request
//! succeeds, is answered by the model it named, and gets the answer it gets alone; no
//! eviction cuts a request in flight.

mod common;

use std::sync::{Arc, RwLock};
use std::time::Instant;

use common::load::{self, run_clients};
use common::{client, get_json, Serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_over_three_models_on_two_slices_lose_nothing() {
    let serve = Serve::start(
        "swapping",
        r#"
[slices]
source = "emulate"
emulate = "2x1g.10gb"

[lifecycle]
max_models_per_slice = 1
load_timeout_secs = 240

[[models]]
name = "smol-gguf"
path = "{model}"
replicas = 0

[[models]]
name = "smol-hf"
path = "{hf}"
replicas = 0

[[models]]
name = "gemma"
path = "{gemma}"
replicas = 0

[models.engine]
kv_cache_tokens = 8192
"#,
    );
    let c = client();
    let models = ["smol-gguf", "smol-hf", "gemma"];
    let started = Instant::now();
    let reference = load::reference(&c, &serve.url, &load::asks(&models)).await;
    eprintln!(
        "reference answers in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let list = Arc::new(RwLock::new(models.map(String::from).to_vec()));
    let until = Instant::now() + load::phase(120);
    let outcome = run_clients(&c, &serve.url, 16, until, list).await;
    let cards = get_json(&c, serve.at("/models")).await;
    let evictions: u64 = cards["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["evictions"].as_u64().unwrap())
        .sum();
    eprintln!(
        "{} requests, {} failed, {evictions} evictions",
        outcome.requests(),
        outcome.failures.len()
    );
    assert!(outcome.failures.is_empty(), "{:#?}", outcome.failures);
    let differing = outcome.differing(&reference);
    assert!(differing.is_empty(), "{differing:#?}");
    for model in models {
        let served = outcome
            .answers
            .iter()
            .filter(|(ask, _)| ask.model == model)
            .map(|(_, a)| a.len())
            .sum::<usize>();
        assert!(served > 0, "{model} served nothing");
    }
    // The swapping was constant: every model left its slice many times.
    assert!(evictions >= 10, "only {evictions} evictions: {cards:#}");
}
