//! Wire types of the public API (TGI and OpenAI) and the error type that becomes an HTTP
//! error body. Validation of what the APIs share is the engine's (`migserve_engine::validate`).

pub mod error;
pub mod openai;
pub mod openapi;
pub mod resume;
pub mod structured;
pub mod tgi;
pub mod tokenize;
pub mod worker_report;

/// Which wire API a request came in on (errors answer in its shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Tgi,
    OpenAi,
}
