//! Log-probabilities in OpenAI's two shapes: chat's list of tokens with their alternatives,
//! and the legacy completions' parallel lists (with the prompt first under `echo`).

use std::collections::BTreeMap;

use migserve_engine::{PrefillLogprob, PromptToken, TokenEvent, TokenLogprob};

use crate::api::openai::{ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob};

fn top(t: &TokenLogprob) -> TopLogprob {
    TopLogprob {
        token: t.text.clone(),
        logprob: t.logprob,
        bytes: t.text.as_bytes().to_vec(),
    }
}

/// Chat `logprobs` of `tokens` (the end-of-sequence token, which adds no text, left out, as
/// OpenAI does).
pub fn chat(tokens: &[TokenEvent]) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .iter()
            .filter(|t| !t.special)
            .map(|t| ChatTokenLogprob {
                token: t.text.clone(),
                logprob: t.logprob,
                bytes: t.text.as_bytes().to_vec(),
                top_logprobs: t.top.iter().map(top).collect(),
            })
            .collect(),
    }
}

/// A completion choice built part by part (the whole answer at once, or a stream's chunks):
/// its text and, with `logprobs`, its tokens' entries, whose offsets count characters from
/// the choice's start.
#[derive(Debug, Default)]
pub struct CompletionBuilder {
    offset: usize,
}

/// The prompt as `echo` puts it before a completion: its text, and its tokens with their
/// log-probabilities (the first has none).
pub struct Echo<'a> {
    pub text: String,
    pub tokens: &'a [PromptToken],
    pub prefill: &'a [PrefillLogprob],
}

impl CompletionBuilder {
    /// The next part of the choice: `echo` first (only on the first part), then the
    /// generated `text` of `tokens`; log-probabilities too when `with_logprobs`.
    pub fn part(
        &mut self,
        echo: Option<Echo<'_>>,
        text: &str,
        tokens: &[TokenEvent],
        with_logprobs: bool,
    ) -> (String, Option<CompletionLogprobs>) {
        let mut shown = String::new();
        let mut lp = CompletionLogprobs::default();
        if let Some(echo) = echo {
            shown = echo.text;
            let tokens = if with_logprobs { echo.tokens } else { &[] };
            for (i, t) in tokens.iter().enumerate() {
                let p = echo.prefill.get(i);
                let logprob = p.and_then(|p| p.logprob);
                let alternatives = p.filter(|p| p.logprob.is_some()).map(|p| p.top.as_slice());
                self.push(&mut lp, &t.text, logprob, alternatives, t.id);
            }
        }
        shown.push_str(text);
        // The end-of-sequence token adds no text and is not listed.
        let tokens = if with_logprobs { tokens } else { &[] };
        for t in tokens.iter().filter(|t| !t.special) {
            self.push(&mut lp, &t.text, Some(t.logprob), Some(&t.top), t.id);
        }
        (shown, with_logprobs.then_some(lp))
    }

    fn push(
        &mut self,
        out: &mut CompletionLogprobs,
        text: &str,
        logprob: Option<f32>,
        alternatives: Option<&[TokenLogprob]>,
        chosen: u32,
    ) {
        out.tokens.push(text.to_string());
        out.token_logprobs.push(logprob);
        // Like vLLM: the most likely tokens, and the chosen one with them.
        out.top_logprobs.push(alternatives.map(|alts| {
            let mut map: BTreeMap<String, f32> =
                alts.iter().map(|a| (a.text.clone(), a.logprob)).collect();
            if let Some(lp) = logprob.filter(|_| !alts.iter().any(|a| a.id == chosen)) {
                map.insert(text.to_string(), lp);
            }
            map
        }));
        out.text_offset.push(self.offset);
        self.offset += text.chars().count();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: u32, text: &str, logprob: f32, top: Vec<(u32, &str, f32)>) -> TokenEvent {
        TokenEvent {
            id,
            text: text.into(),
            visible: text.into(),
            logprob,
            top: top
                .into_iter()
                .map(|(id, text, logprob)| TokenLogprob {
                    id,
                    text: text.into(),
                    logprob,
                    special: false,
                })
                .collect(),
            special: false,
        }
    }

    #[test]
    fn completions_lists_are_parallel_and_hold_the_chosen_token() {
        let prompt = [
            PromptToken {
                id: 1,
                text: "Hi".into(),
            },
            PromptToken {
                id: 2,
                text: " there".into(),
            },
        ];
        let prefill = [
            PrefillLogprob {
                id: 1,
                logprob: None,
                top: vec![],
            },
            PrefillLogprob {
                id: 2,
                logprob: Some(-2.0),
                top: vec![TokenLogprob {
                    id: 9,
                    text: "!".into(),
                    logprob: -0.5,
                    special: false,
                }],
            },
        ];
        let echo = Echo {
            text: "Hi there".into(),
            tokens: &prompt,
            prefill: &prefill,
        };
        let generated = [token(3, " you", -0.1, vec![(3, " you", -0.1)])];
        let (text, lp) = CompletionBuilder::default().part(Some(echo), " you", &generated, true);
        assert_eq!(text, "Hi there you");
        let lp = lp.unwrap();
        assert_eq!(lp.tokens, ["Hi", " there", " you"]);
        assert_eq!(lp.token_logprobs, [None, Some(-2.0), Some(-0.1)]);
        assert_eq!(lp.text_offset, [0, 2, 8]);
        assert!(lp.top_logprobs[0].is_none());
        let second = lp.top_logprobs[1].as_ref().unwrap();
        assert_eq!(
            second.len(),
            2,
            "the alternative and the chosen token: {second:?}"
        );
        assert_eq!(second[" there"], -2.0);
        assert_eq!(lp.top_logprobs[2].as_ref().unwrap().len(), 1);
    }

    #[test]
    fn chat_lists_each_token_with_its_alternatives_and_bytes() {
        let lp = chat(&[token(3, "é", -0.25, vec![(3, "é", -0.25), (4, "e", -1.5)])]);
        assert_eq!(lp.content[0].bytes, "é".as_bytes());
        assert_eq!(lp.content[0].top_logprobs.len(), 2);
        assert_eq!(lp.content[0].top_logprobs[1].token, "e");
    }
}
