//! The one submit pipeline every engine runs, [`crate::LocalEngine`] and the test stand-in
//! alike: the prompt checked and turned into tokens (a conversation through the chat template
//! first), truncated, validated against the engine's limits, its grammar compiled (and replayed
//! over the output a resumed request already has), its tokens' texts when asked for, and only
//! then handed to the engine's [`Backend`] queue. A stand-in under the same pipeline refuses
//! what the real engine refuses, with the same words.

use crate::engine::{Accepted, PromptToken};
use crate::error::{EngineError, Field};
use crate::event::EventStream;
use crate::grammar::{Constraint, Grammar};
use crate::request::{EngineRequest, GenerateRequest, Limits, Prompt};
use crate::validate;

/// What an engine provides under the submit pipeline: its tokenizer, its grammar compiler
/// and its queue.
pub trait Backend {
    /// Refuses at once when the engine takes no requests (spares a stopped one the
    /// tokenizing); `enqueue` checks again.
    fn check_running(&self) -> Result<(), EngineError> {
        Ok(())
    }

    /// The token ids of a prompt that is not empty (a conversation through the chat template
    /// first), with the rendered template for a conversation.
    fn prompt_ids(&self, prompt: &Prompt) -> Result<(Vec<u32>, Option<String>), EngineError>;

    /// Each token's text.
    fn pieces(&self, ids: &[u32]) -> Result<Vec<String>, EngineError>;

    /// The compiled form of `grammar`; `None` from an engine that does not constrain output.
    fn constraint(&self, grammar: &Grammar) -> Result<Option<Constraint>, EngineError>;

    /// The limits requests are checked against.
    fn limits(&self) -> &Limits;

    /// Queues a valid request: its events, or why the engine cannot take it now
    /// ([`EngineError::Overloaded`], [`EngineError::Unavailable`]).
    fn enqueue(&self, request: EngineRequest) -> Result<EventStream, EngineError>;
}

/// Runs `request` through the pipeline onto `backend`'s queue.
pub fn submit(backend: &impl Backend, request: GenerateRequest) -> Result<Accepted, EngineError> {
    backend.check_running()?;
    validate::check_prompt(&request.prompt)?;
    let (mut ids, _) = backend.prompt_ids(&request.prompt)?;
    validate::truncate(&mut ids, request.truncate)?;
    let mut valid = validate::build_request(ids, &request, backend.limits())?;
    // Compiled once the rest is known to be valid.
    if let Some(grammar) = &request.grammar {
        valid.constraint = constraint_after(backend, grammar, &valid.resumed)?;
    }
    // Decoded one by one only once the request is known to be valid.
    let prompt = match request.return_prompt_tokens {
        true => valid
            .prompt
            .iter()
            .zip(backend.pieces(&valid.prompt)?)
            .map(|(&id, text)| PromptToken { id, text })
            .collect(),
        false => Vec::new(),
    };
    let (prompt_tokens, seed) = (valid.prompt.len(), valid.params.seed);
    let events = backend.enqueue(valid)?;
    Ok(Accepted {
        prompt_tokens,
        prompt,
        seed,
        events,
    })
}

/// `grammar` compiled and advanced over the tokens a resumed request has already produced.
fn constraint_after(
    backend: &impl Backend,
    grammar: &Grammar,
    resumed: &[u32],
) -> Result<Option<Constraint>, EngineError> {
    let Some(mut constraint) = backend.constraint(grammar)? else {
        return Ok(None);
    };
    for &token in resumed {
        constraint.commit(token).map_err(|e| {
            EngineError::invalid(
                Field::Resume,
                format!("the output to resume from does not match the grammar: {e}"),
            )
        })?;
    }
    Ok(Some(constraint))
}
