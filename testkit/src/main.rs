//! `migserve-fake-worker`: the real worker HTTP layer over a [`FakeEngine`] (canned tokens at
//! a set pace, injected failures and cut streams), for router and loadtest tests and the
//! router-overhead benchmark. Prints a worker's ready line; stops on SIGTERM / Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use migserve::metrics::MetricLabels;
use migserve::worker::http::{router, AppState};
use migserve_testkit::cut::{cut_streams, CutEvery};
use migserve_testkit::{FakeConfig, FakeEngine};

/// A stand-in worker: the worker's API with canned tokens and no model.
#[derive(Debug, Parser)]
#[command(name = "migserve-fake-worker")]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed like a worker's ready line).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Milliseconds before the first token.
    #[arg(long, default_value_t = 20)]
    first_token_delay_ms: u64,
    /// Milliseconds between later tokens.
    #[arg(long, default_value_t = 10)]
    token_delay_ms: u64,
    /// Milliseconds added to the first token's delay per prompt token (word).
    #[arg(long, default_value_t = 0.0)]
    prefill_ms_per_token: f64,
    /// Share of the token delay each further request in flight adds (1.0: CPU-like).
    #[arg(long, default_value_t = 0.0)]
    batch_slowdown: f64,
    /// Tokens when a request sets no limit.
    #[arg(long, default_value_t = 16)]
    default_new_tokens: usize,
    /// Refuse every Nth generation request with a 503 (0: never).
    #[arg(long, default_value_t = 0)]
    fail_every: u64,
    /// Cut every Nth stream after its second event (0: never).
    #[arg(long, default_value_t = 0)]
    cut_every: u64,
    /// API keys, as a worker takes them.
    #[command(flatten)]
    auth: migserve::auth::ApiKeyArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    migserve::logging::init(migserve::logging::LogFormat::Text, "info");
    let keys = migserve::auth::ApiKeys::from_args(&args.auth)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let config = FakeConfig {
            first_token_delay: Duration::from_millis(args.first_token_delay_ms),
            token_delay: Duration::from_millis(args.token_delay_ms),
            prefill_per_token: Duration::from_secs_f64(args.prefill_ms_per_token.max(0.0) / 1000.0),
            batch_slowdown: args.batch_slowdown.max(0.0),
            default_new_tokens: args.default_new_tokens,
            fail_every: args.fail_every,
            ..FakeConfig::default()
        };
        let engine = Arc::new(FakeEngine::new(config, tokio::runtime::Handle::current()));
        let metrics = migserve::metrics::install(&MetricLabels {
            slice: "fake".into(),
            profile: "fake".into(),
            model: "fake".into(),
        })?;
        let state = Arc::new(AppState::new(engine.clone(), metrics, None));
        let app = router(state).layer(axum::middleware::from_fn_with_state(
            CutEvery::new(args.cut_every),
            cut_streams,
        ));
        let app = migserve::auth::protect(app, keys);
        migserve::worker::serve(app, engine.as_ref(), args.listen, Duration::from_secs(5)).await
    })
}
