//! Model hyper-parameters, read from GGUF metadata (nothing is hard-coded per model file).
//!
//! One decoder runs every supported family; what differs between families is data here: the
//! [`Family`] picks defaults (RoPE pairing, activation, q/k norms, ...) and the file's own
//! keys give every size.

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, MetadataView};

/// GGUF `general.architecture` values this runtime can run.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "gemma3", "phi3"];

/// A decoder family: the GGUF architecture, and with it the layer layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama 2/3, SmolLM, TinyLlama, Mistral (llama.cpp writes Mistral as `llama`).
    Llama,
    /// Qwen2 and Qwen2.5: biases on the Q, K and V projections.
    Qwen2,
    /// Qwen3: a per-head RMS norm on queries and keys before RoPE.
    Qwen3,
    /// Gemma 3: q/k norms, norms after attention and FFN, GELU-tanh, scaled embeddings,
    /// sliding-window layers with their own RoPE base.
    Gemma3,
    /// Phi-3: Q, K and V fused in the file, gate and up fused, sliding window on every layer.
    Phi3,
}

impl Family {
    /// The family of a GGUF `general.architecture`, if supported.
    pub fn from_architecture(arch: &str) -> Option<Self> {
        Some(match arch {
            "llama" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "gemma3" => Self::Gemma3,
            "phi3" => Self::Phi3,
            _ => return None,
        })
    }

    /// The GGUF architecture name.
    pub fn architecture(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3",
            Self::Phi3 => "phi3",
        }
    }
}

/// Which size [`ModelConfig::check`] found wrong (each source names its own key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfigField {
    /// A zero layer count, width, head count or vocabulary.
    Dimensions,
    KvHeads,
    HeadDim,
}

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i + 1)`: GGUF Llama files (llama.cpp's converter permutes Q and K for it).
    Interleaved,
    /// Pairs `(i, i + head_dim / 2)` ("NeoX"): Qwen, Gemma, Phi-3.
    Halves,
}

/// The FFN's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
}

/// The rotary embedding of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerRope {
    /// Base of the frequencies.
    pub theta: f32,
    /// Linear position scaling (`rope.scaling.type = linear`): frequencies divided by it.
    pub linear_factor: f32,
}

/// Shape, numeric constants and per-family layout of a decoder model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture` of the file.
    pub architecture: String,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    pub family: Family,
    pub n_layers: usize,
    pub hidden_size: usize,
    pub ffn_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Longest sequence (prompt + generated) the model was trained for.
    pub context_length: usize,
    /// RoPE base of the global (full-attention) layers.
    pub rope_theta: f32,
    pub rms_eps: f64,
    pub rope_style: RopeStyle,
    pub activation: Activation,
    /// Embeddings are multiplied by this (Gemma: `sqrt(hidden_size)`).
    pub embedding_scale: Option<f32>,
    /// Added to every RMS-norm weight at load. 0 for GGUF files: llama.cpp's converter
    /// already stores Gemma's `1 + w`.
    pub norm_offset: f32,
    /// A per-head RMS norm on queries and keys before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// Biases on the Q, K and V projections.
    pub qkv_bias: bool,
    /// RMS norms on the attention and FFN outputs before the residual add.
    pub post_norms: bool,
    /// Queries are multiplied by this before attention.
    pub attention_scale: f32,
    /// Per layer: the sliding-window size (`None`: attends to the whole sequence).
    pub layer_windows: Vec<Option<usize>>,
    /// Per layer: its rotary embedding.
    pub layer_ropes: Vec<LayerRope>,
    /// The output layer reuses the embedding matrix (no `output.weight`).
    pub tied_embeddings: bool,
}

impl ModelConfig {
    /// Reads the configuration from a GGUF file's metadata (and which tensors it holds).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        Self::from_metadata(file.view(), |name| file.has_tensor(name))
    }

    /// The configuration of a model with this metadata, whose file holds the tensors for
    /// which `has_tensor` is true.
    pub fn from_metadata(
        file: MetadataView<'_>,
        has_tensor: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        let arch = file.string("general.architecture")?.to_string();
        let family = Family::from_architecture(&arch).ok_or_else(|| {
            ModelError::UnsupportedArchitecture(arch.clone(), SUPPORTED_ARCHITECTURES.join(", "))
        })?;
        let key = |k: &str| format!("{arch}.{k}");
        let has = |k: &str| file.optional(&key(k)).is_some();
        let get = |k: &str| -> Result<usize> { Ok(file.u64(&key(k))? as usize) };
        let get_or = |k: &str, default: usize| -> Result<usize> {
            if has(k) {
                get(k)
            } else {
                Ok(default)
            }
        };
        let float_or = |k: &str, default: f32| -> Result<f32> {
            if has(k) {
                file.f32(&key(k))
            } else {
                Ok(default)
            }
        };
        let n_heads = get("attention.head_count")?;
        let hidden_size = get("embedding_length")?;
        let n_layers = get("block_count")?;
        let n_kv_heads = get_or("attention.head_count_kv", n_heads)?;
        let head_dim = get_or("attention.key_length", hidden_size / n_heads.max(1))?;
        if has("attention.value_length") && get("attention.value_length")? != head_dim {
            return Err(ModelError::Metadata {
                key: key("attention.value_length"),
                reason: format!(
                    "value length {} differs from the key length {head_dim}: not supported",
                    get("attention.value_length")?
                ),
            });
        }
        if has("rope.dimension_count") && get("rope.dimension_count")? != head_dim {
            return Err(ModelError::Metadata {
                key: key("rope.dimension_count"),
                reason: format!(
                    "RoPE on {} of the head's {head_dim} dimensions (partial rotary) is not supported",
                    get("rope.dimension_count")?
                ),
            });
        }
        let vocab_size = match has("vocab_size") {
            true => get("vocab_size")?,
            false => file
                .optional("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .ok_or_else(|| ModelError::Metadata {
                    key: key("vocab_size"),
                    reason: "missing, and no tokenizer.ggml.tokens to count".into(),
                })?,
        };
        let rope_theta = float_or("rope.freq_base", 10_000.0)?;
        let linear_factor = match file
            .optional(&key("rope.scaling.type"))
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
        {
            None | Some("none") => 1.0,
            Some("linear") => float_or("rope.scaling.factor", 1.0)?,
            Some(other) => {
                return Err(ModelError::Metadata {
                    key: key("rope.scaling.type"),
                    reason: format!("RoPE scaling `{other}` is not supported (none, linear)"),
                })
            }
        };
        if has_tensor("rope_factors_long.weight") {
            return Err(ModelError::Metadata {
                key: "rope_factors_long.weight".into(),
                reason: "long-context RoPE factors (LongRoPE, Phi-3 128k) are not supported".into(),
            });
        }
        let window = match has("attention.sliding_window") {
            true => Some(get("attention.sliding_window")?).filter(|w| *w > 0),
            false => None,
        };
        let global = LayerRope {
            theta: rope_theta,
            linear_factor,
        };
        let (layer_windows, layer_ropes) = match family {
            Family::Gemma3 => {
                // Every `pattern`-th layer is global; the others slide with their own base
                // (llama.cpp's defaults when the file does not say: 6 and 10000).
                let pattern = match (
                    has("attention.sliding_window_pattern"),
                    has("attention.sliding_window_type"),
                ) {
                    (true, _) => get("attention.sliding_window_pattern")?,
                    (false, true) => get("attention.sliding_window_type")?,
                    _ => 6,
                }
                .max(1);
                let local = LayerRope {
                    theta: match has("rope.freq_base_swa") {
                        true => file.f32(&key("rope.freq_base_swa"))?,
                        false => float_or("rope.local_freq_base", 10_000.0)?,
                    },
                    linear_factor: 1.0,
                };
                (0..n_layers)
                    .map(|i| match (i + 1) % pattern == 0 || window.is_none() {
                        true => (None, global),
                        false => (window, local),
                    })
                    .unzip()
            }
            _ => (vec![window; n_layers], vec![global; n_layers]),
        };
        let gemma = family == Family::Gemma3;
        // Gemma 3 27B scales queries by its hidden size per head, not its head dimension
        // (llama.cpp does the same; every other size has the two equal).
        let scale_dim = match gemma && n_layers == 62 {
            true => hidden_size / n_heads.max(1),
            false => head_dim,
        };
        let config = Self {
            name: file
                .optional("general.name")
                .and_then(|v| v.to_string().ok())
                .cloned(),
            family,
            n_layers,
            hidden_size,
            ffn_size: get("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length: get("context_length")?,
            rope_theta,
            rms_eps: f64::from(file.f32(&key("attention.layer_norm_rms_epsilon"))?),
            rope_style: match family {
                Family::Llama => RopeStyle::Interleaved,
                _ => RopeStyle::Halves,
            },
            activation: match gemma {
                true => Activation::GeluTanh,
                false => Activation::Silu,
            },
            embedding_scale: gemma.then(|| (hidden_size as f32).sqrt()),
            norm_offset: 0.0,
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            qkv_bias: family == Family::Qwen2 || has_tensor("blk.0.attn_q.bias"),
            post_norms: gemma,
            attention_scale: 1.0 / (scale_dim.max(1) as f32).sqrt(),
            layer_windows,
            layer_ropes,
            tied_embeddings: !has_tensor("output.weight"),
            architecture: arch,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        self.check()
            .map_err(|(field, reason)| ModelError::Metadata {
                key: format!(
                    "{}.{}",
                    self.architecture,
                    match field {
                        ConfigField::Dimensions => "block_count",
                        ConfigField::KvHeads => "attention.head_count_kv",
                        ConfigField::HeadDim => "attention.key_length",
                    }
                ),
                reason,
            })
    }

    /// Checks that the sizes make a model; on failure, which field is wrong and why.
    pub(crate) fn check(&self) -> std::result::Result<(), (ConfigField, String)> {
        if self.n_layers == 0 || self.hidden_size == 0 || self.n_heads == 0 || self.vocab_size == 0
        {
            return Err((ConfigField::Dimensions, "model has a zero dimension".into()));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err((
                ConfigField::KvHeads,
                format!(
                    "{} query heads are not a multiple of {} KV heads",
                    self.n_heads, self.n_kv_heads
                ),
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err((
                ConfigField::HeadDim,
                format!("head dimension {} must be even and non-zero", self.head_dim),
            ));
        }
        Ok(())
    }

    /// Query heads per KV head (grouped-query attention).
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// The sliding window of layer `layer` (`None`: full attention, or no such layer).
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        self.layer_windows.get(layer).copied().flatten()
    }

    /// Bytes one cached position takes over all layers (keys and values) at `element_bytes`
    /// per value. Sliding-window layers are counted in full: the paged cache gives every
    /// layer the same blocks.
    pub fn kv_bytes_per_position(&self, element_bytes: usize) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim * element_bytes
    }

    /// Number of parameters: every weight, bias and norm the family has (a tied output layer
    /// counted once).
    pub fn parameter_count(&self) -> usize {
        let (h, hd) = (self.hidden_size, self.head_dim);
        let qkv_width = hd * (self.n_heads + 2 * self.n_kv_heads);
        let mut layer = h * qkv_width + self.n_heads * hd * h + 3 * h * self.ffn_size + 2 * h;
        if self.qkv_bias {
            layer += qkv_width;
        }
        if self.qk_norm {
            layer += 2 * hd;
        }
        if self.post_norms {
            layer += 2 * h;
        }
        let head = if self.tied_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        self.n_layers * layer + self.vocab_size * h + head + h
    }
}
