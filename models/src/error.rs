//! Errors of the model crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model file could not be opened or read.
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the GGUF magic bytes.
    #[error("{path} is not a GGUF file (expected the magic bytes \"GGUF\" at its start)")]
    NotGguf { path: PathBuf },
    /// The GGUF file is damaged or uses a version/type we cannot read.
    #[error("cannot parse GGUF file {path}: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    /// The GGUF file holds a model family this runtime does not implement.
    /// The architecture's name, and the names that are supported.
    #[error("unsupported model architecture `{0}` (supported: {1})")]
    UnsupportedArchitecture(String, String),
    /// A metadata key the model needs is absent or has the wrong type.
    #[error("GGUF metadata key `{key}` is missing or invalid: {reason}")]
    Metadata { key: String, reason: String },
    /// A tensor the model needs is absent from its files.
    #[error("tensor `{name}` is missing from {source_name}")]
    MissingTensor { name: String, source_name: String },
    /// A tensor's shape is not the one the model's configuration implies.
    #[error("tensor `{name}` has shape {have:?}, the model's configuration says {want:?}")]
    ShapeMismatch {
        name: String,
        have: Vec<usize>,
        want: Vec<usize>,
    },
    /// A file of a Hugging Face model directory is missing, unreadable or malformed.
    #[error("{path}: {reason}")]
    HfFile { path: PathBuf, reason: String },
    /// A key of a Hugging Face directory's JSON file is missing, invalid or not supported.
    #[error("{path}: key `{key}`: {reason}")]
    HfKey {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// The tokenizer could not be built, or could not encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// The caller asked for something the model cannot do (empty prompt, bad ids, over the context).
    #[error("{0}")]
    InvalidInput(String),
    /// The KV cache has no room left for the requested tokens.
    #[error("KV cache is out of space: {0}")]
    KvCacheFull(String),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl ModelError {
    /// A short stable label for this kind of error, used in HTTP error bodies and metric labels.
    pub fn error_type(&self) -> &'static str {
        match self {
            ModelError::Io { .. } => "io",
            ModelError::NotGguf { .. } => "not_gguf",
            ModelError::BadGguf { .. } => "bad_gguf",
            ModelError::UnsupportedArchitecture(..) => "unsupported_architecture",
            ModelError::Metadata { .. } => "metadata",
            ModelError::MissingTensor { .. } => "missing_tensor",
            ModelError::ShapeMismatch { .. } => "shape_mismatch",
            ModelError::HfFile { .. } => "hf_file",
            ModelError::HfKey { .. } => "hf_config",
            ModelError::Tokenizer(_) => "tokenizer",
            ModelError::Template(_) => "template",
            ModelError::InvalidInput(_) => "validation",
            ModelError::KvCacheFull(_) => "kv_cache_full",
            ModelError::Tensor(_) => "tensor",
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
