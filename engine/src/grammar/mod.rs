//! Constrained decoding: output that a JSON schema, a regular expression, a Lark grammar or a
//! list of choices accepts, whatever the model would rather write. `llguidance` compiles the
//! grammar against the tokenizer's token bytes; per sequence a [`Constraint`] says which
//! tokens may come next (a mask applied to the logits before sampling) and follows the tokens
//! sampled. An invalid grammar is refused when the request is submitted, with the parser's
//! message.

use std::sync::Arc;

use llguidance::api::{GrammarWithLexer, TopLevelGrammar};
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use migserve_models::{Tokenizer, SPECIAL_TOKEN_MARKER};
use serde_json::{json, Value};

use crate::error::{EngineError, Field};

pub(crate) mod mask_worker;

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI `response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON that validates against this schema.
    JsonSchema(Value),
    /// Text the regular expression (Rust `regex` syntax) matches as a whole.
    Regex(String),
    /// Text of a Lark grammar (llguidance's dialect: `start: ...`, `%json {schema}` inline).
    Lark(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
}

impl Grammar {
    /// The grammar's name in messages (`json_schema`, `regex`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Grammar::JsonObject => "json_object",
            Grammar::JsonSchema(_) => "json_schema",
            Grammar::Regex(_) => "regex",
            Grammar::Lark(_) => "grammar",
            Grammar::Choice(_) => "choice",
        }
    }

    /// As llguidance's grammar; JSON without free whitespace unless the schema's own
    /// `x-guidance` says otherwise (a small model given free whitespace can spend every
    /// remaining token on newlines).
    fn to_llguidance(&self) -> Result<TopLevelGrammar, String> {
        Ok(match self {
            Grammar::JsonObject => json_grammar(json!({"type": "object"})),
            Grammar::JsonSchema(schema) => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err("a JSON schema is an object (or true/false)".into());
                }
                json_grammar(schema.clone())
            }
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Grammar::Lark(text) => {
                if text.trim().is_empty() {
                    return Err("the grammar is empty".into());
                }
                TopLevelGrammar::from_lark(text.clone())
            }
            Grammar::Choice(choices) => {
                if choices.is_empty() {
                    return Err("the list of choices is empty".into());
                }
                if choices.iter().any(String::is_empty) {
                    return Err("a choice cannot be empty".into());
                }
                TopLevelGrammar::from_lark(choice_lark(choices))
            }
        })
    }
}

/// `schema` with the JSON compile options we use when it has none of its own (an
/// `x-guidance` object): separators with one space (as `json.dumps` writes them), no free
/// whitespace. For schemas embedded in Lark grammars (`%json`) too.
pub fn compact_json(mut schema: Value) -> Value {
    if let Some(map) = schema.as_object_mut() {
        map.entry("x-guidance").or_insert_with(
            || json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

fn json_grammar(schema: Value) -> TopLevelGrammar {
    TopLevelGrammar::from_grammar(GrammarWithLexer::from_json_schema(compact_json(schema)))
}

/// A Lark rule matching exactly one of `choices` (each a JSON-quoted literal, which Lark's
/// string syntax reads back as the same text).
pub fn choice_lark(choices: &[String]) -> String {
    let alternatives: Vec<String> = choices
        .iter()
        .map(|c| serde_json::to_string(c).unwrap_or_default())
        .collect();
    format!("start: {}", alternatives.join(" | "))
}

/// Compiles grammars for one model's tokenizer (built once per engine: the token trie).
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler").finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    /// The compiler for `tokenizer`'s tokens, over the model's `vocab_size` ids.
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize) -> Result<Self, EngineError> {
        let mut words = tokenizer.token_bytes(vocab_size);
        // Ids the tokenizer lacks get a special name no text can spell, so none is allowed.
        for (id, w) in words.iter_mut().enumerate() {
            if w.is_empty() {
                *w = [&[SPECIAL_TOKEN_MARKER][..], format!("<[{id}]>").as_bytes()].concat();
            }
        }
        let eos = tokenizer.eos_ids();
        let info = TokRxInfo {
            vocab_size: words.len() as u32,
            tok_eos: eos.first().copied().unwrap_or(0),
            tok_bos: tokenizer.bos_id(),
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: None,
        };
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eos);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Generation(format!("grammar support: {e}")))?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// A fresh constraint for `grammar`; an invalid one is a validation error with the
    /// parser's message.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, EngineError> {
        let invalid = |e: String| {
            EngineError::invalid(
                Field::Grammar,
                format!("invalid {} grammar: {e}", grammar.kind()),
            )
        };
        let top = grammar.to_llguidance().map_err(invalid)?;
        let parser = self
            .factory
            .create_parser(top)
            .map_err(|e| invalid(first_line(&e.to_string())))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(invalid(first_line(&e)));
        }
        Ok(Constraint { matcher })
    }
}

/// The message without the parser's dump of its state (llguidance appends it after a blank
/// line).
fn first_line(message: &str) -> String {
    message
        .split("\n\n")
        .next()
        .unwrap_or(message)
        .trim()
        .to_string()
}

/// One sequence's constraint: which tokens may come next, and the tokens taken so far.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("finished", &self.matcher.is_stopped())
            .finish()
    }
}

/// The tokens a constraint allows next.
#[derive(Debug, Clone)]
pub struct TokenMask(SimpleVob);

impl TokenMask {
    /// Whether `token` is allowed.
    pub fn allows(&self, token: u32) -> bool {
        (token as usize) < self.0.len() && self.0.is_allowed(token)
    }

    /// How many tokens are allowed.
    pub fn count(&self) -> usize {
        self.0.num_set()
    }

    /// One bit per token (1: allowed), 32 per word, the lowest bit first.
    pub fn words(&self) -> &[u32] {
        self.0.as_slice()
    }
}

impl Constraint {
    /// The tokens that may come next (only end-of-sequence tokens once the grammar is
    /// complete).
    pub fn mask(&mut self) -> Result<TokenMask, String> {
        self.matcher
            .compute_mask_or_eos()
            .map(TokenMask)
            .map_err(|e| first_line(&e.to_string()))
    }

    /// Takes the sampled `token`.
    pub fn commit(&mut self, token: u32) -> Result<(), String> {
        self.matcher
            .consume_token(token)
            .map_err(|e| first_line(&e.to_string()))
    }

    /// Whether the grammar is complete and allows nothing more.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}
