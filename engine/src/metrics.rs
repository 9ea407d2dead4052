//! Names of the metrics the engine records, through the `metrics` facade (the worker installs
//! the Prometheus recorder, with the buckets and the `slice`, `profile`, `model` labels).

use std::time::Duration;

/// Requests waiting for a place in the running batch (gauge).
pub const QUEUE_SIZE: &str = "migserve_queue_size";
/// Sequences in the running batch (gauge).
pub const BATCH_SIZE: &str = "migserve_batch_size";
/// KV cache blocks owned by sequences (gauge).
pub const KV_BLOCKS_USED: &str = "migserve_kv_blocks_used";
/// KV cache blocks free (gauge).
pub const KV_BLOCKS_FREE: &str = "migserve_kv_blocks_free";
/// Cached full KV blocks, referenced or evictable (gauge).
pub const PREFIX_CACHE_BLOCKS: &str = "migserve_prefix_cache_blocks";
/// Prompt tokens looked up in the prefix cache at admission (counter).
pub const PREFIX_CACHE_QUERIED_TOKENS: &str = "migserve_prefix_cache_queried_tokens_total";
/// Prompt tokens found in the prefix cache, not computed (counter).
pub const PREFIX_CACHE_HIT_TOKENS: &str = "migserve_prefix_cache_hit_tokens_total";
/// Cached blocks evicted for new allocations (counter).
pub const PREFIX_CACHE_EVICTIONS: &str = "migserve_prefix_cache_evictions_total";
/// Fresh KV blocks handed out; shared prefix blocks are not counted (counter).
pub const KV_BLOCKS_ALLOCATED: &str = "migserve_kv_blocks_allocated_total";
/// Requests accepted, whatever their outcome (counter).
pub const REQUESTS: &str = "migserve_requests_total";
/// Seconds from arrival to the last token (histogram).
pub const REQUEST_DURATION: &str = "migserve_request_duration_seconds";
/// Seconds from arrival to the first generated token (histogram).
pub const TIME_TO_FIRST_TOKEN: &str = "migserve_time_to_first_token_seconds";
/// Mean seconds between output tokens after the first, per request (histogram).
pub const TIME_PER_OUTPUT_TOKEN: &str = "migserve_time_per_output_token_seconds";
/// Seconds a request waited before its first scheduled step (histogram).
pub const QUEUE_DURATION: &str = "migserve_queue_duration_seconds";
/// Tokens generated (counter).
pub const GENERATED_TOKENS: &str = "migserve_generated_tokens_total";
/// Prompt tokens accepted (counter).
pub const PROMPT_TOKENS: &str = "migserve_prompt_tokens_total";
/// Sequences preempted for lack of KV blocks (counter).
pub const PREEMPTIONS: &str = "migserve_preemptions_total";
/// Requests cancelled because the client went away (counter).
pub const CANCELLED: &str = "migserve_cancelled_total";
/// Forward passes run (counter).
pub const STEPS: &str = "migserve_engine_steps_total";
/// Seconds of a step that ran, schedule to last token sent, label `kind`: `decode` (one new
/// token per sequence) or `prefill` (prompt chunks too) (histogram).
pub const STEP_DURATION: &str = "migserve_step_duration_seconds";
/// Sequences in the steps of [`STEP_DURATION`], label `kind`: over its count, the mean batch
/// (counter).
pub const STEP_SEQUENCES: &str = "migserve_step_sequences_total";
/// Seconds of each phase of a step, label `phase`: `schedule`, `forward`, `sample`, `emit`
/// (see `step_clock`) (histogram).
pub const STEP_PHASE_DURATION: &str = "migserve_step_phase_seconds";

/// Adds to a counter.
pub fn counter_inc(name: &'static str, by: u64) {
    if by > 0 {
        metrics::counter!(name).increment(by);
    }
}

/// Sets a counter to a total kept elsewhere.
pub fn counter_set(name: &'static str, total: u64) {
    metrics::counter!(name).absolute(total);
}

/// Sets a gauge.
pub fn gauge_set(name: &'static str, value: f64) {
    metrics::gauge!(name).set(value);
}

/// Records a duration in seconds.
pub fn histogram_record(name: &'static str, d: Duration) {
    metrics::histogram!(name).record(d.as_secs_f64());
}
