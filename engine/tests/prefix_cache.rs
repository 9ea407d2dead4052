//! The prefix cache in the engine, over the scripted model (whose next token is a function of
//! the history it reads back from the cache's blocks, so a wrongly shared block changes the
//! output): greedy outputs equal with caching on and off, shared blocks counted.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{engine, hashed_next, request, submit, ScriptedModel, Seen, Sizes};
use migserve_engine::{Engine, LocalEngine};

const SYSTEM: &str = "You are a careful assistant. Answer in one short sentence, and say \
                      when you do not know. The user asks: ";

/// Prompts sharing whole blocks (the system prompt), diverging inside a block, and one that
/// is entirely another's prompt.
fn prompts() -> Vec<String> {
    let mut p: Vec<String> = [
        "what is the capital of France?",
        "what is the capital of Spain?",
        "what is 2 + 2?",
        "who wrote Hamlet?",
    ]
    .iter()
    .map(|q| format!("{SYSTEM}{q}"))
    .collect();
    p.push(SYSTEM.to_string());
    p.push(format!("{SYSTEM}what is the capital of France?"));
    p.push("An unrelated prompt that shares nothing at all".into());
    p
}

fn scripted(seen: &Arc<Seen>, step_time: Duration) -> ScriptedModel {
    let mut m = ScriptedModel::new(49152, Box::new(hashed_next), seen.clone());
    m.step_time = step_time;
    m
}

/// Tokens and cached prompt tokens of `prompt` on `e`.
async fn run(e: &Arc<LocalEngine>, prompt: String, new_tokens: i64) -> (Vec<u32>, usize) {
    let accepted = submit(e, request(&prompt, new_tokens)).await.unwrap();
    let c = accepted.events.collect().await.unwrap();
    (
        c.tokens.iter().map(|t| t.id).collect(),
        c.finish.cached_tokens,
    )
}

/// Each prompt alone with caching off: what every other run must reproduce.
async fn reference(prompts: &[String], new_tokens: i64) -> Vec<Vec<u32>> {
    let sizes = Sizes {
        prefix_caching: false,
        ..Sizes::default()
    };
    let e = Arc::new(engine(scripted(&Arc::default(), Duration::ZERO), sizes));
    let mut out = Vec::new();
    for p in prompts {
        let (tokens, cached) = run(&e, p.clone(), new_tokens).await;
        assert_eq!(cached, 0, "caching is off");
        out.push(tokens);
    }
    assert!(e.prefix_cache().is_none());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_after_another_the_outputs_equal_caching_off_and_prefixes_are_reused() {
    let prompts = prompts();
    let want = reference(&prompts, 10).await;
    let seen = Arc::new(Seen::default());
    let e = Arc::new(engine(scripted(&seen, Duration::ZERO), Sizes::default()));
    let mut cached = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let (tokens, hit) = run(&e, p.clone(), 10).await;
        assert_eq!(tokens, want[i], "prompt {i}");
        cached.push(hit);
    }
    assert_eq!(cached[0], 0, "nothing cached yet");
    for (i, hit) in cached.iter().enumerate().take(6).skip(1) {
        assert!(
            *hit >= 16,
            "prompt {i} shares the system prompt's blocks: {cached:?}"
        );
    }
    assert_eq!(cached[6], 0, "the unrelated prompt");
    let stats = e.prefix_cache().expect("caching is on");
    assert_eq!(stats.hit_tokens as usize, cached.iter().sum::<usize>());
    assert!(stats.hit_rate() > 0.3, "{stats:?}");
    assert!(seen.reused.load(Ordering::SeqCst) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_at_once_under_kv_pressure_equal_caching_off() {
    let prompts: Vec<String> = prompts().into_iter().cycle().take(32).collect();
    let want = reference(&prompts, 12).await;
    let seen = Arc::new(Seen::default());
    // 40 blocks of 4 positions for 32 prompts of ~30 tokens growing by 12: preemption, and
    // cached blocks evicted to make room.
    let sizes = Sizes {
        blocks: 40,
        ..Sizes::default()
    };
    let e = Arc::new(engine(scripted(&seen, Duration::from_millis(1)), sizes));
    let runs: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (e, p) = (e.clone(), p.clone());
            tokio::spawn(async move { run(&e, p, 12).await })
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        assert_eq!(r.await.unwrap().0, want[i], "prompt {i}");
    }
    assert!(
        seen.recomputes.load(Ordering::SeqCst) > 0,
        "preemption happened"
    );
    let stats = e.prefix_cache().unwrap();
    assert!(stats.hit_tokens > 0, "{stats:?}");
    assert!(stats.evicted_blocks > 0, "{stats:?}");
    assert_eq!(e.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sent_together_compute_a_shared_prompt_once() {
    let prompt = format!("{SYSTEM}what is the capital of France?");
    let want = reference(std::slice::from_ref(&prompt), 6).await;
    let seen = Arc::new(Seen::default());
    let e = Arc::new(engine(scripted(&seen, Duration::ZERO), Sizes::default()));
    // Held up by a slow first request, so the four queue and are admitted in one step.
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let (e, p) = (e.clone(), prompt.clone());
            tokio::spawn(async move { run(&e, p, 6).await })
        })
        .collect();
    let mut hits = Vec::new();
    for r in runs {
        let (tokens, hit) = r.await.unwrap();
        assert_eq!(tokens, want[0]);
        hits.push(hit);
    }
    hits.sort();
    assert_eq!(hits[0], 0, "one computes the prompt");
    assert!(
        hits[1..].iter().all(|h| *h > 0),
        "the others share it: {hits:?}"
    );
}
