//! Output processing through the engine, over a scripted step model and the real tokenizer:
//! whatever way a request finishes, its text is everything its tokens decode to.

mod common;

use std::sync::Arc;

use common::{engine, submit, tokenizer, ScriptedModel, Sizes};
use migserve_engine::event::Collected;
use migserve_engine::{FinishReason, GenerateRequest, LocalEngine, Prompt};

const PROMPT: &str = "Say it";

/// An engine whose model answers `PROMPT` with `script`, token by token.
fn scripted_answer(script: Vec<u32>) -> LocalEngine {
    let prompt_len = tokenizer().encode(PROMPT, true).unwrap().len();
    let next = Box::new(move |history: &[u32]| script[(history.len() - prompt_len) % script.len()]);
    engine(
        ScriptedModel::new(49152, next, Arc::default()),
        Sizes::default(),
    )
}

/// The whole answer of `e` to `PROMPT` with these limits.
async fn answer(e: &Arc<LocalEngine>, max_new_tokens: i64, stop: &[&str]) -> Collected {
    submit(e, request(max_new_tokens, stop))
        .await
        .unwrap()
        .events
        .collect()
        .await
        .unwrap()
}

fn request(max_new_tokens: i64, stop: &[&str]) -> GenerateRequest {
    GenerateRequest {
        max_new_tokens: Some(max_new_tokens),
        stop: stop.iter().map(|s| s.to_string()).collect(),
        ..GenerateRequest::new(Prompt::Text(PROMPT.into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_stop_inside_a_multi_byte_character_returns_what_the_tokens_decode_to() {
    let t = tokenizer();
    let crab = t.encode("🦀🦀", false).unwrap();
    // Byte-level BPE: the crab's four bytes take more than one token.
    let first_char_tokens = t.encode("🦀", false).unwrap();
    assert!(first_char_tokens.len() >= 2, "{first_char_tokens:?}");
    let e = Arc::new(scripted_answer(crab.clone()));
    for n in 1..=crab.len() {
        let collected = answer(&e, n as i64, &[]).await;
        let ids: Vec<u32> = collected.tokens.iter().map(|t| t.id).collect();
        assert_eq!(ids, crab[..n]);
        assert_eq!(collected.finish.reason, FinishReason::Length);
        let decoded = t.decode(&ids, true).unwrap();
        assert!(!decoded.is_empty());
        assert_eq!(
            collected.text(),
            decoded,
            "{n} tokens: the held bytes are flushed"
        );
        assert_eq!(collected.visible_text(), decoded, "{n} tokens");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_held_back_as_a_possible_stop_is_released_at_a_length_stop() {
    let t = tokenizer();
    let script = t.encode(" the end is XY", false).unwrap();
    let e = Arc::new(scripted_answer(script.clone()));
    let collected = answer(&e, script.len() as i64, &["XYZ"]).await;
    assert_eq!(collected.finish.reason, FinishReason::Length);
    let decoded = t.decode(&script, true).unwrap();
    assert_eq!(collected.text(), decoded);
    assert_eq!(
        collected.visible_text(),
        decoded,
        "the held \"XY\" comes out at the end"
    );
    let last = collected.tokens.last().unwrap();
    assert!(last.visible.ends_with("XY"), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_sequence_ends_the_text_and_never_shows_in_the_visible_part() {
    let t = tokenizer();
    let script = t.encode(" one two three four", false).unwrap();
    let e = Arc::new(scripted_answer(script.clone()));
    let collected = answer(&e, 32, &[" thr"]).await;
    assert_eq!(collected.finish.reason, FinishReason::StopSequence);
    assert!(collected.text().contains(" thr"), "{:?}", collected.text());
    assert_eq!(collected.visible_text(), " one two");
}
