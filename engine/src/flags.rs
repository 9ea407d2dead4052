//! The engine's settings: one struct for `migserve worker`'s flags and the deployment
//! config's `[models.engine]` table, so the two cannot drift apart.

use migserve_models::WeightFormat;
use serde::{Deserialize, Serialize};

/// KV cache positions on the CPU when `--kv-cache-tokens` is not given (on a GPU the cache
/// takes `--kv-memory-fraction` of the memory left after the weights).
pub const DEFAULT_KV_CACHE_TOKENS: usize = 16384;

/// Sizes and limits of one engine. The field names are the flags' names (`max_batch_size`
/// is `--max-batch-size`) and the config keys; [`EngineFlags::default`] and the flags'
/// defaults are the same values (tested).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineFlags {
    /// Most sequences decoded together in one step.
    #[arg(long, default_value_t = Self::default().max_batch_size)]
    pub max_batch_size: usize,
    /// Token budget of one step: decode tokens first, prompt chunks fill the rest.
    #[arg(long, default_value_t = Self::default().max_batch_tokens)]
    pub max_batch_tokens: usize,
    /// Longest prompt plus generated tokens; default: the model's context, at most 4096.
    #[arg(long)]
    pub max_total_tokens: Option<usize>,
    /// Longest prompt; default: max_total_tokens - 1.
    #[arg(long)]
    pub max_input_tokens: Option<usize>,
    /// KV cache size in token positions (shared by all sequences); default: 16384 on the
    /// CPU, on a GPU what --kv-memory-fraction of the memory left after the weights holds.
    #[arg(long)]
    pub kv_cache_tokens: Option<usize>,
    /// On a GPU: share of the memory CUDA reports free after loading the weights that the KV
    /// cache takes (the rest is for activations and cuBLAS).
    #[arg(long, default_value_t = Self::default().kv_memory_fraction)]
    pub kv_memory_fraction: f64,
    /// Positions per KV cache block.
    #[arg(long, default_value_t = Self::default().block_size)]
    pub block_size: usize,
    /// Requests waiting or running at once; more get 429.
    #[arg(long, default_value_t = Self::default().max_concurrent_requests)]
    pub max_concurrent_requests: usize,
    /// Most stop sequences per request.
    #[arg(long, default_value_t = Self::default().max_stop_sequences)]
    pub max_stop_sequences: usize,
    /// New tokens when a request sets no limit.
    #[arg(long, default_value_t = Self::default().default_max_new_tokens)]
    pub default_max_new_tokens: usize,
    /// How weights are held: q8 (re-quantized to Q8_0 at load; the CPU default: fastest CPU
    /// decode, least memory), bf16 (the GPU default), f32 (fastest CPU prefill) or quantized
    /// (the file's own types).
    #[arg(long)]
    #[serde(with = "weights_by_name")]
    pub weights: Option<WeightFormat>,
    /// Compute every prompt from its first token: no reuse of the KV blocks of prefixes
    /// already computed (on by default).
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Wait for the device at the end of every forward pass, so the step phase metrics
    /// (`migserve_step_phase_seconds`) show the device's time under `forward` rather than
    /// under `sample`; a profiling aid (it costs the overlap of the host's sampling
    /// preparation with the device; nothing on the CPU).
    #[arg(long)]
    pub profile_steps: bool,
    /// Bytes of memory this worker may use in all (weights, KV cache, activations): its
    /// share of a slice it shares with other workers. Without --kv-cache-tokens the KV cache
    /// gets what the weights leave of it (less the 10 % kept for activations; on a GPU never
    /// more than --kv-memory-fraction of what is free). `serve` sets it for workers that
    /// share a slice; default: the whole device.
    #[arg(long)]
    pub memory_budget_bytes: Option<u64>,
}

impl Default for EngineFlags {
    /// What `migserve worker` runs with when no flag is given.
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 512,
            max_total_tokens: None,
            max_input_tokens: None,
            kv_cache_tokens: None,
            kv_memory_fraction: 0.9,
            block_size: 16,
            max_concurrent_requests: 256,
            max_stop_sequences: 4,
            default_max_new_tokens: 256,
            weights: None,
            no_prefix_caching: false,
            profile_steps: false,
            memory_budget_bytes: None,
        }
    }
}

impl EngineFlags {
    /// Refuses values no engine can run with; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.block_size == 0 {
            return Err("--block-size must be at least 1".into());
        }
        if !(self.kv_memory_fraction > 0.0 && self.kv_memory_fraction < 1.0) {
            return Err("--kv-memory-fraction must be between 0 and 1 (exclusive)".into());
        }
        if self.max_batch_size == 0
            || self.max_batch_tokens == 0
            || self.max_concurrent_requests == 0
        {
            return Err(
                "--max-batch-size, --max-batch-tokens and --max-concurrent-requests must be positive"
                    .into(),
            );
        }
        if self.default_max_new_tokens == 0 {
            return Err("--default-max-new-tokens must be at least 1".into());
        }
        if self.memory_budget_bytes == Some(0) {
            return Err("--memory-budget-bytes must be positive".into());
        }
        Ok(())
    }

    /// These settings as `migserve worker` flags (`--max-batch-size 32 ...`), derived from the
    /// field names: what a supervisor passes to the workers it starts.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) else {
            return args;
        };
        for (name, value) in fields {
            let flag = format!("--{}", name.replace('_', "-"));
            let value = match value {
                serde_json::Value::Null | serde_json::Value::Bool(false) => continue,
                serde_json::Value::Bool(true) => {
                    args.push(flag);
                    continue;
                }
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            args.push(flag);
            args.push(value);
        }
        args
    }
}

/// `weights` as its name (`"q8"`), in configs and in [`EngineFlags::to_args`].
mod weights_by_name {
    use migserve_models::WeightFormat;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(w: &Option<WeightFormat>, s: S) -> Result<S::Ok, S::Error> {
        match w {
            Some(w) => s.serialize_some(w.name()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<WeightFormat>, D::Error> {
        let name = Option::<String>::deserialize(d)?;
        name.map(|n| n.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Worker {
        #[command(flatten)]
        engine: EngineFlags,
    }

    #[test]
    fn defaults_are_the_flags_defaults_and_valid() {
        let d = EngineFlags::default();
        let parsed = Worker::try_parse_from(["worker"]).unwrap().engine;
        assert_eq!(parsed, d, "no flag given: the defaults");
        assert_eq!(
            (d.max_batch_size, d.block_size, d.kv_cache_tokens),
            (32, 16, None)
        );
        assert!(d.validate().is_ok());
        let from_toml: EngineFlags = toml_like("{}");
        assert_eq!(from_toml, d, "an empty table gives the same defaults");
    }

    #[test]
    fn every_setting_survives_the_trip_through_worker_flags() {
        let flags = EngineFlags {
            max_batch_size: 3,
            max_batch_tokens: 77,
            max_total_tokens: Some(900),
            max_input_tokens: Some(800),
            kv_cache_tokens: Some(4096),
            kv_memory_fraction: 0.25,
            block_size: 8,
            max_concurrent_requests: 9,
            max_stop_sequences: 2,
            default_max_new_tokens: 5,
            weights: Some(WeightFormat::F32),
            no_prefix_caching: true,
            profile_steps: true,
            memory_budget_bytes: Some(3_000_000_000),
        };
        let mut argv = vec!["worker".to_string()];
        argv.extend(flags.to_args());
        let parsed = Worker::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        assert_eq!(parsed.engine, flags);
        assert!(
            !EngineFlags::default()
                .to_args()
                .iter()
                .any(|a| a == "--weights"),
            "unset options are left out"
        );
    }

    #[test]
    fn config_values_are_typed_and_unknown_keys_refused() {
        let f: EngineFlags = toml_like(r#"{"weights": "bf16", "block_size": 32}"#);
        assert_eq!((f.weights, f.block_size), (Some(WeightFormat::Bf16), 32));
        let bad = serde_json::from_str::<EngineFlags>(r#"{"weights": "int3"}"#).unwrap_err();
        assert!(bad.to_string().contains("unknown weight format"), "{bad}");
        let unknown = serde_json::from_str::<EngineFlags>(r#"{"max_batch": 3}"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown field"), "{unknown}");
    }

    #[test]
    fn out_of_range_values_are_refused_by_name() {
        let zero_blocks = EngineFlags {
            block_size: 0,
            ..Default::default()
        };
        assert!(zero_blocks.validate().unwrap_err().contains("--block-size"));
        let fraction = EngineFlags {
            kv_memory_fraction: 1.0,
            ..Default::default()
        };
        assert!(fraction
            .validate()
            .unwrap_err()
            .contains("--kv-memory-fraction"));
    }

    fn toml_like(json: &str) -> EngineFlags {
        serde_json::from_str(json).unwrap()
    }
}
