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
    Validation(String),
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
            EngineError::Validation(_) => "validation",
            EngineError::Overloaded(_) => "overloaded",
            EngineError::Unavailable(_) => "unhealthy",
            EngineError::Generation(_) => "generation",
            EngineError::Crashed(_) => "engine_crashed",
        }
    }
}

impl From<ModelError> for EngineError {
    /// Errors of the input (template, tokenizer, bad values) are the client's; the rest are
    /// generation failures.
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::InvalidInput(_) | ModelError::Template(_) | ModelError::Tokenizer(_) => {
                EngineError::Validation(e.to_string())
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
