//! The engine in-process, over a scripted step model and the real tokenizer: cancellation,
//! preemption and recompute, a failed forward pass, a panic on the engine thread.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{
    engine, first_event, hashed_next, request, submit, token_ids, ScriptedModel, Seen, Sizes,
};
use migserve_engine::{Engine, EngineError, EngineEvent, Health};

const PROMPTS: [&str; 6] = [
    "The quick brown fox",
    "Once upon a time there was",
    "A B C D",
    "Paris is the capital of",
    "Rust is a language",
    "One two",
];

fn scripted(seen: &Arc<Seen>) -> ScriptedModel {
    ScriptedModel::new(49152, Box::new(hashed_next), seen.clone())
}

/// Each prompt alone on a roomy cache: the tokens every other run must reproduce.
async fn alone(new_tokens: i64) -> Vec<Vec<u32>> {
    let e = Arc::new(engine(scripted(&Arc::default()), Sizes::default()));
    let mut out = Vec::new();
    for p in PROMPTS {
        out.push(
            token_ids(submit(&e, request(p, new_tokens)).await.unwrap())
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemption_and_recompute_give_the_same_tokens_as_each_request_alone() {
    let want = alone(12).await;
    assert!(want.iter().all(|t| t.len() == 12));
    // 12 blocks of 4 positions: four sequences are admitted (each with a block in reserve)
    // and each grows to 4-5 blocks, so some must be preempted and recomputed.
    let seen = Arc::new(Seen::default());
    let sizes = Sizes {
        blocks: 12,
        ..Sizes::default()
    };
    let mut model = scripted(&seen);
    // Slow enough steps that all six are queued before the first ones finish.
    model.step_time = Duration::from_millis(2);
    let e = Arc::new(engine(model, sizes));
    let runs = PROMPTS.map(|p| {
        let e = e.clone();
        tokio::spawn(async move { token_ids(submit(&e, request(p, 12)).await.unwrap()).await })
    });
    for (i, run) in runs.into_iter().enumerate() {
        assert_eq!(run.await.unwrap().unwrap(), want[i], "prompt {i}");
    }
    assert!(
        seen.recomputes.load(Ordering::SeqCst) > 0,
        "the cache was small enough to force preemption"
    );
    assert_eq!(e.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_frees_its_blocks_before_the_next_step() {
    let seen = Arc::new(Seen::default());
    let mut model = scripted(&seen);
    model.step_time = Duration::from_millis(5);
    let e = Arc::new(engine(model, Sizes::default()));
    let mut long = submit(&e, request("Count to a thousand", 400))
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(
            first_event(&mut long).await,
            EngineEvent::Token(..)
        ));
    }
    assert!(seen.used_blocks.load(Ordering::SeqCst) >= 2);
    drop(long);
    // The next request's steps see only its own blocks.
    let short = submit(&e, request("Hi", 3)).await.unwrap();
    let prompt = short.prompt_tokens;
    assert_eq!(token_ids(short).await.unwrap().len(), 3);
    let own = (prompt + 3).div_ceil(4);
    assert!(
        seen.used_blocks.load(Ordering::SeqCst) <= own,
        "{} blocks in use, the short request alone needs {own}",
        seen.used_blocks.load(Ordering::SeqCst)
    );
    assert_eq!(
        e.in_flight(),
        0,
        "the cancelled request is no longer counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_forward_pass_fails_only_its_batch() {
    let want = alone(6).await;
    let seen = Arc::new(Seen::default());
    let mut model = scripted(&seen);
    // One sequence per batch: the failure at step 3 hits the first request only.
    model.fail_at = Some(3);
    let sizes = Sizes {
        max_batch_size: 1,
        ..Sizes::default()
    };
    let e = Arc::new(engine(model, sizes));
    let first = submit(&e, request(PROMPTS[0], 6)).await.unwrap();
    let second = submit(&e, request(PROMPTS[1], 6)).await.unwrap();
    let failed = token_ids(first).await.unwrap_err();
    assert!(
        matches!(&failed, EngineError::Generation(m) if m.contains("scripted failure")),
        "{failed:?}"
    );
    assert_eq!(
        token_ids(second).await.unwrap(),
        want[1],
        "the waiting request is unharmed"
    );
    assert_eq!(e.health(), Health::Healthy);
    let after = submit(&e, request(PROMPTS[2], 6)).await.unwrap();
    assert_eq!(token_ids(after).await.unwrap(), want[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_every_request_and_the_engine_reports_itself_dead() {
    let seen = Arc::new(Seen::default());
    let mut model = scripted(&seen);
    model.panic_at = Some(4);
    model.step_time = Duration::from_millis(2);
    let e = Arc::new(engine(model, Sizes::default()));
    let mut health = e.watch_health();
    assert!(health.borrow_and_update().is_healthy());
    let mut a = submit(&e, request(PROMPTS[0], 50)).await.unwrap();
    let b = submit(&e, request(PROMPTS[1], 50)).await.unwrap();
    assert!(
        matches!(first_event(&mut a).await, EngineEvent::Token(..)),
        "a token before the panic"
    );
    for stream in [a, b] {
        let error = token_ids(stream).await.unwrap_err();
        assert!(
            matches!(&error, EngineError::Crashed(m) if m.contains("scripted panic")),
            "{error:?}"
        );
        assert_eq!(error.error_type(), "engine_crashed");
    }
    tokio::time::timeout(Duration::from_secs(10), health.changed())
        .await
        .expect("the health watch hears of it")
        .unwrap();
    assert!(matches!(e.health(), Health::Dead(why) if why.contains("panicked")));
    assert_eq!(e.in_flight(), 0);
    let refused = submit(&e, request("anyone there?", 4)).await.unwrap_err();
    assert!(
        matches!(refused, EngineError::Unavailable(_)),
        "{refused:?}"
    );
}

/// Log-softmax of the scripted model's rows: 10 at one token, 0 at the others.
fn scripted_logprob(hit: bool) -> f32 {
    let norm = (10f64.exp() + 49151.0).ln();
    ((if hit { 10.0 } else { 0.0 }) - norm) as f32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_and_top_logprobs_hold_through_chunked_prefill_and_preemption() {
    // Prompts of 5 tokens per step at most (chunked), on a cache small enough to preempt.
    let seen = Arc::new(Seen::default());
    let mut model = scripted(&seen);
    model.step_time = Duration::from_millis(2);
    // 8 blocks of 4: one sequence (a prompt and 16 new tokens) needs up to 6, so any two
    // running together must preempt one.
    let sizes = Sizes {
        blocks: 8,
        max_batch_tokens: 5,
        ..Sizes::default()
    };
    let e = Arc::new(engine(model, sizes));
    let tokenizer = common::tokenizer();
    let runs = PROMPTS.map(|p| {
        let e = e.clone();
        tokio::spawn(async move {
            let mut r = request(p, 16);
            r.logprobs = migserve_engine::LogprobsSpec {
                top: 2,
                prompt: true,
            };
            submit(&e, r).await.unwrap().events.collect().await.unwrap()
        })
    });
    for (p, run) in PROMPTS.iter().zip(runs) {
        let c = run.await.unwrap();
        let prompt = tokenizer.encode(p, true).unwrap();
        assert_eq!(c.prefill.len(), prompt.len(), "{p}");
        assert_eq!(c.prefill[0].logprob, None);
        for (i, entry) in c.prefill.iter().enumerate().skip(1) {
            assert_eq!(entry.id, prompt[i]);
            let predicted = hashed_next(&prompt[..i]);
            let want = scripted_logprob(predicted == prompt[i]);
            assert!(
                (entry.logprob.unwrap() - want).abs() < 1e-4,
                "{p} position {i}"
            );
            assert_eq!(entry.top[0].id, predicted);
            assert!((entry.top[0].logprob - scripted_logprob(true)).abs() < 1e-4);
            assert_eq!(entry.top[1].id, 0, "ties: the lowest id");
        }
        let mut history = prompt.clone();
        for t in &c.tokens {
            assert_eq!(t.id, hashed_next(&history), "greedy");
            assert!((t.logprob - scripted_logprob(true)).abs() < 1e-4);
            assert_eq!(t.top.len(), 2);
            assert_eq!(t.top[0].id, t.id, "the greedy token is the most likely");
            assert!(t.top[0].logprob >= t.top[1].logprob);
            history.push(t.id);
        }
    }
    assert!(
        seen.recomputes.load(Ordering::SeqCst) > 0,
        "some prompt was recomputed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_tokens_masks_eos_until_enough_tokens_are_out() {
    let eos = common::tokenizer().eos_ids()[0];
    let model = ScriptedModel::new(49152, Box::new(move |_| eos), Arc::default());
    let e = Arc::new(engine(model, Sizes::default()));
    let mut r = request("Stop at once", 8);
    r.min_new_tokens = Some(3);
    let c = submit(&e, r).await.unwrap().events.collect().await.unwrap();
    let ids: Vec<u32> = c.tokens.iter().map(|t| t.id).collect();
    assert_eq!(ids.len(), 4, "three tokens before eos may come: {ids:?}");
    assert!(ids[..3].iter().all(|t| *t != eos));
    assert_eq!(ids[3], eos);
    assert_eq!(c.finish.reason, migserve_engine::FinishReason::EosToken);
    // Log-probabilities stay the model's own: the masked eos was the likely one.
    assert!((c.tokens[0].logprob - scripted_logprob(false)).abs() < 1e-4);
    let alone = submit(&e, request("Stop at once", 8)).await.unwrap();
    assert_eq!(token_ids(alone).await.unwrap(), [eos], "without min_tokens");
}
