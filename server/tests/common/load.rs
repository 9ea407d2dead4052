//! Client load for the model-lifecycle tests: concurrent clients sending greedy requests for
//! a changing set of models, half of them streamed, every answer kept for comparison with
//! the same request sent alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Prompts the clients cycle through.
pub const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colors are",
];

/// New tokens per request.
const NEW_TOKENS: u32 = 8;

/// One request: a model, a prompt, streamed (TGI `/generate_stream`) or not (OpenAI
/// `/v1/completions`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ask {
    pub model: String,
    pub prompt: String,
    pub stream: bool,
}

/// Sends `ask`; the answer's text and the model that answered (`x-model`), or what went
/// wrong.
pub async fn send(c: &reqwest::Client, base: &str, ask: &Ask) -> Result<(String, String), String> {
    let response = if ask.stream {
        c.post(format!("{base}/generate_stream"))
            .header("x-model", &ask.model)
            .json(&json!({"inputs": ask.prompt, "parameters": {"max_new_tokens": NEW_TOKENS}}))
            .send()
            .await
    } else {
        c.post(format!("{base}/v1/completions"))
            .json(&json!({"model": ask.model, "prompt": ask.prompt,
                          "max_tokens": NEW_TOKENS, "temperature": 0}))
            .send()
            .await
    }
    .map_err(|e| format!("{ask:?}: {e}"))?;
    let status = response.status();
    let by = response
        .headers()
        .get("x-model")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let body = response
        .text()
        .await
        .map_err(|e| format!("{ask:?}: reading the answer: {e}"))?;
    if !status.is_success() {
        return Err(format!("{ask:?}: {status}: {body}"));
    }
    let text = if ask.stream {
        let last = body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .next_back()
            .ok_or_else(|| format!("{ask:?}: no events in {body:?}"))?;
        if last.get("error").is_some() {
            return Err(format!("{ask:?}: error event {last}"));
        }
        last["generated_text"]
            .as_str()
            .ok_or_else(|| format!("{ask:?}: the stream did not end with the whole text: {last}"))?
            .to_string()
    } else {
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{ask:?}: {e}: {body}"))?;
        v["choices"][0]["text"]
            .as_str()
            .ok_or_else(|| format!("{ask:?}: no text in {v}"))?
            .to_string()
    };
    Ok((text, by))
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Answers by request.
    pub answers: HashMap<Ask, Vec<String>>,
    /// Requests that failed or were answered by another model, with why.
    pub failures: Vec<String>,
}

impl Outcome {
    pub fn requests(&self) -> usize {
        self.answers.values().map(Vec::len).sum::<usize>() + self.failures.len()
    }

    /// Answers that differ from `reference` (the request sent alone), described.
    pub fn differing(&self, reference: &HashMap<Ask, String>) -> Vec<String> {
        let mut out = Vec::new();
        for (ask, texts) in &self.answers {
            let Some(want) = reference.get(ask) else {
                out.push(format!("{ask:?}: no reference"));
                continue;
            };
            for text in texts.iter().filter(|t| *t != want) {
                out.push(format!("{ask:?}: {text:?} instead of {want:?}"));
            }
        }
        out
    }
}

/// Sends each ask alone, one after the other: the reference answers.
pub async fn reference(c: &reqwest::Client, base: &str, asks: &[Ask]) -> HashMap<Ask, String> {
    let mut out = HashMap::new();
    for ask in asks {
        let (text, by) = send(c, base, ask).await.expect("reference request");
        assert_eq!(by, ask.model);
        out.insert(ask.clone(), text);
    }
    out
}

/// Every ask for `models`, both ways, each prompt.
pub fn asks(models: &[&str]) -> Vec<Ask> {
    let mut out = Vec::new();
    for model in models {
        for prompt in PROMPTS {
            for stream in [false, true] {
                out.push(Ask {
                    model: model.to_string(),
                    prompt: prompt.to_string(),
                    stream,
                });
            }
        }
    }
    out
}

/// Runs `clients` clients until `until`, each sending one request after another for a model
/// drawn from `models` (read before each request, so the set may change), a prompt in turn,
/// and streamed on odd clients.
pub async fn run_clients(
    c: &reqwest::Client,
    base: &str,
    clients: usize,
    until: Instant,
    models: Arc<RwLock<Vec<String>>>,
) -> Outcome {
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (c, base, models, outcome) =
            (c.clone(), base.to_string(), models.clone(), outcome.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = client * 7;
            while Instant::now() < until {
                n += 1;
                let model = {
                    let list = models.read().unwrap();
                    list[(n * 31 + client) % list.len()].clone()
                };
                let ask = Ask {
                    model,
                    prompt: PROMPTS[n % PROMPTS.len()].to_string(),
                    stream: client % 2 == 1,
                };
                let result = send(&c, &base, &ask).await;
                let mut o = outcome.lock().unwrap();
                match result {
                    Ok((_, by)) if by != ask.model => {
                        o.failures.push(format!("{ask:?}: answered by {by}"))
                    }
                    Ok((text, _)) => o.answers.entry(ask).or_default().push(text),
                    Err(e) => o.failures.push(e),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let mut o = outcome.lock().unwrap();
    std::mem::take(&mut *o)
}

/// How long the load phases of these tests run: `MIGSERVE_LOAD_TEST_SECS` or `default`.
pub fn phase(default: u64) -> Duration {
    Duration::from_secs(
        std::env::var("MIGSERVE_LOAD_TEST_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}
