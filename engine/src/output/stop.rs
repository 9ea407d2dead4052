//! Stop sequences: finding them in generated text that arrives token by token, and releasing
//! text without ever showing one: text that could be the start of a stop sequence is held
//! back until the next token shows whether it is.

/// Watches the generated text for stop sequences, holding back the tail that could begin one.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (empty ones are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Default::default()
        }
    }

    /// Whether a whole stop sequence has appeared.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds the next token's text; returns the text that can be shown now. Once a stop
    /// sequence has appeared ([`StopMatcher::stopped`]), nothing more is released.
    pub fn push(&mut self, text: &str) -> String {
        if self.stopped {
            return String::new();
        }
        if self.stops.is_empty() {
            return text.to_string();
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
        let mut h = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let shown: Vec<String> = tokens.iter().map(|t| h.push(t)).collect();
        let last = h.finish(ended_on_stop);
        (shown, last)
    }

    /// Whether `text`, fed as `text[..appended_from]` then the rest, stops on the second piece.
    fn stop_sequence_hit(text: &str, appended_from: usize, stops: &[String]) -> bool {
        let mut m = StopMatcher::new(stops.to_vec());
        m.push(&text[..appended_from]);
        let before = m.stopped();
        m.push(&text[appended_from..]);
        !before && m.stopped()
    }

    #[test]
    fn stop_sequences_match_across_token_boundaries() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert!(stop_sequence_hit("hello\n\n", 6, &stops));
        assert!(!stop_sequence_hit("the EN", 4, &stops));
        assert!(stop_sequence_hit("the END", 6, &stops));
        assert!(!stop_sequence_hit("nothing here", 8, &stops));
        assert!(
            stop_sequence_hit("é\n\n", 3, &stops),
            "multi-byte text before the window"
        );
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
