//! The worker's engine: what turns validated requests into streams of tokens.
//!
//! - [`Engine`] is what a worker's HTTP layer calls: submit a [`GenerateRequest`], get its
//!   [`EventStream`]; health; info. [`LocalEngine`] is the real one: a thread that owns the
//!   model and the paged KV cache and runs continuous batching ([`scheduler`],
//!   [`block_manager`], [`cache`], [`step_loop`]), with output processing ([`output`]:
//!   detokenization with a final flush, stop sequences, finish checks) in one place.
//! - The model behind a step is a [`StepModel`], so the loop is tested in-process without
//!   weights.
//! - [`EngineFlags`] are the engine's settings, shared by `migserve worker`'s flags and the
//!   deployment config's `[models.engine]` table.
//!
//! No HTTP here: errors are [`EngineError`]s, which the worker maps to status codes.

pub mod block_manager;
pub mod cache;
pub mod device;
pub mod engine;
pub mod error;
pub mod event;
pub mod fault;
pub mod flags;
pub mod grammar;
pub mod local;
mod logprobs;
pub mod metrics;
pub mod output;
pub mod request;
mod request_state;
pub mod row_sampler;
pub mod sampling;
pub mod scheduler;
pub mod status;
pub mod step;
pub mod step_clock;
pub mod step_loop;
pub mod submit;
pub mod validate;

pub use device::{DeviceKind, DeviceUnusable};
pub use engine::{Accepted, Engine, EngineInfo, Health, PrefixCacheStatus, PromptToken, Tokenized};
pub use error::{EngineError, StartError};
pub use error::{Field, Invalid, LengthLimit, TooLong};
pub use event::{
    EngineEvent, EventStream, FinishEvent, FinishReason, PrefillLogprob, TokenEvent, TokenLogprob,
};
pub use flags::EngineFlags;
pub use grammar::{Constraint, Grammar, GrammarCompiler};
pub use local::LocalEngine;
pub use request::{GenerateRequest, Limits, LogprobsSpec, Prompt, SamplingSpec, MAX_TOP_LOGPROBS};
pub use sampling::{Sampler, SamplingParams};
pub use step::StepModel;
