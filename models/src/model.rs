//! A model (GGUF file or Hugging Face directory) opened as a whole: configuration, weights, tokenizer and chat template.

use std::path::Path;

use candle_core::Device;

use crate::chat::{ChatMessage, ChatTemplate};
use crate::config::ModelConfig;
use crate::decoder::Decoder;
use crate::error::{ModelError, Result};
use crate::source::ModelSource;
use crate::tokenizer::Tokenizer;
use crate::weight_format::WeightFormat;

/// Everything needed to turn text into text with one model.
pub struct Model {
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
}

impl Model {
    /// Opens a GGUF file or a Hugging Face directory and loads it onto `device`. Every size
    /// comes from the model's own metadata.
    pub fn load(path: &Path, format: WeightFormat, device: &Device) -> Result<Self> {
        let mut source = ModelSource::open(path)?;
        source.check_format(format)?;
        let config = source.config()?;
        // The tokenizer is built on a thread of its own while the weights load (a
        // 262,144-token SentencePiece vocabulary takes most of a second): a model loaded on
        // demand answers that much sooner.
        std::thread::scope(|scope| {
            let text = scope.spawn(|| -> Result<(Tokenizer, ChatTemplate)> {
                let source = ModelSource::open(path)?;
                let tokenizer = source.tokenizer()?;
                let chat_template = source.chat_template(&tokenizer)?;
                Ok((tokenizer, chat_template))
            });
            let decoder =
                source.with_tensors(|tensors| Decoder::load(tensors, config, format, device));
            let text = text.join().map_err(|_| {
                ModelError::Tokenizer("the thread building the tokenizer panicked".into())
            })?;
            let decoder = decoder?;
            let (tokenizer, chat_template) = text?;
            Ok(Self {
                decoder,
                tokenizer,
                chat_template,
            })
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        self.decoder.config()
    }

    /// Token ids for a plain prompt (a BOS is added when the model wants one).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Err(ModelError::InvalidInput("the prompt is empty".into()));
        }
        let ids = self.tokenizer.encode(text, true)?;
        if ids.is_empty() {
            return Err(ModelError::InvalidInput(
                "the prompt encodes to no tokens".into(),
            ));
        }
        Ok(ids)
    }

    /// Token ids for a conversation rendered through the chat template, ready for the reply.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let text = self.chat_template.render(messages, true)?;
        self.tokenizer.encode(&text, false)
    }
}
