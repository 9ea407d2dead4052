//! A model on disk, in either form migserve reads: a GGUF file or a Hugging Face directory.

use std::path::Path;

use crate::chat::ChatTemplate;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::hf::HfDirectory;
use crate::tokenizer::Tokenizer;
use crate::weight_format::WeightFormat;
use crate::weights::TensorSource;

/// An opened model: its configuration is known, its weights not yet loaded.
pub enum ModelSource {
    Gguf(GgufFile),
    Hf(Box<HfDirectory>),
}

impl ModelSource {
    /// Opens `path`: a directory is read as a Hugging Face directory, a file as GGUF.
    pub fn open(path: &Path) -> Result<Self> {
        match path.is_dir() {
            true => HfDirectory::open(path).map(|d| Self::Hf(Box::new(d))),
            false => GgufFile::open(path).map(Self::Gguf),
        }
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> Result<ModelConfig> {
        match self {
            Self::Gguf(f) => ModelConfig::from_gguf(f),
            Self::Hf(d) => Ok(d.config().clone()),
        }
    }

    /// Builds the tokenizer.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match self {
            Self::Gguf(f) => Tokenizer::from_gguf(f),
            Self::Hf(d) => Tokenizer::from_hf_dir(d),
        }
    }

    /// The chat template, with `tokenizer`'s BOS and EOS texts for templates that use them.
    pub fn chat_template(&self, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
        let token = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i));
        let (bos, eos) = (
            token(tokenizer.bos_id()),
            token(tokenizer.eos_ids().first().copied()),
        );
        match self {
            Self::Gguf(f) => ChatTemplate::from_gguf(f, bos, eos),
            Self::Hf(d) => ChatTemplate::from_hf_dir(d, bos, eos),
        }
    }

    /// Refuses a weight format the source cannot give.
    pub fn check_format(&self, format: WeightFormat) -> Result<()> {
        match (self, format) {
            (Self::Hf(d), WeightFormat::Quantized) => Err(ModelError::InvalidInput(format!(
                "--weights quantized keeps a GGUF file's own quantized types; {} holds dense \
                 safetensors weights: use q8, bf16 or f32",
                d.dir().display()
            ))),
            _ => Ok(()),
        }
    }

    /// Bytes the weights take in `format`, from headers only (nothing is loaded).
    pub fn weight_bytes(&self, config: &ModelConfig, format: WeightFormat) -> u64 {
        match self {
            Self::Gguf(f) => {
                let size = std::fs::metadata(f.path()).map_or(0, |m| m.len());
                format.weight_bytes(config.parameter_count(), size)
            }
            Self::Hf(d) => format.weight_bytes(d.parameters(), d.file_bytes()),
        }
    }

    /// Reads the weights with `read` from whichever source this is.
    pub fn with_tensors<T>(
        &mut self,
        read: impl FnOnce(&mut dyn TensorSource) -> Result<T>,
    ) -> Result<T> {
        match self {
            Self::Gguf(f) => read(f),
            Self::Hf(d) => read(&mut d.weights()?),
        }
    }
}
