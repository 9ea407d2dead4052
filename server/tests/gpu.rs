//! End to end on a GPU: a `--device cuda` worker gives the same greedy answers as a CPU
//! worker. Ignored unless asked for (`--include-ignored`), so a machine without a GPU counts
//! them as not run; asked for where they still cannot run (no `cuda` feature, no visible
//! GPU), each prints why it was skipped.

mod common;

use common::Worker;

/// Why the GPU tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if !cfg!(feature = "cuda") {
        return Some("migserve built without the `cuda` feature".into());
    }
    if migserve_engine::device::cuda_device_count() == 0 {
        return Some(format!(
            "no CUDA device visible (CUDA_VISIBLE_DEVICES={})",
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
        ));
    }
    None
}

async fn chat(c: &reqwest::Client, w: &Worker, prompt: &str) -> String {
    let v: serde_json::Value = c
        .post(w.at("/v1/chat/completions"))
        .json(&serde_json::json!({
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 48,
            "temperature": 0.0,
        }))
        .send()
        .await
        .expect("chat request")
        .json()
        .await
        .expect("chat JSON");
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an NVIDIA GPU and the cuda build: run by scripts/check-cuda-build.sh (on a GPU) and bench/gpu/validate.sh"]
async fn gpu_greedy_answers_equal_the_cpu_ones() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped gpu_greedy_answers_equal_the_cpu_ones: {why}");
        return;
    }
    let c = reqwest::Client::new();
    let gpu = Worker::start(&["--device", "cuda"]);
    let info: serde_json::Value = common::get_json(&c, gpu.at("/info")).await;
    assert_eq!(info["model_device_type"], "cuda");
    assert_eq!(info["model_dtype"], "bf16");
    let france = common::FRANCE;
    let cpu = Worker::start(&["--device", "cpu"]);
    let on_cpu = chat(&c, &cpu, france).await;
    assert_eq!(on_cpu, "The capital of France is Paris.");
    assert_eq!(chat(&c, &gpu, france).await, on_cpu);
    // Other prompts may part at near-ties (bf16 vs Q8_0, other summation orders): reported.
    for prompt in ["Name three colours.", "Write one sentence about the sea."] {
        let (g, c) = (chat(&c, &gpu, prompt).await, chat(&c, &cpu, prompt).await);
        eprintln!(
            "{prompt:?}: gpu {g:?} / cpu {c:?} ({})",
            if g == c { "same" } else { "differ" }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an NVIDIA GPU and the cuda build: run by scripts/check-cuda-build.sh (on a GPU) and bench/gpu/validate.sh"]
async fn gpu_worker_serves_concurrent_streams() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped gpu_worker_serves_concurrent_streams: {why}");
        return;
    }
    let c = reqwest::Client::new();
    let gpu = Worker::start(&["--device", "cuda"]);
    let alone = chat(&c, &gpu, "Tell me about the moon.").await;
    // 32 at once through the batched paged path: all complete with text.
    let answers =
        futures_util::future::join_all((0..32).map(|_| chat(&c, &gpu, "Tell me about the moon.")))
            .await;
    assert!(answers.iter().all(|a| !a.is_empty()), "{answers:?}");
    let same = answers.iter().filter(|a| **a == alone).count();
    eprintln!("{same} of 32 batched answers equal the one alone");
}
