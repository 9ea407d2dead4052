//! Constrained decoding's parts with the real tokenizers: each token's bytes (against
//! llguidance's own reading of a tokenizer.json, and against the tokenizer's decoding), and
//! grammars compiled, refused with the parser's message, and walked token by token.

use migserve_engine::{EngineError, Grammar, GrammarCompiler};
use migserve_models::hf::HfDirectory;
use migserve_models::{GgufFile, Tokenizer, SPECIAL_TOKEN_MARKER};
use serde_json::json;

#[path = "../../models/tests/common/mod.rs"]
mod files;

const TEXTS: [&str; 6] = [
    "Hello, world!",
    "{\"name\": \"Ada\", \"age\": 36}\n",
    "  indented\n\ttabs and trailing  ",
    "naïve café — 東京 🚀",
    "numbers 1234567890 and symbols <>[]{}",
    "a\n\nb",
];

fn gguf_tokenizer(path: &std::path::Path) -> Tokenizer {
    Tokenizer::from_gguf(&GgufFile::open(path).expect("GGUF")).expect("tokenizer")
}

#[test]
fn token_bytes_agree_with_llguidances_reading_of_tokenizer_json() {
    for name in ["smollm2-135m", "gemma3-270m"] {
        let dir = files::hf_dir(name);
        let hf = HfDirectory::open(&dir).expect("HF directory");
        let ours = Tokenizer::from_hf_dir(&hf).expect("tokenizer");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
                .unwrap();
        let theirs = llguidance::token_bytes_from_tokenizer_json(&json).expect("llguidance");
        let mine = ours.token_bytes(theirs.len());
        let differ: Vec<usize> = (0..theirs.len())
            .filter(|i| mine[*i] != theirs[*i])
            .collect();
        assert!(
            differ.is_empty(),
            "{name}: {} of {} tokens differ, first {:?}: ours {:?}, llguidance {:?}",
            differ.len(),
            theirs.len(),
            differ.first(),
            differ
                .first()
                .map(|i| String::from_utf8_lossy(&mine[*i]).to_string()),
            differ
                .first()
                .map(|i| String::from_utf8_lossy(&theirs[*i]).to_string()),
        );
    }
}

#[test]
fn token_bytes_add_up_to_the_decoded_text() {
    for path in [files::model_path(), files::gemma_path()] {
        let tok = gguf_tokenizer(&path);
        let bytes = tok.token_bytes(tok.vocab_size());
        for text in TEXTS {
            let ids = tok.encode(text, false).unwrap();
            let joined: Vec<u8> = ids
                .iter()
                .flat_map(|i| bytes[*i as usize].clone())
                .collect();
            let decoded = tok.decode(&ids, false).unwrap();
            // SentencePiece writes the space it put before the text; decoding drops it.
            let joined = String::from_utf8(joined).expect("UTF-8");
            assert!(
                joined == decoded || joined.strip_prefix(' ') == Some(decoded.as_str()),
                "{}: {text:?}: token bytes {joined:?}, decoded {decoded:?}",
                path.display()
            );
        }
        for &eos in tok.eos_ids() {
            assert_eq!(bytes[eos as usize].first(), Some(&SPECIAL_TOKEN_MARKER));
        }
    }
}

fn compiler() -> (Tokenizer, GrammarCompiler) {
    let tok = gguf_tokenizer(&files::model_path());
    let compiler = GrammarCompiler::new(&tok, tok.vocab_size()).expect("compiler");
    (tok, compiler)
}

fn refusal(compiler: &GrammarCompiler, grammar: Grammar) -> String {
    match compiler.compile(&grammar) {
        Err(EngineError::Validation(m)) => m.reason,
        Err(other) => panic!("{grammar:?}: not a validation error: {other:?}"),
        Ok(_) => panic!("{grammar:?} was accepted"),
    }
}

#[test]
fn bad_grammars_are_refused_with_the_parsers_message() {
    let (_, c) = compiler();
    let m = refusal(&c, Grammar::Regex("(unclosed".into()));
    assert!(m.starts_with("invalid regex grammar: "), "{m}");
    assert!(m.len() > "invalid regex grammar: ".len() + 5, "{m}");
    let m = refusal(&c, Grammar::JsonSchema(json!({"type": "nonsense"})));
    assert!(m.contains("json_schema") && m.contains("nonsense"), "{m}");
    let m = refusal(&c, Grammar::JsonSchema(json!([1, 2])));
    assert!(m.contains("object"), "{m}");
    let m = refusal(&c, Grammar::Lark("start: undefined_rule".into()));
    assert!(m.contains("undefined_rule"), "{m}");
    let m = refusal(&c, Grammar::Lark("  ".into()));
    assert!(m.contains("empty"), "{m}");
    let m = refusal(&c, Grammar::Choice(vec![]));
    assert!(m.contains("empty"), "{m}");
    let m = refusal(
        &c,
        Grammar::JsonSchema(json!({"type": "integer", "minimum": 5, "maximum": 1})),
    );
    assert!(m.contains("json_schema"), "{m}");
}

/// Feeds `text`'s tokens to a fresh constraint: every token must be allowed, in turn.
fn walk(
    c: &GrammarCompiler,
    tok: &Tokenizer,
    grammar: &Grammar,
    text: &str,
) -> Result<bool, String> {
    let mut constraint = c.compile(grammar).map_err(|e| e.to_string())?;
    for id in tok.encode(text, false).unwrap() {
        let mask = constraint.mask()?;
        if !mask.allows(id) {
            return Err(format!(
                "token {id} ({:?}) refused",
                tok.decode(&[id], false)
            ));
        }
        constraint.commit(id)?;
    }
    Ok(constraint.is_finished())
}

#[test]
fn a_constraint_allows_exactly_what_its_grammar_accepts() {
    let (tok, c) = compiler();
    let schema = Grammar::JsonSchema(json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": false
    }));
    assert_eq!(
        walk(&c, &tok, &schema, "{\"name\": \"Ada\", \"age\": 36}"),
        Ok(true)
    );
    assert!(walk(&c, &tok, &schema, "{\"name\": 36").is_err());
    assert!(walk(&c, &tok, &schema, "{\"age\": 36, \"color\"").is_err());
    // Not complete yet: more may follow.
    assert_eq!(walk(&c, &tok, &schema, "{\"name\": \"Ad"), Ok(false));

    let choice = Grammar::Choice(vec![
        "positive".into(),
        "negative".into(),
        "say \"hi\"\n".into(),
    ]);
    assert_eq!(walk(&c, &tok, &choice, "negative"), Ok(true));
    assert_eq!(walk(&c, &tok, &choice, "say \"hi\"\n"), Ok(true));
    assert!(walk(&c, &tok, &choice, "neutral").is_err());

    let regex = Grammar::Regex(r"[0-9]{3}-[0-9]{4}".into());
    assert_eq!(walk(&c, &tok, &regex, "555-1234"), Ok(true));
    assert!(walk(&c, &tok, &regex, "555-12a").is_err());

    // No free whitespace in JSON, also inside a Lark grammar's `%json` with our options.
    assert!(walk(&c, &tok, &schema, "{\"name\":  \"Ada\"").is_err());
    let embedded = Grammar::Lark(format!(
        "start: \"call \" args\nargs: %json {}",
        migserve_engine::grammar::compact_json(json!({"type": "object"}))
    ));
    assert_eq!(walk(&c, &tok, &embedded, "call {\"a\": 1}"), Ok(true));
    assert!(walk(&c, &tok, &embedded, "call {\"a\":  1}").is_err());
    assert!(walk(&c, &tok, &embedded, "call {\"a\": 1,\n\"b\": 2}").is_err());

    let object = Grammar::JsonObject;
    assert_eq!(walk(&c, &tok, &object, "{\"a\": [1, 2]}"), Ok(true));
    assert!(walk(&c, &tok, &object, "[1]").is_err());

    // Once complete, only an end-of-sequence token is allowed.
    let mut done = c.compile(&choice).unwrap();
    for id in tok.encode("positive", false).unwrap() {
        done.commit(id).unwrap();
    }
    let mask = done.mask().unwrap();
    assert_eq!(mask.count(), 1);
    assert!(mask.allows(tok.eos_ids()[0]));
}
