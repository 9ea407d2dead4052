//! The worker's metrics: the engine's names (defined in `migserve_engine::metrics`, re-exported
//! here), the error counter the HTTP layer keeps, buckets, and the Prometheus recorder. Every
//! series carries the global labels `slice`, `profile` and `model`.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use migserve_engine::metrics::*;

/// Failed requests, label `error_type` (counter).
pub const ERRORS: &str = "migserve_errors_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const PER_TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28,
];
/// Steps and their phases: from a small model's decode step on a GPU (well under a
/// millisecond) to a long prompt chunk on a CPU.
const STEP_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Labels every series of this process carries.
#[derive(Debug, Clone)]
pub struct MetricLabels {
    pub slice: String,
    pub profile: String,
    pub model: String,
}

/// Installs the global Prometheus recorder (once per process) and returns its handle.
pub fn install(labels: &MetricLabels) -> anyhow::Result<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .add_global_label("slice", labels.slice.clone())
        .add_global_label("profile", labels.profile.clone())
        .add_global_label("model", labels.model.clone())
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(TIME_TO_FIRST_TOKEN.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(QUEUE_DURATION.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(TIME_PER_OUTPUT_TOKEN.into()),
            PER_TOKEN_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full(STEP_DURATION.into()), STEP_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(STEP_PHASE_DURATION.into()), STEP_BUCKETS)?;
    let handle = builder.install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        QUEUE_SIZE,
        "Requests waiting for a place in the running batch"
    );
    describe_gauge!(BATCH_SIZE, "Sequences in the running batch");
    describe_gauge!(KV_BLOCKS_USED, "KV cache blocks owned by sequences");
    describe_gauge!(KV_BLOCKS_FREE, "KV cache blocks free");
    describe_gauge!(
        PREFIX_CACHE_BLOCKS,
        "Cached full KV blocks, referenced or evictable"
    );
    describe_counter!(
        PREFIX_CACHE_QUERIED_TOKENS,
        "Prompt tokens looked up in the prefix cache at admission"
    );
    describe_counter!(
        PREFIX_CACHE_HIT_TOKENS,
        "Prompt tokens found in the prefix cache, not computed"
    );
    describe_counter!(
        PREFIX_CACHE_EVICTIONS,
        "Cached KV blocks evicted for new allocations"
    );
    describe_counter!(
        KV_BLOCKS_ALLOCATED,
        "Fresh KV blocks handed out (shared prefix blocks not counted)"
    );
    describe_counter!(REQUESTS, "Requests accepted");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Arrival to last token");
    describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Arrival to first generated token"
    );
    describe_histogram!(
        TIME_PER_OUTPUT_TOKEN,
        Unit::Seconds,
        "Mean time between output tokens"
    );
    describe_histogram!(
        QUEUE_DURATION,
        Unit::Seconds,
        "Arrival to first scheduled step"
    );
    describe_counter!(GENERATED_TOKENS, "Tokens generated");
    describe_counter!(PROMPT_TOKENS, "Prompt tokens accepted");
    describe_counter!(PREEMPTIONS, "Sequences preempted for lack of KV blocks");
    describe_counter!(CANCELLED, "Requests cancelled by client disconnect");
    describe_counter!(ERRORS, "Failed requests by error_type");
    describe_counter!(STEPS, "Forward passes run");
    describe_histogram!(
        STEP_DURATION,
        Unit::Seconds,
        "Steps that ran, by kind (decode or prefill)"
    );
    describe_counter!(STEP_SEQUENCES, "Sequences in the steps, by kind");
    describe_histogram!(
        STEP_PHASE_DURATION,
        Unit::Seconds,
        "Step phases: schedule, forward, sample, emit"
    );
}

/// Counts one failed request.
pub fn count_error(error_type: &'static str) {
    metrics::counter!(ERRORS, "error_type" => error_type).increment(1);
}
