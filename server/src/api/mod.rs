//! Wire types of the public API (TGI and OpenAI), their validation, and the error type that
//! becomes an HTTP error body.

pub mod error;
pub mod openai;
pub mod tgi;
pub mod validation;
