//! Errors of the engine: per request ([`EngineError`]) and at start ([`StartError`]).

use migserve_models::ModelError;

use crate::device::DeviceUnusable;

/// Why a request was refused or did not finish. Each kind has a stable [`error_type`]
/// label; the worker's HTTP layer gives each a status code.
///
/// [`error_type`]: EngineError::error_type
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The request is malformed or asks for something outside the limits.
    #[error("{0}")]
    Validation(Invalid),
    /// The prompt, or the prompt with the new tokens, is longer than the worker takes.
    #[error("{0}")]
    TooLong(TooLong),
    /// Too many requests are in flight.
    #[error("{0}")]
    Overloaded(String),
    /// The engine is not running (it stopped or died): it takes no new requests.
    #[error("{0}")]
    Unavailable(String),
    /// Generation failed after the request was accepted (a failed forward pass, a token that
    /// cannot be decoded).
    #[error("{0}")]
    Generation(String),
    /// The engine thread panicked while the request was in flight; the worker exits so that
    /// its supervisor restarts it.
    #[error("{0}")]
    Crashed(String),
}

impl EngineError {
    /// A short stable label, used in error bodies and metric labels (TGI's names where TGI
    /// has one).
    pub fn error_type(&self) -> &'static str {
        match self {
            EngineError::Validation(_) | EngineError::TooLong(_) => "validation",
            EngineError::Overloaded(_) => "overloaded",
            EngineError::Unavailable(_) => "unhealthy",
            EngineError::Generation(_) => "generation",
            EngineError::Crashed(_) => "engine_crashed",
        }
    }
}

impl EngineError {
    /// A refusal of `field`'s value (or of the request as a whole, with `None`), and why.
    pub fn invalid(field: impl Into<Option<Field>>, reason: impl Into<String>) -> Self {
        EngineError::Validation(Invalid::new(field.into(), reason))
    }
}

/// A request the engine's rules refuse: the field at fault, when one is, and why. The reason is
/// the whole message; each API names the field in its own terms (OpenAI's `param`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: Option<Field>,
    pub reason: String,
}

impl Invalid {
    /// A refusal of `field` (or of the request as a whole), and why.
    pub fn new(field: Option<Field>, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The request fields the engine's own rules are about (API-neutral names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The prompt: text, conversation or token ids.
    Prompt,
    /// Keep only the prompt's last tokens.
    Truncate,
    MaxNewTokens,
    MinNewTokens,
    /// Alternatives reported per token.
    TopLogprobs,
    Stop,
    IgnoreEos,
    /// The output a continued request already has.
    Resume,
    Temperature,
    TopP,
    TopK,
    RepetitionPenalty,
    PresencePenalty,
    FrequencyPenalty,
    LogitBias,
    /// The grammar, schema, regex or choice the output must match.
    Grammar,
}

/// Which length limit a request passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthLimit {
    /// The prompt alone is over `max_input_tokens`.
    Prompt,
    /// Prompt plus the new tokens asked for are over `max_total_tokens`.
    Total,
    /// The prompt leaves no room for a new token within `max_total_tokens`.
    NoRoom,
    /// Prompt plus new tokens need more positions than the whole KV cache has.
    Cache,
}

/// A request longer than the worker takes, with its counts, so that each API says it in its
/// own words (the server's API layer has OpenAI's); `Display` gives TGI's message, which is
/// also the engine's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLong {
    pub limit_kind: LengthLimit,
    /// The limit passed, in tokens.
    pub limit: usize,
    pub prompt_tokens: usize,
    /// New tokens the request asked for (or would get by default).
    pub new_tokens: usize,
}

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (input, limit, n) = (self.prompt_tokens, self.limit, self.new_tokens);
        match self.limit_kind {
            LengthLimit::Prompt => write!(f, "`inputs` must have less than {limit} tokens. Given: {input}"),
            LengthLimit::Total => write!(
                f,
                "`inputs` tokens + `max_new_tokens` must be <= {limit}. Given: {input} `inputs` tokens and {n} `max_new_tokens`"
            ),
            LengthLimit::NoRoom => write!(f, "`inputs` has {input} tokens: no room left in {limit}"),
            LengthLimit::Cache => write!(
                f,
                "this request needs up to {} KV cache positions but the whole cache holds {limit}",
                input + n
            ),
        }
    }
}

impl From<ModelError> for EngineError {
    /// Errors of the input (template, tokenizer, bad values) are the client's; the rest are
    /// generation failures.
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::InvalidInput(_) | ModelError::Template(_) | ModelError::Tokenizer(_) => {
                EngineError::Validation(Invalid::new(None, e.to_string()))
            }
            other => EngineError::Generation(other.to_string()),
        }
    }
}

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The device cannot be used (no driver, no such GPU, too little memory): starting again
    /// on the same device would fail the same way.
    #[error(transparent)]
    DeviceUnusable(#[from] DeviceUnusable),
    /// The device failed while the engine was being set up.
    #[error("the device failed: {0}")]
    DeviceFailed(String),
    /// A setting is out of range or inconsistent with the model.
    #[error("{0}")]
    InvalidFlags(String),
    /// The model could not be loaded.
    #[error("loading {path}: {source}")]
    Model {
        path: String,
        #[source]
        source: ModelError,
    },
    /// The engine thread could not be started.
    #[error("starting the engine thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// An error and its sources on one line, `: `-separated, leaving out a source whose text
/// the line already holds (an error that prints its source in its own message).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
