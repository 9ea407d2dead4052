//! A `tokenizers` tokenizer built only from GGUF metadata (GPT-2 byte-level BPE or
//! SentencePiece; no tokenizer.json exists offline),
//! and incremental detokenization for streaming.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

mod bytes;
pub use bytes::SPECIAL_TOKEN_MARKER;
mod hf;
pub use hf::{GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE};
mod sentencepiece;

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`, ...).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of user-defined tokens, matched whole in the input like control tokens.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Llama-3 style split: contractions, letters, numbers in groups of up to three, punctuation, spaces.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 style split: as Llama-3, but every digit alone.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The model's tokenizer plus the special ids generation needs.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    /// Special tokens put before a plain prompt (a BOS when the model wants one).
    prefix: Vec<u32>,
    /// Special tokens put after a plain prompt (an EOS for `add_eos_token` models).
    suffix: Vec<u32>,
    tokens: Vec<String>,
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata: GPT-2 byte-level BPE
    /// (`tokenizer.ggml.model = gpt2`) or SentencePiece (`llama`).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let model = file.string("tokenizer.ggml.model")?;
        let tokens = string_array(file, "tokenizer.ggml.tokens")?;
        let token_types = match file.optional("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| ModelError::Tokenizer(e.to_string()))?
                .iter()
                .map(|t| t.to_i32().map_err(|e| ModelError::Tokenizer(e.to_string())))
                .collect::<Result<Vec<_>>>()?,
            None => vec![1; tokens.len()],
        };
        let id = |key: &str| file.optional(key).and_then(|v| v.to_u32().ok());
        let flag = |key: &str| file.optional(key).and_then(|v| v.to_bool().ok());
        let mut inner = match model {
            "gpt2" => byte_level_bpe(file, &tokens)?,
            "llama" => {
                let unk = id("tokenizer.ggml.unknown_token_id")
                    .and_then(|i| tokens.get(i as usize))
                    .cloned();
                let add_space_prefix = flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                sentencepiece::build(file, &tokens, unk, add_space_prefix)?
            }
            other => {
                return Err(ModelError::Tokenizer(format!(
                    "tokenizer model `{other}` is not supported (supported: gpt2 byte-level \
                     BPE, llama SentencePiece)"
                )))
            }
        };
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL || **t == TOKEN_TYPE_USER_DEFINED)
            .map(|(tok, t)| AddedToken::from(tok.clone(), *t == TOKEN_TYPE_CONTROL))
            .collect();
        inner.add_special_tokens(&added);

        let bos_id = id("tokenizer.ggml.bos_token_id");
        let mut eos_ids: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
        eos_ids.extend(id("tokenizer.ggml.eot_token_id"));
        eos_ids.extend(id("tokenizer.ggml.eom_token_id"));
        // Gemma's turn end: a chat reply ends there even though the file's eos is `<eos>`.
        eos_ids.extend(
            tokens
                .iter()
                .position(|t| t == "<end_of_turn>")
                .map(|i| i as u32),
        );
        eos_ids.sort_unstable();
        eos_ids.dedup();
        // SentencePiece models add BOS unless told otherwise (llama.cpp's default too).
        let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama");
        let add_eos = flag("tokenizer.ggml.add_eos_token").unwrap_or(false);
        Ok(Self {
            inner,
            bos_id,
            eos_ids,
            prefix: bos_id.filter(|_| add_bos).into_iter().collect(),
            suffix: id("tokenizer.ggml.eos_token_id")
                .filter(|_| add_eos)
                .into_iter()
                .collect(),
            tokens,
        })
    }

    /// Encodes text. Control tokens in the text (`<|im_start|>`, `<start_of_turn>`) become
    /// their ids. With `add_special`, a BOS (and an EOS) is added when the model asks for one
    /// (GGUF `add_bos_token`; a tokenizer.json's post-processor); chat-templated text carries
    /// its own. A text that already starts with the BOS does not get a second one.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let body = enc.get_ids();
        let mut ids = Vec::with_capacity(body.len() + self.prefix.len() + self.suffix.len());
        if add_special {
            let already = !self.prefix.is_empty() && body.starts_with(&self.prefix);
            if !already {
                ids.extend_from_slice(&self.prefix);
            }
        }
        ids.extend_from_slice(body);
        if add_special {
            ids.extend_from_slice(&self.suffix);
        }
        Ok(ids)
    }

    /// Decodes ids to text; special tokens are dropped when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Tokens that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The text of a token id, as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}

/// GPT-2 style byte-level BPE from the file's vocabulary and merges.
fn byte_level_bpe(file: &GgufFile, tokens: &[String]) -> Result<tokenizers::Tokenizer> {
    let merges = string_array(file, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| ModelError::Tokenizer(format!("malformed merge `{m}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut vocab = Vocab::default();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.clone(), id as u32);
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| ModelError::Tokenizer(format!("building BPE: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let pre = file
        .optional("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str);
    inner.with_pre_tokenizer(Some(pre_tokenizer(pre.unwrap_or("gpt2"))?));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(inner)
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = |use_regex: bool| ByteLevel::new(false, true, use_regex).into();
    let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
        Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map(Into::into)
        .map_err(|e| ModelError::Tokenizer(format!("pre-tokenizer regex: {e}")))
    };
    Ok(match pre {
        "gpt2" | "default" => byte_level(true),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into(),
        "llama-bpe" | "llama3" | "smaug-bpe" => {
            Sequence::new(vec![split(LLAMA3_SPLIT)?, byte_level(false)]).into()
        }
        "qwen2" => Sequence::new(vec![split(QWEN2_SPLIT)?, byte_level(false)]).into(),
        other => {
            return Err(ModelError::Tokenizer(format!(
            "pre-tokenizer `{other}` is not supported (supported: gpt2, smollm, llama-bpe, qwen2)"
        )))
        }
    })
}

pub(crate) fn string_array(file: &GgufFile, key: &str) -> Result<Vec<String>> {
    let bad = |reason: String| ModelError::Metadata {
        key: key.to_string(),
        reason,
    };
    file.value(key)?
        .to_vec()
        .map_err(|e| bad(e.to_string()))?
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| bad(e.to_string())))
        .collect()
}

/// Turns a stream of token ids into text pieces without ever splitting a UTF-8 character:
/// text is released only once the bytes decoded so far form complete characters.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    /// A decoder with no tokens yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token; returns the new text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], true)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let piece = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(Some(piece))
        } else {
            Ok(None)
        }
    }

    /// Text held back so far (an unfinished character at the end of generation), decoded lossily.
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>> {
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], true)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        if full.len() > prefix.len() && full.is_char_boundary(prefix.len()) {
            Ok(Some(full[prefix.len()..].to_string()))
        } else {
            Ok(None)
        }
    }
}
