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
