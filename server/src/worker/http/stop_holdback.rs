//! Streaming text to OpenAI clients without ever showing a stop sequence: text that could be
//! the start of one is held back until the next token shows whether it is.

/// Holds back the tail of the generated text that could begin a stop sequence.
#[derive(Debug, Default)]
pub struct StopHoldBack {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopHoldBack {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Default::default()
        }
    }

    /// Feeds the next token's text; returns the text that can be shown now.
    pub fn push(&mut self, text: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.pending.push_str(text);
        if let Some(cut) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            // A whole stop sequence: show what precedes it, never what follows.
            self.stopped = true;
            let shown = self.pending[..cut].to_string();
            self.pending.clear();
            return shown;
        }
        let hold = self.held_suffix();
        let shown: String = self.pending.drain(..self.pending.len() - hold).collect();
        shown
    }

    /// At the end of generation: the text still held, unless generation ended on a stop
    /// sequence (then the held text was its start).
    pub fn finish(&mut self, ended_on_stop: bool) -> String {
        if self.stopped || ended_on_stop {
            self.pending.clear();
            return String::new();
        }
        std::mem::take(&mut self.pending)
    }

    /// Bytes at the end of `pending` that are a proper prefix of some stop sequence (on a
    /// character boundary).
    fn held_suffix(&self) -> usize {
        let p = &self.pending;
        p.char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &p[i..];
                self.stops
                    .iter()
                    .any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .map_or(0, |i| p.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], tokens: &[&str], ended_on_stop: bool) -> (Vec<String>, String) {
        let mut h = StopHoldBack::new(stops.iter().map(|s| s.to_string()).collect());
        let shown: Vec<String> = tokens.iter().map(|t| h.push(t)).collect();
        let last = h.finish(ended_on_stop);
        (shown, last)
    }

    #[test]
    fn a_stop_sequence_split_over_tokens_is_never_shown() {
        let (shown, last) = run(&["END"], &["Hello", " E", "N", "D"], true);
        assert_eq!(shown, ["Hello", " ", "", ""]);
        assert_eq!(last, "");
    }

    #[test]
    fn held_text_that_turns_out_not_to_be_a_stop_is_released() {
        let (shown, last) = run(&["\n\n"], &["a", "\n", "b", "\n"], false);
        assert_eq!(shown, ["a", "", "\nb", ""]);
        assert_eq!(last, "\n", "the end releases what was held");
    }

    #[test]
    fn text_after_a_stop_inside_one_token_is_dropped() {
        let (shown, last) = run(&["###"], &["x ### y", "more"], true);
        assert_eq!(shown, ["x ", ""]);
        assert_eq!(last, "");
    }

    #[test]
    fn without_stops_everything_passes_and_unicode_is_respected() {
        let (shown, last) = run(&[], &["é", "ü"], false);
        assert_eq!(shown, ["é", "ü"]);
        assert_eq!(last, "");
        let (shown, _) = run(&["éx"], &["aé"], false);
        assert_eq!(shown, ["a"]);
    }
}
