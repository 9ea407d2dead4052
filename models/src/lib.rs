//! Model side of migserve: GGUF loading, the tokenizer rebuilt from GGUF metadata, chat
//! templates, a batched Llama forward pass with per-sequence KV state, and sampling.

pub mod chat;
pub mod config;
pub mod cpu_ops;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod kv;
pub mod linear;
pub mod llama;
pub mod model;
pub mod parallel;
pub mod sampling;
pub mod synth;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use config::LlamaConfig;
pub use error::{ModelError, Result};
pub use generate::{generate, FinishReason, Generation};
pub use gguf::GgufFile;
pub use kv::{AttentionSpan, DenseKvStore, KvStore, SeqId};
pub use llama::{Llama, SeqChunk, WeightFormat};
pub use model::Model;
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::{IncrementalDecoder, Tokenizer};

/// Re-exported so callers can name devices without depending on candle directly.
pub use candle_core::Device;
