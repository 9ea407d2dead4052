//! A request resumed from k tokens of its own output (a stream continued on another worker)
//! over a scripted step model and the real tokenizer: for every k, the earlier tokens come
//! back once as `Resumed`, and the rest is what the undisturbed request gave after them (ids,
//! text, the text held back for a stop sequence, the finish and its counts), also when a
//! multi-byte character or a possible stop straddles the cut.

mod common;

use std::sync::Arc;

use common::{engine, submit, tokenizer, ScriptedModel, Sizes};
use migserve_engine::{EngineError, EngineEvent, FinishReason, GenerateRequest, Prompt};

const PROMPT: &str = "Say it";
const STOP: &str = "STOP";

fn request(max_new_tokens: i64, resume: Vec<u32>) -> GenerateRequest {
    GenerateRequest {
        max_new_tokens: Some(max_new_tokens),
        stop: vec![STOP.into()],
        resume,
        ..GenerateRequest::new(Prompt::Text(PROMPT.into()))
    }
}

/// An engine whose model answers `PROMPT` with `script`, token by token.
fn answering(script: &[u32]) -> Arc<migserve_engine::LocalEngine> {
    let prompt_len = tokenizer().encode(PROMPT, true).unwrap().len();
    let script = script.to_vec();
    let next = Box::new(move |history: &[u32]| script[(history.len() - prompt_len) % script.len()]);
    Arc::new(engine(
        ScriptedModel::new(49152, next, Arc::default()),
        Sizes::default(),
    ))
}

/// Every event of a request: the resumed tokens (if any), then each new token's id, text,
/// visible text, and the finish.
async fn events(
    e: &Arc<migserve_engine::LocalEngine>,
    req: GenerateRequest,
) -> Result<
    (
        Vec<u32>,
        Vec<(u32, String, String)>,
        (FinishReason, usize, usize),
    ),
    EngineError,
> {
    let mut accepted = submit(e, req).await?;
    let (mut resumed, mut new) = (Vec::new(), Vec::new());
    loop {
        match accepted.events.next().await {
            Some(EngineEvent::Resumed(earlier)) => resumed = earlier.iter().map(|t| t.id).collect(),
            Some(EngineEvent::Token(t, finish)) => {
                new.push((t.id, t.text, t.visible));
                if let Some(f) = finish {
                    return Ok((
                        resumed,
                        new,
                        (f.reason, f.generated_tokens, f.prompt_tokens),
                    ));
                }
            }
            Some(EngineEvent::Failed(e)) => return Err(e),
            Some(EngineEvent::Prefill(_)) => {}
            None => panic!("the stream ended without a finish"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_request_goes_on_exactly_as_the_undisturbed_one() {
    let t = tokenizer();
    // A crab (several tokens for one character), text that may start the stop ("ST"), then
    // the stop itself.
    let script = t
        .encode(" a crab 🦀 said ST and then STOP here", false)
        .unwrap();
    let e = answering(&script);
    let max = 40;
    let (_, whole, finish) = events(&e, request(max, Vec::new())).await.unwrap();
    assert_eq!(finish.0, FinishReason::StopSequence);
    let ids: Vec<u32> = whole.iter().map(|w| w.0).collect();
    let visible: String = whole.iter().map(|w| w.2.as_str()).collect();
    assert!(visible.ends_with("and then "), "{visible:?}");
    // Resumed after every token but the last (after the last, the answer was complete).
    for k in 1..whole.len() {
        let (resumed, rest, f) = events(&e, request(max, ids[..k].to_vec()))
            .await
            .unwrap_or_else(|e| panic!("resumed after {k}: {e}"));
        assert_eq!(resumed, ids[..k], "the earlier tokens come back once");
        assert_eq!(rest, whole[k..], "resumed after {k} tokens");
        assert_eq!(f, finish, "the finish counts the whole answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_past_the_end_is_refused() {
    let t = tokenizer();
    let script = t.encode(" one two STOP three four five", false).unwrap();
    let e = answering(&script);
    // Nothing left of max_new_tokens: a validation error at submission.
    let err = events(&e, request(3, script[..3].to_vec()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Validation(ref m) if m.reason.contains("nothing is left")),
        "{err}"
    );
    // Tokens past a stop sequence: the answer had finished.
    let err = events(&e, request(20, script.clone())).await.unwrap_err();
    assert!(
        matches!(err, EngineError::Validation(ref m) if m.reason.contains("already finished")),
        "{err}"
    );
    // A token outside the vocabulary.
    let err = events(&e, request(20, vec![u32::MAX])).await.unwrap_err();
    assert!(
        matches!(err, EngineError::Validation(ref m) if m.reason.contains("vocabulary")),
        "{err}"
    );
    // The engine serves on.
    let (_, rest, finish) = events(&e, request(10, Vec::new())).await.unwrap();
    let visible: String = rest.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(
        (visible.as_str(), finish.0),
        (" one two ", FinishReason::StopSequence)
    );
}
