//! Model side of migserve: GGUF files and Hugging Face directories (safetensors,
//! tokenizer.json), the tokenizer rebuilt from GGUF metadata, chat templates, one batched decoder forward pass for every supported family (Llama, Qwen2, Qwen3,
//! Gemma 3, Phi-3) with per-sequence KV state.

pub mod chat;
pub mod chat_message;
pub mod chat_tools;
pub mod config;
pub mod cpu_ops;
pub mod decoder;
pub mod embedding;
pub mod error;
pub mod gguf;
pub mod hf;
pub mod kv;
pub mod linear;
pub mod model;
pub mod parallel;
pub mod rope;
pub mod source;
pub mod step_inputs;
pub mod synth;
pub mod tokenizer;
pub mod weight_format;
pub mod weights;

pub use chat::{ChatMessage, ChatTemplate};
pub use config::{Family, ModelConfig};
pub use decoder::{Decoder, SeqChunk};
pub use error::{ModelError, Result};
pub use gguf::GgufFile;
pub use kv::{AttentionSpan, DenseKvStore, KvStore, SeqId};
pub use model::Model;
pub use source::ModelSource;
pub use tokenizer::{IncrementalDecoder, Tokenizer, SPECIAL_TOKEN_MARKER};
pub use weight_format::WeightFormat;

/// Re-exported so callers can name devices without depending on candle directly.
pub use candle_core::Device;
