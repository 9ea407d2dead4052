//! Output processing for one sequence, in one place: each sampled token becomes text (never
//! half a UTF-8 character), stop sequences are found (and kept out of the visible text), and
//! the finish is decided (eos, stop sequence, length). At an eos or length finish the
//! decoder's held bytes are flushed, so the texts of the tokens add up to what the tokens
//! decode to; at a stop sequence the text ends with the stop.

pub mod stop;

use migserve_models::{IncrementalDecoder, Tokenizer};

use crate::event::FinishReason;
use stop::StopMatcher;

/// What one token adds to the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOutput {
    /// The text it completes (stop sequences included).
    pub text: String,
    /// The text that can be shown where stop sequences must not be.
    pub visible: String,
    /// Whether it is an end-of-sequence token.
    pub special: bool,
    /// Set when the sequence ends with this token.
    pub finish: Option<FinishReason>,
}

/// The output state of one sequence.
#[derive(Debug)]
pub struct OutputProcessor {
    decoder: IncrementalDecoder,
    stops: StopMatcher,
    generated: usize,
    max_new_tokens: usize,
    ignore_eos: bool,
}

impl OutputProcessor {
    /// A sequence that may generate `max_new_tokens`, stopping at `stops` (and at eos unless
    /// `ignore_eos`).
    pub fn new(max_new_tokens: usize, stops: Vec<String>, ignore_eos: bool) -> Self {
        Self {
            decoder: IncrementalDecoder::new(),
            stops: StopMatcher::new(stops),
            generated: 0,
            max_new_tokens,
            ignore_eos,
        }
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Takes the next sampled token. `end` is a finish the caller knows this token brings
    /// (the model's context is full: [`FinishReason::Length`]; the grammar is complete:
    /// [`FinishReason::GrammarComplete`]); a stop sequence, then a complete grammar, then
    /// the length limit decide the reason.
    pub fn push(
        &mut self,
        tokenizer: &Tokenizer,
        token: u32,
        end: Option<FinishReason>,
    ) -> migserve_models::Result<TokenOutput> {
        self.generated += 1;
        let special = tokenizer.eos_ids().contains(&token);
        let mut out = TokenOutput {
            text: String::new(),
            visible: String::new(),
            special,
            finish: None,
        };
        if special && !self.ignore_eos {
            out.finish = Some(FinishReason::EosToken);
        } else {
            if let Some(piece) = self.decoder.push(tokenizer, token)? {
                out.visible = self.stops.push(&piece);
                out.text = piece;
            }
            if self.stops.stopped() {
                out.finish = Some(FinishReason::StopSequence);
            } else if end == Some(FinishReason::GrammarComplete) {
                out.finish = end;
            } else if self.generated >= self.max_new_tokens || end == Some(FinishReason::Length) {
                out.finish = Some(FinishReason::Length);
            }
        }
        if out.finish.is_some_and(|f| f != FinishReason::StopSequence) {
            self.flush(tokenizer, &mut out)?;
        }
        Ok(out)
    }

    /// At a finish other than a stop sequence: the bytes the decoder still holds (an
    /// unfinished character, decoded lossily) and the text held back as a possible stop.
    fn flush(
        &mut self,
        tokenizer: &Tokenizer,
        out: &mut TokenOutput,
    ) -> migserve_models::Result<()> {
        if let Some(rest) = self.decoder.flush(tokenizer)? {
            out.visible.push_str(&self.stops.push(&rest));
            out.text.push_str(&rest);
            if self.stops.stopped() {
                out.finish = Some(FinishReason::StopSequence);
                return Ok(());
            }
        }
        out.visible.push_str(&self.stops.finish(false));
        Ok(())
    }
}
