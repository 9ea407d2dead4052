//! Our GGUF-built tokenizer against reference ids from an independent implementation
//! (fixture made by scripts/make_tokenizer_fixture.py).

mod common;

use migserve_models::{GgufFile, IncrementalDecoder, Tokenizer};

fn tokenizer() -> Tokenizer {
    let file = GgufFile::open(&common::model_path()).expect("open model");
    Tokenizer::from_gguf(&file).expect("tokenizer from GGUF metadata")
}

fn cases() -> Vec<common::TokenizerCase> {
    common::tokenizer_cases(include_str!("fixtures/tokenizer_reference.json"))
}

#[test]
fn ids_match_the_reference_implementation() {
    let tok = tokenizer();
    let cases = cases();
    assert!(cases.len() >= 15);
    for case in &cases {
        let ids = tok.encode(&case.text, false).unwrap();
        assert_eq!(ids, case.ids, "ids differ for {:?}", case.text);
    }
}

#[test]
fn encode_then_decode_gives_back_the_input() {
    let tok = tokenizer();
    for case in &cases() {
        let ids = tok.encode(&case.text, false).unwrap();
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            case.text,
            "round trip of {:?}",
            case.text
        );
    }
}

#[test]
fn special_ids_come_from_metadata() {
    let tok = tokenizer();
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), &[2]);
    assert_eq!(tok.token_text(2), Some("<|im_end|>"));
    // add_bos_token is false for this model: no BOS even when asked.
    assert_eq!(
        tok.encode("Hi", true).unwrap(),
        tok.encode("Hi", false).unwrap()
    );
}

#[test]
fn incremental_decoding_never_splits_a_character_and_equals_full_decode() {
    let tok = tokenizer();
    for case in &cases() {
        let ids = tok.encode(&case.text, false).unwrap();
        let mut decoder = IncrementalDecoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            if let Some(piece) = decoder.push(&tok, id).unwrap() {
                assert!(
                    !piece.contains('\u{FFFD}'),
                    "piece with a broken character for {:?}",
                    case.text
                );
                streamed.push_str(&piece);
            }
        }
        if let Some(rest) = decoder.flush(&tok).unwrap() {
            streamed.push_str(&rest);
        }
        assert_eq!(
            streamed,
            tok.decode(&ids, true).unwrap(),
            "stream of {:?}",
            case.text
        );
    }
}
