//! The tokenizer of a Hugging Face directory: `tokenizer.json` through the `tokenizers` crate,
//! special tokens from `tokenizer_config.json`, eos ids from `generation_config.json` and
//! `config.json`.

use serde_json::Value;

use super::Tokenizer;
use crate::error::{ModelError, Result};
use crate::hf::json::JsonFile;
use crate::hf::HfDirectory;

/// The tokenizer itself.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Special tokens and the chat template.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Generation defaults; its `eos_token_id` ends generation.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

impl Tokenizer {
    /// The tokenizer of the Hugging Face directory `hf`.
    pub fn from_hf_dir(hf: &HfDirectory) -> Result<Self> {
        let (dir, config) = (hf.dir(), hf.hf_config());
        let path = dir.join(TOKENIZER_FILE);
        if !path.is_file() {
            return Err(ModelError::HfFile {
                path,
                reason: "missing (a tokenizer.json is needed: SentencePiece tokenizer.model \
                         files alone are not read)"
                    .into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::HfFile {
            path: path.clone(),
            reason: format!("does not parse: {}", one_line(&e.to_string())),
        })?;
        let tok_config = hf.tokenizer_config()?;
        let generation = JsonFile::read_optional(&dir.join(GENERATION_CONFIG_FILE))?;

        let vocab = inner.get_vocab(true);
        let mut tokens = vec![String::new(); vocab.values().max().map_or(0, |m| *m as usize + 1)];
        for (text, id) in vocab {
            tokens[id as usize] = text;
        }
        let id_of = |file: &JsonFile, key: &str| -> Result<Option<u32>> {
            let Some(text) = file.get(key).and_then(token_content) else {
                return Ok(None);
            };
            inner.token_to_id(text).map(Some).ok_or_else(|| {
                file.error(key, format!("`{text}` is not a token of {TOKENIZER_FILE}"))
            })
        };
        let flag = |key: &str| -> Result<Option<bool>> {
            tok_config.map_or(Ok(None), |f| f.opt_bool(key))
        };

        let mut bos_id = match tok_config {
            Some(f) => id_of(f, "bos_token")?,
            None => None,
        };
        if bos_id.is_none() {
            bos_id = match &generation {
                Some(g) => g.ids("bos_token_id")?.first().copied(),
                None => None,
            }
            .or(config.bos_token_id);
        }
        let mut eos_ids = config.eos_token_ids.clone();
        if let Some(g) = &generation {
            eos_ids.extend(g.ids("eos_token_id")?);
        }
        let tokenizer_eos = match tok_config {
            Some(f) => id_of(f, "eos_token")?,
            None => None,
        };
        eos_ids.extend(tokenizer_eos);
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let vocab_size = config.config.vocab_size.max(tokens.len());
        if let Some(bad) = eos_ids
            .iter()
            .chain(&bos_id)
            .find(|i| **i as usize >= vocab_size)
        {
            return Err(ModelError::HfFile {
                path: dir.join(GENERATION_CONFIG_FILE),
                reason: format!("special token id {bad} is outside the vocabulary ({vocab_size})"),
            });
        }

        let (mut prefix, mut suffix) = post_processor_specials(&inner)?;
        // An explicit `add_bos_token` / `add_eos_token` wins over the post-processor.
        match (flag("add_bos_token")?, bos_id) {
            (Some(true), Some(bos)) if !prefix.contains(&bos) => prefix.insert(0, bos),
            (Some(false), Some(bos)) => prefix.retain(|i| *i != bos),
            _ => {}
        }
        let eos = tokenizer_eos.or(eos_ids.first().copied());
        match (flag("add_eos_token")?, eos) {
            (Some(true), Some(eos)) if !suffix.contains(&eos) => suffix.push(eos),
            (Some(false), Some(eos)) => suffix.retain(|i| *i != eos),
            _ => {}
        }
        Ok(Self {
            inner,
            bos_id,
            eos_ids,
            prefix,
            suffix,
            tokens,
        })
    }
}

/// The text of a special token in `tokenizer_config.json`: a string or `{"content": ...}`.
pub(crate) fn token_content(v: &Value) -> Option<&str> {
    v.as_str()
        .or_else(|| v.get("content").and_then(Value::as_str))
}

/// The special tokens the post-processor puts before and after a text.
fn post_processor_specials(inner: &tokenizers::Tokenizer) -> Result<(Vec<u32>, Vec<u32>)> {
    let probe = "a";
    let enc = |special: bool| {
        inner
            .encode(probe, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    };
    let (plain, with) = (enc(false)?, enc(true)?);
    let start =
        (0..=with.len().saturating_sub(plain.len())).find(|&s| with[s..].starts_with(&plain));
    Ok(match start {
        Some(s) if !plain.is_empty() => (with[..s].to_vec(), with[s + plain.len()..].to_vec()),
        _ => (Vec::new(), Vec::new()),
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
