//! SentencePiece BPE models (GGUF `tokenizer.ggml.model = llama`: Llama 2, TinyLlama,
//! Mistral, Gemma, Phi-3) as a `tokenizers` BPE model.
//!
//! These files carry a vocabulary with one score per piece and no merges. SentencePiece's BPE
//! repeatedly joins the adjacent pair whose joined piece is in the vocabulary with the highest
//! score; a `tokenizers` BPE whose merges are every split of every piece into two pieces,
//! ranked by the joined piece's score, does the same. Characters outside the vocabulary fall
//! back to their UTF-8 bytes as `<0xNN>` pieces; spaces are `▁`.

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::{NormalizerWrapper, Sequence as NormalizerSequence};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// SentencePiece's stand-in for a space.
const SPACE: &str = "\u{2581}";

/// The tokenizer of a SentencePiece vocabulary: `tokens` with the file's
/// `tokenizer.ggml.scores`; `unk` the unknown piece; with `add_space_prefix` a space is put
/// before the text (and after every special token), as SentencePiece does by default.
pub fn build(
    file: &GgufFile,
    tokens: &[String],
    unk: Option<String>,
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    let scores = scores(file, tokens.len())?;
    let merges = merges_by_score(tokens, &scores);
    let mut vocab = Vocab::default();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.clone(), id as u32);
    }
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder
        .build()
        .map_err(|e| ModelError::Tokenizer(format!("building the SentencePiece BPE: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let replace = |from: &str, to: &str| {
        Replace::new(from, to)
            .map_err(|e| ModelError::Tokenizer(format!("SentencePiece normalizer: {e}")))
    };
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        normalizers.push(Prepend::new(SPACE.into()).into());
    }
    normalizers.push(replace(" ", SPACE)?.into());
    inner.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    let decoders: Vec<DecoderWrapper> = vec![
        replace(SPACE, " ")?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    inner.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(inner)
}

fn scores(file: &GgufFile, n: usize) -> Result<Vec<f32>> {
    let key = "tokenizer.ggml.scores";
    let bad = |reason: String| ModelError::Metadata {
        key: key.into(),
        reason,
    };
    let scores = file
        .value(key)?
        .to_vec()
        .map_err(|e| bad(e.to_string()))?
        .iter()
        .map(|v| v.to_f32().map_err(|e| bad(e.to_string())))
        .collect::<Result<Vec<f32>>>()?;
    if scores.len() != n {
        return Err(bad(format!("{} scores for {n} tokens", scores.len())));
    }
    Ok(scores)
}

/// Every way to make a piece from two pieces, best joined piece first; among the splits of
/// one piece, the split whose halves score higher first.
fn merges_by_score(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // (joined piece, left, right)
    let mut merges: Vec<(usize, usize, usize)> = Vec::new();
    for (joined, piece) in tokens.iter().enumerate() {
        let start = merges.len();
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&l), Some(&r)) = (index.get(l), index.get(r)) {
                merges.push((joined, l, r));
            }
        }
        merges[start..].sort_by(|a, b| {
            let key = |m: &(usize, usize, usize)| (scores[m.1], scores[m.2]);
            key(b)
                .partial_cmp(&key(a))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    // Stable: pieces of equal score keep their vocabulary order.
    merges.sort_by(|a, b| {
        scores[b.0]
            .partial_cmp(&scores[a.0])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    merges
        .into_iter()
        .map(|(_, l, r)| (tokens[l].clone(), tokens[r].clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_are_ranked_by_the_joined_pieces_score() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -0.5, -2.0];
        let merges = merges_by_score(&tokens, &scores);
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(merges[0], pair("b", "c"));
        assert_eq!(merges[1], pair("a", "b"));
        // "abc" from "a"+"bc" (halves scoring 0 and -0.5) before "ab"+"c" (-1 and 0)? Both
        // are ranked after the better pieces.
        assert_eq!(merges.len(), 4);
        assert!(merges[2..].contains(&pair("a", "bc")) && merges[2..].contains(&pair("ab", "c")));
    }
}
