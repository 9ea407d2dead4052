//! Prompts: cut from a built-in corpus to a target length, or read from a JSONL file.

use std::path::Path;

use rand::Rng;

/// Built-in text prompts are cut from (the project's own prose; ~4 characters per token).
const CORPUS: &str = "Serving many small language models on one large accelerator is a packing \
problem before it is a speed problem. A single model of a few hundred million parameters \
leaves most of a modern GPU idle, yet giving each model its own device wastes money and power. \
Splitting the device into isolated slices lets each model run on a share that fits it, with its \
own memory and its own compute, so a burst of traffic for one model cannot slow the others. \
The serving system then has three jobs: find the slices, start one worker per slice and keep \
it alive, and send every request to a slice that holds its model and will answer it soonest. \
A worker batches the requests it holds: at every step it runs one forward pass over all the \
sequences that are decoding, and it admits new prompts under a token budget so that decoding \
never stalls for long. Memory for the attention keys and values is handed out in fixed blocks, \
so sequences of very different lengths share the cache without fragmentation; when the blocks \
run out, the newest sequence gives its blocks back and is computed again later. The router in \
front keeps, for each slice, the number of requests in flight, the tokens they still need, and \
moving averages of how long the first token takes and how long each later token takes. From \
these it estimates when a new request would finish on each slice and sends it where that time \
is earliest. When every slice is full, it says so at once instead of letting the request wait \
in a queue nobody can see. Measuring all this honestly needs a load generator that streams, \
records the time of every token, and reports percentiles rather than averages, because users \
feel the slow requests, not the mean. It should sweep the load from light to saturating, both \
with a fixed number of clients that send one request after another and with requests that \
arrive at random at a set rate, since the two answer different questions: how much can the \
system do, and how does it behave when the world does not wait for it. The history of \
astronomy is long. People watched the sky for thousands of years, tracking the Sun, the Moon \
and the planets, and built calendars, temples and instruments around what they saw. Later \
they measured the distances to the stars, split their light into colours, and learned what \
they are made of and how they burn. Rivers shape the land they cross: they carry sand and \
stone from the mountains, cut valleys, build deltas at the sea, and change course when a \
flood finds an easier way. Cities grew where rivers could be crossed and where boats could \
land, and many of them still carry the marks of the water that made them.";

/// Where prompts come from.
#[derive(Debug, Clone)]
pub enum PromptSource {
    /// Cut from the built-in corpus to the drawn length.
    Builtin,
    /// Lines of a JSONL file, used in turn.
    File(Vec<String>),
}

impl PromptSource {
    /// Reads a JSONL file: one object per line with `prompt` (or `text`, or `inputs`).
    pub fn from_jsonl(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut prompts = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))?;
            let prompt = ["prompt", "text", "inputs"]
                .iter()
                .find_map(|k| value.get(k).and_then(|v| v.as_str()))
                .ok_or_else(|| {
                    format!("{} line {}: no \"prompt\" string", path.display(), i + 1)
                })?;
            prompts.push(prompt.to_string());
        }
        if prompts.is_empty() {
            return Err(format!("{}: no prompts", path.display()));
        }
        Ok(PromptSource::File(prompts))
    }

    /// The `index`-th prompt, about `tokens` tokens long for the built-in corpus.
    pub fn prompt(&self, index: u64, tokens: u64, rng: &mut impl Rng) -> String {
        match self {
            PromptSource::File(prompts) => prompts[(index % prompts.len() as u64) as usize].clone(),
            PromptSource::Builtin => {
                static WORDS: std::sync::LazyLock<Vec<&str>> =
                    std::sync::LazyLock::new(|| CORPUS.split_whitespace().collect());
                let words = &*WORDS;
                // About 0.75 words per token for English prose.
                let want = ((tokens as f64 * 0.75).round() as usize).max(1);
                let start = rng.random_range(0..words.len());
                (0..want)
                    .map(|i| words[(start + i) % words.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn builtin_prompts_have_about_the_asked_length() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let p = PromptSource::Builtin.prompt(0, 400, &mut rng);
        assert_eq!(p.split_whitespace().count(), 300);
        let short = PromptSource::Builtin.prompt(1, 1, &mut rng);
        assert_eq!(short.split_whitespace().count(), 1);
    }

    #[test]
    fn jsonl_prompts_are_read_in_turn() {
        let path =
            std::env::temp_dir().join(format!("loadtest-prompts-{}.jsonl", std::process::id()));
        std::fs::write(&path, "{\"prompt\": \"a\"}\n\n{\"text\": \"b\"}\n").unwrap();
        let source = PromptSource::from_jsonl(&path).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert_eq!(source.prompt(0, 5, &mut rng), "a");
        assert_eq!(source.prompt(3, 5, &mut rng), "b");
        std::fs::write(&path, "{\"x\": 1}\n").unwrap();
        assert!(PromptSource::from_jsonl(&path)
            .unwrap_err()
            .contains("no \"prompt\""));
    }
}
