//! migserve-loadtest: load generation against TGI- and OpenAI-compatible servers, reports
//! (JSON, Markdown, SVG), and layout comparisons of `migserve serve`.

pub mod cli;
pub mod compare;
pub mod corpus;
pub mod dist;
pub mod load;
pub mod metrics;
pub mod report;
pub mod request;
pub mod run;
pub mod serve;
pub mod stats;
pub mod svg;
