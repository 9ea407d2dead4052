//! Model hyper-parameters, read from GGUF metadata (nothing is hard-coded per model).

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// GGUF `general.architecture` values this runtime can run (Llama-family graph).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// Shape and numeric constants of a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `general.architecture` of the file.
    pub architecture: String,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    pub n_layers: usize,
    pub hidden_size: usize,
    pub ffn_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Longest sequence (prompt + generated) the model was trained for.
    pub context_length: usize,
    pub rope_theta: f32,
    pub rms_eps: f64,
}

impl LlamaConfig {
    /// Reads the configuration from a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.string("general.architecture")?.to_string();
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(ModelError::UnsupportedArchitecture(arch));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let get = |k: &str| -> Result<usize> { Ok(file.u64(&key(k))? as usize) };
        let n_heads = get("attention.head_count")?;
        let hidden_size = get("embedding_length")?;
        let n_kv_heads = match file.optional(&key("attention.head_count_kv")) {
            Some(_) => get("attention.head_count_kv")?,
            None => n_heads,
        };
        let head_dim = match file.optional(&key("attention.key_length")) {
            Some(_) => get("attention.key_length")?,
            None if n_heads > 0 => hidden_size / n_heads,
            None => 0,
        };
        let vocab_size = match file.optional(&key("vocab_size")) {
            Some(_) => get("vocab_size")?,
            None => file
                .optional("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .ok_or_else(|| ModelError::Metadata {
                    key: key("vocab_size"),
                    reason: "missing, and no tokenizer.ggml.tokens to count".into(),
                })?,
        };
        let rope_theta = match file.optional(&key("rope.freq_base")) {
            Some(_) => file.f32(&key("rope.freq_base"))?,
            None => 10_000.0,
        };
        let config = Self {
            name: file
                .optional("general.name")
                .and_then(|v| v.to_string().ok())
                .cloned(),
            n_layers: get("block_count")?,
            hidden_size,
            ffn_size: get("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length: get("context_length")?,
            rope_theta,
            rms_eps: f64::from(file.f32(&key("attention.layer_norm_rms_epsilon"))?),
            architecture: arch,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| {
            Err(ModelError::Metadata {
                key: format!("{}.{key}", self.architecture),
                reason,
            })
        };
        if self.n_layers == 0 || self.hidden_size == 0 || self.n_heads == 0 || self.vocab_size == 0
        {
            return bad("block_count", "model has a zero dimension".into());
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(
                "attention.head_count_kv",
                format!(
                    "{} query heads are not a multiple of {} KV heads",
                    self.n_heads, self.n_kv_heads
                ),
            );
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(
                "attention.key_length",
                format!("head dimension {} must be even and non-zero", self.head_dim),
            );
        }
        Ok(())
    }

    /// Query heads per KV head (grouped-query attention).
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Bytes one cached position takes over all layers (keys and values) at `element_bytes`
    /// per value.
    pub fn kv_bytes_per_position(&self, element_bytes: usize) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim * element_bytes
    }

    /// Number of parameters in the transformer (embedding counted once).
    pub fn parameter_count(&self) -> usize {
        let attn = self.hidden_size * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads);
        let ffn = 3 * self.hidden_size * self.ffn_size;
        // Layers, the embedding (tied with the output) and the final norm.
        self.n_layers * (attn + ffn + 2 * self.hidden_size)
            + self.vocab_size * self.hidden_size
            + self.hidden_size
    }
}
