//! A reload under load: while clients keep sending requests, the config changes (a model
//! added, one removed, a replica count lowered) and `migserve reload` applies it. No
//! request fails, and only the slices whose workers changed are restarted; a config that
//! does not place is refused whole.

mod common;

use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::load::{self, run_clients};
use common::{client, fill_paths, get_json, migserve_binary, Serve};
use serde_json::Value;

const BEFORE: &str = r#"
[slices]
source = "emulate"
emulate = "4x1g.10gb"

[lifecycle]
max_models_per_slice = 1
load_timeout_secs = 240

[[models]]
name = "smol"
path = "{model}"
replicas = 2

[[models]]
name = "smol-hf"
path = "{hf}"
replicas = 1

[[models]]
name = "old"
path = "{model}"
replicas = 1
"#;

/// `old` removed, `gemma` added, `smol` down to one replica; `smol-hf` as it was.
const AFTER: &str = r#"
[slices]
source = "emulate"
emulate = "4x1g.10gb"

[lifecycle]
max_models_per_slice = 1
load_timeout_secs = 240

[[models]]
name = "smol"
path = "{model}"
replicas = 1

[[models]]
name = "smol-hf"
path = "{hf}"
replicas = 1

[[models]]
name = "gemma"
path = "{gemma}"
replicas = 1
"#;

/// `migserve reload --url URL`: success and what it printed.
fn reload(serve: &Serve) -> (bool, String) {
    let out = Command::new(migserve_binary())
        .args(["reload", "--url", &serve.url])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run migserve reload");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// (slice, model, pid) of every worker, in slice order.
fn workers(slices: &[Value]) -> Vec<(String, String, u64)> {
    let mut out: Vec<(String, String, u64)> = slices
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["model"].as_str().unwrap().to_string(),
                s["pid"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_restarts_only_what_changed_and_fails_nothing() {
    let serve = Serve::start("reload-under-load", BEFORE);
    let c = client();
    let ready =
        |want: usize| move |s: &[Value]| s.len() == want && s.iter().all(|x| x["state"] == "ready");
    let before = serve
        .wait_slices(&c, Duration::from_secs(240), "four workers", ready(4))
        .await;
    let before = workers(&before);
    assert_eq!(
        before
            .iter()
            .map(|w| (w.0.as_str(), w.1.as_str()))
            .collect::<Vec<_>>(),
        [
            ("cpu0", "smol"),
            ("cpu1", "smol"),
            ("cpu2", "smol-hf"),
            ("cpu3", "old")
        ]
    );
    let reference = load::reference(&c, &serve.url, &load::asks(&["smol", "smol-hf", "old"])).await;

    let models = Arc::new(RwLock::new(
        ["smol", "smol-hf", "old"].map(String::from).to_vec(),
    ));
    let phase = load::phase(30);
    let until = Instant::now() + phase * 2;
    let load = {
        let (c, url, models) = (c.clone(), serve.url.clone(), models.clone());
        tokio::spawn(async move { run_clients(&c, &url, 8, until, models).await })
    };
    tokio::time::sleep(phase).await;

    // A config whose pinned replicas cannot be placed is refused whole.
    std::fs::write(
        &serve.config,
        fill_paths(&BEFORE.replace("replicas = 2", "replicas = 9")),
    )
    .unwrap();
    let (ok, said) = reload(&serve);
    assert!(!ok, "{said}");
    assert!(
        said.contains("reload refused") && said.contains("nothing was changed"),
        "{said}"
    );

    // The real change. Clients stop asking for `old` (its requests in flight finish) and
    // start asking for `gemma`, held until it is loaded.
    std::fs::write(&serve.config, fill_paths(AFTER)).unwrap();
    *models.write().unwrap() = ["smol", "smol-hf", "gemma"].map(String::from).to_vec();
    let (ok, said) = reload(&serve);
    assert!(ok, "{said}");
    for line in [
        "added                      gemma",
        "removed                    old",
        "unchanged                  smol, smol-hf",
        "workers started            gemma@cpu1",
        "workers stopped            old@cpu3, smol@cpu1",
    ] {
        assert!(said.contains(line), "{line:?} not in:\n{said}");
    }

    let outcome = load.await.unwrap();
    eprintln!(
        "{} requests, {} failed",
        outcome.requests(),
        outcome.failures.len()
    );
    assert!(outcome.failures.is_empty(), "{:#?}", outcome.failures);
    let after = serve
        .wait_slices(&c, Duration::from_secs(120), "three workers", ready(3))
        .await;
    let after = workers(&after);
    // Unchanged workers kept running (same process); cpu1 holds gemma now; cpu3 is free.
    assert_eq!(after[0], before[0], "smol on cpu0 kept running");
    assert_eq!(after[2], before[2], "smol-hf on cpu2 kept running");
    assert_eq!(
        (after[1].0.as_str(), after[1].1.as_str()),
        ("cpu1", "gemma")
    );
    assert_eq!(after.len(), 3, "{after:?}");

    // Answers: the models that stayed answered as alone; gemma too (its reference now).
    let mut reference = reference;
    reference.extend(load::reference(&c, &serve.url, &load::asks(&["gemma"])).await);
    let differing = outcome.differing(&reference);
    assert!(differing.is_empty(), "{differing:#?}");
    let gemma = outcome
        .answers
        .keys()
        .filter(|a| a.model == "gemma")
        .count();
    assert!(gemma > 0, "gemma served nothing after the reload");
    let listed = get_json(&c, serve.at("/v1/models")).await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["smol", "smol-hf", "gemma"]);
}
