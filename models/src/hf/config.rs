//! A Hugging Face `config.json` as a [`ModelConfig`]: the architecture from `architectures`,
//! every size from its keys, RoPE from `rope_theta` + `rope_scaling` (or transformers 5's
//! `rope_parameters`), sliding windows from `sliding_window` and `layer_types` (or the family's
//! own keys). What the decoder cannot run is refused, naming the key.

use serde_json::Value;

use super::json::JsonFile;
use crate::config::{Activation, ConfigField, Family, LayerRope, ModelConfig, RopeStyle};
use crate::error::Result;
use crate::rope::Llama3Rope;

/// `architectures` entries this runtime runs, and the family each one is.
pub const HF_ARCHITECTURES: &[(&str, Family)] = &[
    ("LlamaForCausalLM", Family::Llama),
    ("MistralForCausalLM", Family::Llama),
    ("Qwen2ForCausalLM", Family::Qwen2),
    ("Qwen3ForCausalLM", Family::Qwen3),
    ("Gemma3ForCausalLM", Family::Gemma3),
    ("Phi3ForCausalLM", Family::Phi3),
];

/// What `config.json` says about the model.
#[derive(Debug, Clone)]
pub struct HfConfig {
    pub config: ModelConfig,
    /// Llama 3 RoPE scaling, applied as per-frequency factors.
    pub llama3_rope: Option<Llama3Rope>,
    /// `bos_token_id`, when given.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` (one id or a list).
    pub eos_token_ids: Vec<u32>,
}

/// One layer kind's rotary embedding as the file states it.
struct Rope {
    layer: LayerRope,
    llama3: Option<Llama3Rope>,
}

impl HfConfig {
    /// Parses `file` (a directory's `config.json`); `name` is used when it has no
    /// `_name_or_path`.
    pub fn parse(file: &JsonFile, name: &str) -> Result<Self> {
        let family = family(file)?;
        if file.get("quantization_config").is_some() {
            return Err(file.error(
                "quantization_config",
                "quantized checkpoints (GPTQ, AWQ, bitsandbytes, FP8) are not supported: use \
                 bf16, f16 or f32 weights (or a GGUF file)",
            ));
        }
        let gemma = family == Family::Gemma3;
        let hidden_size = file.usize("hidden_size")?;
        let n_heads = file.usize("num_attention_heads")?;
        let n_layers = file.usize("num_hidden_layers")?;
        let n_kv_heads = file.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
        let head_dim = file
            .opt_usize("head_dim")?
            .unwrap_or(hidden_size / n_heads.max(1));
        let activation = activation(file, gemma)?;
        refuse_true(
            file,
            "mlp_bias",
            "biases on the MLP projections are not supported",
        )?;
        if family != Family::Qwen2 {
            refuse_true(
                file,
                "attention_bias",
                "attention biases (which include the output projection) are not supported",
            )?;
        }
        for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if let Some(v) = file.opt_f64(key)? {
                return Err(file.error(key, format!("logit soft-capping ({v}) is not supported")));
            }
        }
        if let Some(f) = file.opt_f64("partial_rotary_factor")? {
            if f != 1.0 {
                return Err(file.error(
                    "partial_rotary_factor",
                    format!("RoPE on part of each head ({f}) is not supported"),
                ));
            }
        }
        let (global, local) = ropes(file, gemma)?;
        let kinds = layer_kinds(file, family, n_layers)?;
        let window = match kinds.iter().any(|sliding| *sliding) {
            true => Some(file.usize("sliding_window")?).filter(|w| *w > 0),
            false => None,
        };
        let layer_ropes: Vec<LayerRope> = kinds
            .iter()
            .map(|sliding| match (sliding, &local) {
                (true, Some(local)) => local.layer,
                _ => global.layer,
            })
            .collect();
        if global.llama3.is_some() && layer_ropes.iter().any(|r| *r != global.layer) {
            return Err(file.error(
                "rope_scaling",
                "llama3 RoPE scaling on a model with several RoPE bases is not supported",
            ));
        }
        let query_scalar = match gemma {
            true => file
                .opt_f64("query_pre_attn_scalar")?
                .unwrap_or(head_dim as f64),
            false => head_dim as f64,
        };
        let tied = file
            .opt_bool("tie_word_embeddings")?
            // transformers' defaults per class.
            .unwrap_or(gemma);
        let config = ModelConfig {
            architecture: family.architecture().to_string(),
            name: Some(
                file.opt_str("_name_or_path")?
                    .filter(|n| !n.is_empty())
                    .unwrap_or(name)
                    .to_string(),
            ),
            family,
            n_layers,
            hidden_size,
            ffn_size: file.usize("intermediate_size")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size: file.usize("vocab_size")?,
            context_length: file.usize("max_position_embeddings")?,
            rope_theta: global.layer.theta,
            rms_eps: file.opt_f64("rms_norm_eps")?.unwrap_or(match family {
                Family::Phi3 => 1e-5,
                _ => 1e-6,
            }),
            rope_style: RopeStyle::Halves,
            activation,
            embedding_scale: gemma.then(|| (hidden_size as f32).sqrt()),
            // Gemma's norms compute `x * (1 + w)` and the file stores `w`.
            norm_offset: if gemma { 1.0 } else { 0.0 },
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            qkv_bias: family == Family::Qwen2,
            post_norms: gemma,
            attention_scale: (1.0 / query_scalar.max(1.0).sqrt()) as f32,
            layer_windows: kinds.iter().map(|s| window.filter(|_| *s)).collect(),
            layer_ropes,
            tied_embeddings: tied,
        };
        config.check().map_err(|(field, reason)| {
            let key = match field {
                ConfigField::Dimensions => "num_hidden_layers",
                ConfigField::KvHeads => "num_key_value_heads",
                ConfigField::HeadDim => "head_dim",
            };
            file.error(key, reason)
        })?;
        Ok(Self {
            config,
            llama3_rope: global.llama3,
            bos_token_id: file.ids("bos_token_id")?.first().copied(),
            eos_token_ids: file.ids("eos_token_id")?,
        })
    }
}

fn family(file: &JsonFile) -> Result<Family> {
    let supported = || {
        HF_ARCHITECTURES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let list = file
        .get("architectures")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            file.error(
                "architectures",
                format!("missing (supported: {})", supported()),
            )
        })?;
    let names: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
    names
        .iter()
        .find_map(|n| {
            HF_ARCHITECTURES
                .iter()
                .find(|(a, _)| a == n)
                .map(|(_, f)| *f)
        })
        .ok_or_else(|| {
            file.error(
                "architectures",
                format!(
                    "{} is not supported (supported: {})",
                    names.join(", "),
                    supported()
                ),
            )
        })
}

fn activation(file: &JsonFile, gemma: bool) -> Result<Activation> {
    let key = match file.get("hidden_activation").is_some() {
        true => "hidden_activation",
        false => "hidden_act",
    };
    let default = if gemma { "gelu_pytorch_tanh" } else { "silu" };
    match file.opt_str(key)?.unwrap_or(default) {
        "silu" | "swish" => Ok(Activation::Silu),
        "gelu_pytorch_tanh" | "gelu_tanh" | "gelu_new" => Ok(Activation::GeluTanh),
        other => Err(file.error(
            key,
            format!("activation `{other}` is not supported (silu, gelu_pytorch_tanh)"),
        )),
    }
}

fn refuse_true(file: &JsonFile, key: &str, reason: &str) -> Result<()> {
    match file.opt_bool(key)? {
        Some(true) => Err(file.error(key, reason)),
        _ => Ok(()),
    }
}

/// The global layers' RoPE, and the sliding layers' when they differ (Gemma 3).
fn ropes(file: &JsonFile, gemma: bool) -> Result<(Rope, Option<Rope>)> {
    if let Some(params) = file.get("rope_parameters") {
        // transformers 5: one dict, or one per layer type.
        if let Some(full) = params.get("full_attention") {
            let global = rope_of(file, "rope_parameters.full_attention", full, None)?;
            let local = match params.get("sliding_attention") {
                Some(s) => Some(rope_of(file, "rope_parameters.sliding_attention", s, None)?),
                None => None,
            };
            return Ok((global, local));
        }
        let global = rope_of(file, "rope_parameters", params, None)?;
        return Ok((global, None));
    }
    let theta = file.opt_f64("rope_theta")?.unwrap_or(10_000.0);
    let global = match file.get("rope_scaling") {
        Some(scaling) => rope_of(file, "rope_scaling", scaling, Some(theta))?,
        None => Rope {
            layer: LayerRope {
                theta: theta as f32,
                linear_factor: 1.0,
            },
            llama3: None,
        },
    };
    let local = match gemma {
        true => Some(Rope {
            layer: LayerRope {
                theta: file.opt_f64("rope_local_base_freq")?.unwrap_or(10_000.0) as f32,
                linear_factor: 1.0,
            },
            llama3: None,
        }),
        false => None,
    };
    Ok((global, local))
}

/// One RoPE dict (`rope_scaling`, or a `rope_parameters` entry that also holds `rope_theta`).
fn rope_of(file: &JsonFile, key: &str, v: &Value, theta: Option<f64>) -> Result<Rope> {
    let num = |k: &str| v.get(k).and_then(Value::as_f64);
    let theta = theta.or_else(|| num("rope_theta")).unwrap_or(10_000.0) as f32;
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let need = |k: &str| {
        num(k).ok_or_else(|| file.error(&format!("{key}.{k}"), format!("missing for `{kind}`")))
    };
    let mut layer = LayerRope {
        theta,
        linear_factor: 1.0,
    };
    let mut llama3 = None;
    match kind {
        "default" => {}
        "linear" => layer.linear_factor = need("factor")? as f32,
        "llama3" => {
            llama3 = Some(Llama3Rope {
                factor: need("factor")? as f32,
                low_freq_factor: need("low_freq_factor")? as f32,
                high_freq_factor: need("high_freq_factor")? as f32,
                original_context: need("original_max_position_embeddings")? as u32,
            })
        }
        other => {
            return Err(file.error(
                key,
                format!("RoPE scaling `{other}` is not supported (default, linear, llama3)"),
            ))
        }
    }
    Ok(Rope { layer, llama3 })
}

/// Per layer: whether it uses the sliding window.
fn layer_kinds(file: &JsonFile, family: Family, n_layers: usize) -> Result<Vec<bool>> {
    if let Some(types) = file.get("layer_types") {
        let list = types
            .as_array()
            .filter(|l| l.len() == n_layers)
            .ok_or_else(|| {
                file.error(
                    "layer_types",
                    format!("expected a list of {n_layers} layer types"),
                )
            })?;
        return list
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(file.error(
                    "layer_types",
                    format!("layer type {t} is not supported (full_attention, sliding_attention)"),
                )),
            })
            .collect();
    }
    let has_window = file.opt_usize("sliding_window")?.is_some_and(|w| w > 0);
    Ok(match family {
        Family::Gemma3 => {
            let pattern = file
                .opt_usize("sliding_window_pattern")?
                .unwrap_or(6)
                .max(1);
            (0..n_layers)
                .map(|i| has_window && (i + 1) % pattern != 0)
                .collect()
        }
        Family::Qwen2 | Family::Qwen3 => {
            let on = file.opt_bool("use_sliding_window")?.unwrap_or(false) && has_window;
            let from = file.opt_usize("max_window_layers")?.unwrap_or(n_layers);
            (0..n_layers).map(|i| on && i >= from).collect()
        }
        Family::Llama | Family::Phi3 => vec![has_window; n_layers],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<HfConfig> {
        let file = JsonFile {
            path: "config.json".into(),
            value,
        };
        HfConfig::parse(&file, "dir")
    }

    /// meta-llama/Llama-3.2-1B's config.json, as published.
    fn llama32() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "attention_bias": false,
            "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64,
            "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 8192,
            "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
            "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
            "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0,
            "low_freq_factor": 1.0, "original_max_position_embeddings": 8192,
            "rope_type": "llama3"}, "rope_theta": 500000.0, "tie_word_embeddings": true,
            "torch_dtype": "bfloat16", "vocab_size": 128256})
    }

    /// google/gemma-3-270m's config.json (transformers 4.5x, with `layer_types`).
    fn gemma3() -> Value {
        let mut types = vec!["sliding_attention"; 18];
        for i in [5, 11, 17] {
            types[i] = "full_attention";
        }
        json!({"architectures": ["Gemma3ForCausalLM"], "attention_bias": false,
            "attn_logit_softcapping": null, "bos_token_id": 2, "eos_token_id": 1,
            "final_logit_softcapping": null, "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 640,
            "intermediate_size": 2048, "layer_types": types, "max_position_embeddings": 32768,
            "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 18,
            "num_key_value_heads": 1, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
            "rope_local_base_freq": 10000.0, "rope_scaling": null, "rope_theta": 1000000.0,
            "sliding_window": 512, "use_bidirectional_attention": false, "vocab_size": 262144})
    }

    #[test]
    fn llama3_rope_scaling_becomes_factors() {
        let c = parse(llama32()).unwrap();
        assert_eq!(c.config.family, Family::Llama);
        assert_eq!(c.config.rope_style, RopeStyle::Halves);
        assert!(c.config.tied_embeddings);
        let r = c.llama3_rope.unwrap();
        assert_eq!((r.factor, r.original_context), (32.0, 8192));
        assert_eq!(c.eos_token_ids, [128001]);
        assert_eq!(c.config.layer_windows, vec![None; 16]);
    }

    #[test]
    fn gemma3_layer_types_pick_windows_and_bases() {
        let c = parse(gemma3()).unwrap().config;
        assert_eq!(c.norm_offset, 1.0);
        assert_eq!(c.layer_window(0), Some(512));
        assert_eq!(c.layer_window(5), None);
        assert_eq!(c.layer_ropes[0].theta, 10_000.0);
        assert_eq!(c.layer_ropes[5].theta, 1_000_000.0);
        assert!((c.attention_scale - 1.0 / 16.0).abs() < 1e-7);
        // The older form (sliding_window_pattern) gives the same layout.
        let mut old = gemma3();
        old.as_object_mut().unwrap().remove("layer_types");
        old["sliding_window_pattern"] = json!(6);
        assert_eq!(parse(old).unwrap().config, c);
        // transformers 5 moves RoPE into rope_parameters, per layer type.
        let mut v5 = gemma3();
        let obj = v5.as_object_mut().unwrap();
        for k in ["rope_theta", "rope_scaling", "rope_local_base_freq"] {
            obj.remove(k);
        }
        obj.insert(
            "rope_parameters".into(),
            json!({"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                   "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
        );
        assert_eq!(parse(v5).unwrap().config, c);
    }

    #[test]
    fn qwen2_windows_only_when_turned_on() {
        let qwen = json!({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": false,
            "max_window_layers": 21, "tie_word_embeddings": true, "vocab_size": 151936});
        let c = parse(qwen.clone()).unwrap().config;
        assert!(c.qkv_bias);
        assert_eq!(c.layer_windows, vec![None; 24]);
        let mut on = qwen;
        on["use_sliding_window"] = json!(true);
        let c = parse(on).unwrap().config;
        assert_eq!(c.layer_window(20), None);
        assert_eq!(c.layer_window(21), Some(32768));
    }

    #[test]
    fn what_the_decoder_cannot_run_is_refused_by_key() {
        let refused = |edit: &dyn Fn(&mut Value), key: &str, words: &str| {
            let mut v = llama32();
            edit(&mut v);
            let e = parse(v).unwrap_err().to_string();
            assert!(e.starts_with(&format!("config.json: key `{key}`")), "{e}");
            assert!(e.contains(words), "{e}");
        };
        refused(
            &|v| v["architectures"] = json!(["BertModel"]),
            "architectures",
            "BertModel is not supported",
        );
        refused(
            &|v| v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0}),
            "rope_scaling",
            "`yarn` is not supported",
        );
        refused(
            &|v| v["quantization_config"] = json!({"quant_method": "awq"}),
            "quantization_config",
            "not supported",
        );
        refused(
            &|v| v["attention_bias"] = json!(true),
            "attention_bias",
            "not supported",
        );
        refused(
            &|v| v["hidden_act"] = json!("relu"),
            "hidden_act",
            "`relu` is not supported",
        );
        refused(
            &|v| v["num_key_value_heads"] = json!(5),
            "num_key_value_heads",
            "not a multiple",
        );
        refused(
            &|v| {
                v.as_object_mut().unwrap().remove("hidden_size");
            },
            "hidden_size",
            "missing",
        );
        refused(
            &|v| v["hidden_size"] = json!("big"),
            "hidden_size",
            "expected a non-negative integer",
        );
        refused(
            &|v| v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0}),
            "rope_scaling.low_freq_factor",
            "missing",
        );
    }
}
