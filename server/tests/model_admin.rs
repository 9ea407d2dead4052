//! The admin API and bad input around models: admin key versus client keys, uncatalogued
//! models, a model too big for any slice, a model file that fails to load, unloading a
//! pinned model, reloads (refused and applied, by `POST /reload` and SIGHUP), models found
//! in `models_dir`, idle models leaving; and `serve` keeps serving through all of it.

mod common;

use std::time::{Duration, Instant};

use common::{client, fill_paths, metric_value, metrics_text, model_path, Serve};
use serde_json::{json, Value};

const CLIENT_KEY: &str = "client-key-1";
const ADMIN_KEY: &str = "admin-key-1";

fn config(dir: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
models_dir = "{}"

[slices]
source = "emulate"
emulate = "2x1g.10gb"

[lifecycle]
max_models_per_slice = 1
load_timeout_secs = 120
idle_unload_secs = 4

[supervisor]
restart_backoff_secs = 30

[[models]]
name = "smol"
path = "{{model}}"
replicas = 1

[[models]]
name = "broken"
path = "{}"
replicas = 0

[[models]]
name = "huge"
path = "{{model}}"
replicas = 0

[models.engine]
kv_cache_tokens = 10000000
{extra}
"#,
        dir.join("models").display(),
        dir.join("broken.gguf").display(),
    )
}

/// Status, JSON body and headers of an answer.
type Answer = (u16, Value, reqwest::header::HeaderMap);

/// Calls the front as a client (the client key) or an admin (the admin key).
struct Caller {
    c: reqwest::Client,
    base: String,
}

impl Caller {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut r = self.c.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            r = r.bearer_auth(key);
        }
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, r.json().await.unwrap_or(Value::Null), headers)
    }

    /// `POST path` with the admin key.
    async fn admin(&self, path: &str, body: Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(ADMIN_KEY), Some(body))
            .await
    }

    /// `GET /models` with the admin key.
    async fn models(&self) -> Value {
        let (status, body, _) = self
            .send(reqwest::Method::GET, "/models", Some(ADMIN_KEY), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `GET path` with `key`.
    async fn get(&self, path: &str, key: Option<&str>) -> Answer {
        self.send(reqwest::Method::GET, path, key, None).await
    }

    /// A two-token completion of `model` with the client key.
    async fn complete(&self, model: &str) -> Answer {
        let body = json!({"model": model, "prompt": "Hi", "max_tokens": 2});
        self.send(
            reqwest::Method::POST,
            "/v1/completions",
            Some(CLIENT_KEY),
            Some(body),
        )
        .await
    }
}

fn card<'a>(models: &'a Value, id: &str) -> &'a Value {
    models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {models}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_and_bad_input_get_clear_answers_and_serving_goes_on() {
    let dir = std::env::temp_dir().join(format!("migserve-admin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("models")).unwrap();
    // A model file cut short: its headers read, its tensors do not.
    let whole = std::fs::read(model_path()).unwrap();
    std::fs::write(dir.join("broken.gguf"), &whole[..whole.len() / 3]).unwrap();
    // models_dir: one GGUF, found under its file name.
    std::os::unix::fs::symlink(model_path(), dir.join("models/dir-smol.gguf")).unwrap();
    let env = [
        ("MIGSERVE_API_KEY", CLIENT_KEY),
        ("MIGSERVE_ADMIN_KEY", ADMIN_KEY),
    ];
    let serve = Serve::start_with_env("admin", &config(&dir, ""), &env);
    let c = client();
    let api = Caller {
        c: c.clone(),
        base: serve.url.clone(),
    };

    // The admin routes: the admin key opens them; no key, a wrong key or a client key do not.
    for key in [None, Some("wrong"), Some(CLIENT_KEY)] {
        let (status, body, headers) = api.get("/models", key).await;
        assert_eq!(status, 401, "{key:?}: {body}");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    let models = api.models().await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["smol", "broken", "huge", "dir-smol"]);
    assert_eq!(card(&models, "dir-smol")["source"], "models_dir");
    assert_eq!(card(&models, "smol")["pinned_replicas"], 1);
    // The admin key is not a client key.
    assert_eq!(api.get("/v1/models", Some(ADMIN_KEY)).await.0, 401);
    let (status, listed, _) = api.get("/v1/models", Some(CLIENT_KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(listed["data"].as_array().unwrap().len(), 4, "{listed}");

    // An uncatalogued model: 404 in each endpoint's shape. Never a path.
    for model in ["nope", "/etc/passwd"] {
        let (status, body, _) = api.complete(model).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["type"], "not_found_error");
        let (status, body, _) = api.admin("/models/load", json!({"model": model})).await;
        assert_eq!(status, 404, "{body}");
    }
    let r = c
        .post(serve.at("/generate"))
        .bearer_auth(CLIENT_KEY)
        .header("x-model", "nope")
        .json(&json!({"inputs": "Hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_type"], "not_found", "TGI's shape: {body}");

    // Too big for any slice: a 4xx at once naming the model and what it needs.
    let started = Instant::now();
    let (status, body, _) = api.complete("huge").await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("model \"huge\" needs about") && message.contains("GB"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A file that fails to load: 503 with the loader's message; the model is `failed` with
    // it, and the slice serves other models.
    let (status, body, headers) = api.complete("broken").await;
    assert_eq!(status, 503, "{body}");
    let why = body["error"]["message"].as_str().unwrap().to_string();
    assert!(why.contains("model \"broken\" failed to load"), "{why}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    let models = api.models().await;
    let broken = card(&models, "broken");
    assert_eq!(broken["status"]["value"], "failed", "{broken}");
    // The loader's own words: what is wrong with which file.
    let reason = broken["status"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("error: loading") && reason.contains("broken.gguf") && why.contains(reason),
        "{reason} / {why}"
    );
    // Within the backoff it is refused at once, with the same reason.
    let (status, again, headers) = api.complete("broken").await;
    assert_eq!(status, 503, "{again}");
    assert!(headers.contains_key("retry-after"));
    let (status, body, headers) = api.complete("dir-smol").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-model"], "dir-smol");
    assert_eq!(headers["x-slice"], "cpu1", "the slice the broken load left");

    // Admin calls that conflict or name what does not exist.
    let (status, body, _) = api.admin("/models/unload", json!({"model": "smol"})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pinned"),
        "{body}"
    );
    let wrong_slice = json!({"model": "dir-smol", "slice": "cpu9"});
    assert_eq!(api.admin("/models/load", wrong_slice).await.0, 404);
    assert_eq!(
        api.admin("/models/load", json!({"modle": "x"})).await.0,
        400
    );
    // Loading what is loaded answers at once; unloading drains it.
    let (status, body, _) = api
        .admin("/models/load", json!({"model": "dir-smol"}))
        .await;
    assert_eq!(
        (status, body["success"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    assert_eq!(body["model"]["status"]["value"], "loaded");
    let (status, body, _) = api
        .admin("/models/unload", json!({"model": "dir-smol"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"]["status"]["value"], "unloaded", "{body}");
    // An explicit load, on a slice, answers once the model is ready there.
    let on_cpu1 = json!({"model": "dir-smol", "slice": "cpu1"});
    let (status, body, _) = api.admin("/models/load", on_cpu1).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"]["replicas"][0]["slice"], "cpu1", "{body}");
    assert_eq!(body["model"]["replicas"][0]["state"], "ready", "{body}");

    // Idle: nobody asks for dir-smol, so it leaves after idle_unload_secs; the pinned model
    // never does.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let models = api.models().await;
        if card(&models, "dir-smol")["status"]["value"] == "unloaded" {
            assert_eq!(card(&models, "smol")["status"]["value"], "loaded");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dir-smol did not leave when idle: {models}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let text = metrics_text(&c, &serve.url).await;
    let drains = |reason: &str| {
        let series =
            format!("migserve_model_drains_total{{model=\"dir-smol\",reason=\"{reason}\"}}");
        metric_value(&text, &series).unwrap_or(0.0)
    };
    assert!(drains("idle") >= 1.0 && drains("unload") >= 1.0, "{text}");
    let failures = metric_value(
        &text,
        "migserve_model_load_failures_total{model=\"broken\"}",
    );
    assert!(failures.unwrap() >= 1.0, "{text}");

    // A reload that does not parse is refused whole; nothing changes.
    std::fs::write(&serve.config, "[[models]\nname =").unwrap();
    let (status, body, _) = api
        .send(reqwest::Method::POST, "/reload", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1"),
        "{body}"
    );
    // SIGHUP applies a good one: a model added to the catalogue.
    let added = "[[models]]\nname = \"added\"\npath = \"{model}\"\nreplicas = 0\n";
    std::fs::write(&serve.config, fill_paths(&config(&dir, added))).unwrap();
    serve.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, listed, _) = api.get("/v1/models", Some(CLIENT_KEY)).await;
        if listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "added")
        {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Through all of it the pinned model kept serving.
    let (status, body, headers) = api.complete("smol").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-slice"], "cpu0");
    let _ = std::fs::remove_dir_all(&dir);
}
