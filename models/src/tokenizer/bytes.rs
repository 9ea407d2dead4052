//! Each token's bytes: what the token adds to the text, byte for byte, whatever the
//! tokenizer's way of spelling bytes in its vocabulary (GPT-2 byte-level characters,
//! SentencePiece's `▁` for a space and `<0xNN>` byte tokens). Constrained decoding matches
//! grammars against these bytes.

use std::collections::HashMap;

use tokenizers::DecoderWrapper;

use super::Tokenizer;

/// Marks a special (control) token's bytes, so that no text can spell it: `0xFF` is never a
/// byte of UTF-8 text.
pub const SPECIAL_TOKEN_MARKER: u8 = 0xFF;

/// SentencePiece's visible space.
const SP_SPACE: char = '\u{2581}';

/// The GPT-2 byte-level alphabet, inverted: the character that stands for each byte, back to
/// the byte. Printable Latin-1 bytes stand for themselves; the others (controls, space, the
/// gaps) are numbered from U+0100 in byte order.
fn byte_level_chars() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    let mut map = HashMap::with_capacity(256);
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
            next += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

/// Whether the decoder (or one in its sequence) undoes GPT-2's byte-level alphabet.
fn is_byte_level(decoder: Option<&DecoderWrapper>) -> bool {
    match decoder {
        Some(DecoderWrapper::ByteLevel(_)) => true,
        Some(DecoderWrapper::Sequence(s)) => {
            s.get_decoders().iter().any(|d| is_byte_level(Some(d)))
        }
        _ => false,
    }
}

/// The character SentencePiece-style vocabularies write for a space.
fn space_char(decoder: Option<&DecoderWrapper>) -> char {
    match decoder {
        Some(DecoderWrapper::Metaspace(m)) => m.get_replacement(),
        Some(DecoderWrapper::Sequence(s)) => s
            .get_decoders()
            .iter()
            .map(|d| space_char(Some(d)))
            .find(|c| *c != SP_SPACE)
            .unwrap_or(SP_SPACE),
        _ => SP_SPACE,
    }
}

/// `<0xNN>`: a byte-fallback token.
fn byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

impl Tokenizer {
    /// The bytes of every token id below `vocab_size` (the model's, which may exceed the
    /// tokenizer's): special tokens as [`SPECIAL_TOKEN_MARKER`] + their text, other added
    /// tokens as their text, vocabulary tokens as the bytes they decode to; ids the tokenizer
    /// does not have are empty.
    pub fn token_bytes(&self, vocab_size: usize) -> Vec<Vec<u8>> {
        let decoder = self.inner.get_decoder();
        let byte_level = is_byte_level(decoder);
        let space = space_char(decoder);
        let chars = byte_level_chars();
        let added = self.inner.get_added_tokens_decoder();
        let size = vocab_size.max(self.tokens.len());
        let mut out = Vec::with_capacity(size);
        for id in 0..size {
            if let Some(token) = added.get(&(id as u32)) {
                let mut bytes = Vec::with_capacity(token.content.len() + 1);
                if token.special {
                    bytes.push(SPECIAL_TOKEN_MARKER);
                }
                bytes.extend_from_slice(token.content.as_bytes());
                out.push(bytes);
                continue;
            }
            let text = self.tokens.get(id).map(String::as_str).unwrap_or_default();
            let bytes = if byte_level {
                let mapped: Option<Vec<u8>> =
                    text.chars().map(|c| chars.get(&c).copied()).collect();
                // A character outside the alphabet: the token is text as it stands.
                mapped.unwrap_or_else(|| text.as_bytes().to_vec())
            } else if let Some(b) = byte_token(text) {
                vec![b]
            } else {
                text.replace(space, " ").into_bytes()
            };
            out.push(bytes);
        }
        out.truncate(vocab_size);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_level_alphabet_is_a_bijection_on_bytes() {
        let chars = byte_level_chars();
        assert_eq!(chars.len(), 256);
        let mut bytes: Vec<u8> = chars.values().copied().collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        // GPT-2's space and newline.
        assert_eq!(chars[&'\u{120}'], b' ');
        assert_eq!(chars[&'\u{10A}'], b'\n');
        assert_eq!(chars[&'a'], b'a');
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(byte_token("<0x0A>"), Some(b'\n'));
        assert_eq!(byte_token("<0xE2>"), Some(0xE2));
        assert_eq!(byte_token("<0x0A"), None);
        assert_eq!(byte_token("<0xZZ>"), None);
        assert_eq!(byte_token("<0x1234>"), None);
    }
}
