//! Hugging Face model directories: `config.json`, safetensors weights (one file or shards with
//! an index), `tokenizer.json`, `tokenizer_config.json` (chat template, special tokens, or a
//! `chat_template.jinja` file) and `generation_config.json` (eos ids).

pub mod config;
pub mod json;
pub mod names;
pub mod safetensors;

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::tokenizer::TOKENIZER_CONFIG_FILE;
use crate::weights::{RawTensor, TensorSource};
use config::HfConfig;
use json::JsonFile;
use safetensors::SafetensorsIndex;

/// The file naming the architecture and sizes.
pub const CONFIG_FILE: &str = "config.json";

/// An opened Hugging Face directory: its configuration and the headers of its weights.
#[derive(Debug, Clone)]
pub struct HfDirectory {
    dir: PathBuf,
    config: HfConfig,
    index: SafetensorsIndex,
    /// `tokenizer_config.json`, read on first use (the tokenizer and the chat template both
    /// need it; placement needs neither).
    tokenizer_config: OnceCell<Option<JsonFile>>,
}

impl HfDirectory {
    /// Reads `config.json` and the safetensors headers of `dir` (no weights are loaded).
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let file = JsonFile::read(&config_path)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let config = HfConfig::parse(&file, &name)?;
        let index = SafetensorsIndex::open(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            index,
            tokenizer_config: OnceCell::new(),
        })
    }

    /// `tokenizer_config.json`, when the directory has one.
    pub fn tokenizer_config(&self) -> Result<Option<&JsonFile>> {
        if let Some(read) = self.tokenizer_config.get() {
            return Ok(read.as_ref());
        }
        let read = JsonFile::read_optional(&self.dir.join(TOKENIZER_CONFIG_FILE))?;
        Ok(self.tokenizer_config.get_or_init(|| read).as_ref())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config.config
    }

    /// `config.json` as read, with its token ids.
    pub fn hf_config(&self) -> &HfConfig {
        &self.config
    }

    /// Number of elements of all weight tensors.
    pub fn parameters(&self) -> usize {
        self.index.parameters()
    }

    /// Bytes of all weight files.
    pub fn file_bytes(&self) -> u64 {
        self.index.file_bytes
    }

    /// Memory-maps the weight files, ready to be read tensor by tensor.
    pub fn weights(&self) -> Result<HfWeights<'_>> {
        // SAFETY: the files are mapped read-only; like every memory-mapped loader, this
        // assumes no other process truncates them while the model loads.
        let mmap = unsafe { MmapedSafetensors::multi(&self.index.files) }.map_err(|e| {
            ModelError::HfFile {
                path: self.dir.clone(),
                reason: format!("cannot map the safetensors files: {e}"),
            }
        })?;
        let rope_factors = self.config.llama3_rope.map(|r| {
            let cfg = self.config();
            r.factors(cfg.head_dim, cfg.rope_theta)
        });
        Ok(HfWeights {
            dir: self,
            mmap,
            rope_factors,
        })
    }
}

/// The weights of an [`HfDirectory`], answering for GGUF tensor names.
pub struct HfWeights<'a> {
    dir: &'a HfDirectory,
    mmap: MmapedSafetensors,
    /// Llama 3 RoPE factors from `config.json`, served as GGUF's `rope_freqs.weight`.
    rope_factors: Option<Vec<f32>>,
}

impl HfWeights<'_> {
    /// The name this directory stores a GGUF-named tensor under, if it has it.
    fn stored_name(&self, gguf_name: &str) -> Option<String> {
        let cfg = self.dir.config();
        if gguf_name == "output.weight" && cfg.tied_embeddings {
            // Tied: transformers ignores a stored `lm_head.weight`; so do we.
            return None;
        }
        let name = names::hf_name(gguf_name, cfg.family)?;
        let tensors = &self.dir.index.tensors;
        if tensors.contains_key(&name) {
            return Some(name);
        }
        // Checkpoints saved from the bare model have no `model.` prefix.
        name.strip_prefix("model.")
            .filter(|n| tensors.contains_key(*n))
            .map(str::to_string)
    }
}

impl TensorSource for HfWeights<'_> {
    fn has(&self, name: &str) -> bool {
        (name == names::ROPE_FREQS && self.rope_factors.is_some())
            || self.stored_name(name).is_some()
    }

    fn tensor(&mut self, name: &str) -> Result<RawTensor> {
        if name == names::ROPE_FREQS {
            if let Some(f) = &self.rope_factors {
                return Ok(RawTensor::Dense(Tensor::new(f.as_slice(), &Device::Cpu)?));
            }
        }
        let stored = self
            .stored_name(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: self.display_name(name),
                source_name: format!("the safetensors files of {}", self.dir.dir.display()),
            })?;
        let t = self
            .mmap
            .load(&stored, &Device::Cpu)
            .map_err(|e| ModelError::HfFile {
                path: self.dir.dir.clone(),
                reason: format!("tensor `{stored}`: {e}"),
            })?;
        Ok(RawTensor::Dense(t))
    }

    fn display_name(&self, name: &str) -> String {
        self.stored_name(name)
            .or_else(|| names::hf_name(name, self.dir.config().family))
            .unwrap_or_else(|| name.to_string())
    }
}
