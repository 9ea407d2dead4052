//! The router's approximate picture of what each slice's prefix cache holds, without a
//! tokenizer: a request's prompt text (TGI `inputs`, OpenAI `prompt`, or the chat messages as
//! sent) is cut into chunks of [`CHUNK_BYTES`], each named by a hash chain over the chunks
//! before it, and each slice remembers the chunks of the prompts recently sent to it, least
//! recently used first out, bounded by the size of the slice's KV cache.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use serde_json::Value;

use super::routing_view::RoutingView;

/// Bytes of prompt text per chunk: about one 16-token KV block at 4 bytes per token.
pub const CHUNK_BYTES: usize = 64;
/// Bytes per token the router assumes (it does not tokenize).
pub const BYTES_PER_TOKEN: usize = 4;
/// Tokens an index holds until a worker says how large its KV cache is.
pub const DEFAULT_CAPACITY_TOKENS: usize = 16384;

/// A request's prompt as the router sees it: the text (TGI `inputs`, OpenAI `prompt`, or the
/// chat messages as role + content with separators) and how many of its bytes are content.
#[derive(Debug, Default)]
pub struct PromptText {
    pub bytes: Vec<u8>,
    /// Bytes of prompt and message content (roles and separators not counted).
    pub content_bytes: usize,
}

impl PromptText {
    /// The prompt of a request, read through its routing view.
    pub fn of(view: &RoutingView) -> Self {
        let mut text = Self::default();
        for prompt in view.prompt_texts() {
            text.content(prompt.as_bytes());
        }
        for m in view.messages() {
            // Role and content, with separators that text cannot fake: the same
            // conversation so far gives the same bytes, so the same chunks.
            text.bytes
                .extend_from_slice(m.role.unwrap_or_default().as_bytes());
            text.bytes.push(0x1f);
            match m.content {
                Some(Value::String(s)) => text.content(s.as_bytes()),
                Some(other) => text.content(other.to_string().as_bytes()),
                None => {}
            }
            text.bytes.push(0x1e);
        }
        text
    }

    fn content(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        self.content_bytes += bytes.len();
    }

    /// Estimated prompt tokens (at [`BYTES_PER_TOKEN`], plus one).
    pub fn tokens(&self) -> u64 {
        (self.content_bytes / BYTES_PER_TOKEN) as u64 + 1
    }

    /// The hash chain of the text's whole chunks for `model`, first chunk first.
    pub fn chunks(&self, model: &str) -> Vec<u64> {
        let mut parent = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            model.hash(&mut h);
            h.finish()
        };
        self.bytes
            .chunks_exact(CHUNK_BYTES)
            .map(|chunk| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                parent.hash(&mut h);
                chunk.hash(&mut h);
                parent = h.finish();
                parent
            })
            .collect()
    }
}

/// The hash chain of the whole chunks of `body`'s prompt for `model`.
#[cfg(test)]
fn prompt_chunks(model: &str, body: &Value) -> Vec<u64> {
    PromptText::of(&RoutingView::of(body)).chunks(model)
}

/// Tokens that `chunks` leading chunks stand for.
pub fn chunk_tokens(chunks: usize) -> u64 {
    (chunks * CHUNK_BYTES / BYTES_PER_TOKEN) as u64
}

#[derive(Debug)]
struct Inner {
    capacity_chunks: usize,
    tick: u64,
    /// Chunk hash -> tick of its last use.
    seen: HashMap<u64, u64>,
    /// Tick -> chunk hash: the order of eviction.
    by_age: BTreeMap<u64, u64>,
}

/// One slice's recently sent prompt chunks.
#[derive(Debug)]
pub struct PrefixIndex {
    inner: Mutex<Inner>,
}

impl Default for PrefixIndex {
    fn default() -> Self {
        Self::with_capacity_tokens(DEFAULT_CAPACITY_TOKENS)
    }
}

impl PrefixIndex {
    pub fn with_capacity_tokens(tokens: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                capacity_chunks: Self::chunks_for(tokens),
                tick: 0,
                seen: HashMap::new(),
                by_age: BTreeMap::new(),
            }),
        }
    }

    fn chunks_for(tokens: usize) -> usize {
        (tokens * BYTES_PER_TOKEN / CHUNK_BYTES).max(1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Sizes the index to a KV cache of `tokens` positions (what the worker reports).
    pub fn set_capacity_tokens(&self, tokens: usize) {
        let mut inner = self.lock();
        inner.capacity_chunks = Self::chunks_for(tokens);
        inner.evict();
    }

    /// How many of `chunks`, from the first, this slice is thought to hold.
    pub fn matched(&self, chunks: &[u64]) -> usize {
        let inner = self.lock();
        chunks
            .iter()
            .take_while(|c| inner.seen.contains_key(c))
            .count()
    }

    /// Notes that the prompt of `chunks` was sent here: its chunks are the most recently used,
    /// the first the most recent of all (the worker evicts a prompt's tail first too).
    pub fn insert(&self, chunks: &[u64]) {
        let mut inner = self.lock();
        for &chunk in chunks.iter().rev() {
            inner.tick += 1;
            let tick = inner.tick;
            if let Some(old) = inner.seen.insert(chunk, tick) {
                inner.by_age.remove(&old);
            }
            inner.by_age.insert(tick, chunk);
        }
        inner.evict();
    }

    /// Chunks held now.
    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn evict(&mut self) {
        while self.seen.len() > self.capacity_chunks {
            let Some((_, chunk)) = self.by_age.pop_first() else {
                break;
            };
            self.seen.remove(&chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(n: usize, seed: char) -> String {
        std::iter::repeat_n(seed, n).collect()
    }

    #[test]
    fn shared_text_gives_shared_leading_chunks() {
        let system = text(640, 's');
        let a = prompt_chunks("m", &json!({"inputs": format!("{system}question a")}));
        let b = prompt_chunks(
            "m",
            &json!({"inputs": format!("{system}question b, longer than a")}),
        );
        assert_eq!(a.len(), 10);
        assert_eq!(&a[..10], &b[..10]);
        // Another model caches nothing of it.
        let other = prompt_chunks("n", &json!({"inputs": format!("{system}question a")}));
        assert_ne!(a[0], other[0]);
        // A change in the first chunk changes every chunk after it (a chain, not a bag).
        let c = prompt_chunks("m", &json!({"inputs": format!("x{}", &system[1..])}));
        assert!(a.iter().zip(&c).all(|(x, y)| x != y));
    }

    #[test]
    fn chat_messages_are_chunked_in_order_with_roles() {
        let sys = text(200, 'p');
        let ask = |q: &str| json!({"messages": [{"role": "system", "content": sys}, {"role": "user", "content": q}]});
        let a = prompt_chunks("m", &ask(&text(100, 'a')));
        let b = prompt_chunks("m", &ask(&text(100, 'b')));
        assert_eq!(a[..3], b[..3], "the system message's whole chunks");
        assert_ne!(a[3], b[3]);
        let as_user = prompt_chunks(
            "m",
            &json!({"messages": [{"role": "user", "content": sys}]}),
        );
        assert_ne!(a[0], as_user[0], "the role is part of the text");
    }

    #[test]
    fn the_index_matches_leading_chunks_and_evicts_least_recent_tails_first() {
        let index = PrefixIndex::with_capacity_tokens(chunk_tokens(6) as usize);
        let a = [1, 2, 3, 4];
        index.insert(&a);
        assert_eq!(index.matched(&[1, 2, 9]), 2);
        assert_eq!(index.matched(&[9, 2]), 0);
        // Four more chunks: the first prompt's tail leaves first, its head stays.
        index.insert(&[10, 11, 12, 13]);
        assert_eq!(index.len(), 6);
        assert_eq!(index.matched(&a), 2);
        index.set_capacity_tokens(chunk_tokens(4) as usize);
        assert_eq!(index.matched(&[10, 11, 12, 13]), 4);
        assert_eq!(index.matched(&a), 0);
    }
}
