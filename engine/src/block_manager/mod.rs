//! The paged KV cache's bookkeeping: fixed-size blocks, a block table per sequence, a free
//! list, and the prefix cache over them. Pure logic, no tensors: the tensor store asks it
//! where positions live.
//!
//! Prefix cache: a full block whose keys and values are computed is named by a hash chain
//! ([`prefix::chain_hash`]: the model's salt, the previous block's hash, the block's token
//! ids) and entered in an index. A new sequence looks up the longest run of its leading full
//! blocks in the index ([`BlockManager::match_prefix`]) and shares those blocks (reference
//! counted) instead of computing them. A block nobody references any more stays in the
//! index, evictable: it is taken back, least recently used first, only when a fresh block is
//! needed and none is free, so cached blocks never keep a request waiting.
//!
//! Only full blocks are ever shared, and a sequence writes only positions past its computed
//! ones, so a shared block is never written again.

pub mod prefix;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use migserve_models::SeqId;

pub use prefix::{BlockHash, PrefixMatch, PrefixStats};

/// Index of one block in the cache's storage.
pub type BlockId = u32;

/// Not enough free blocks for an allocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("need {needed} more KV blocks, {free} free")]
pub struct OutOfBlocks {
    pub needed: usize,
    pub free: usize,
}

/// What is known of one block.
#[derive(Debug, Clone, Default)]
struct BlockState {
    /// Sequences whose tables hold it.
    refs: u32,
    /// Its name in the prefix index, once it is full and computed.
    hash: Option<BlockHash>,
    /// Its place in the eviction order while nobody references it.
    tick: u64,
}

/// A sequence's blocks and the chain hashes of its full, registered ones.
#[derive(Debug, Default)]
struct SeqBlocks {
    blocks: Vec<BlockId>,
    /// `hashes[i]` names full block `i` (whether or not that block is the one in the index).
    hashes: Vec<BlockHash>,
}

/// Hands out blocks of `block_size` token positions to sequences, and keeps computed full
/// blocks for reuse.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    blocks: Vec<BlockState>,
    /// Unreferenced blocks holding nothing worth keeping.
    free: Vec<BlockId>,
    /// Unreferenced cached blocks by eviction order (oldest first).
    evictable: BTreeMap<u64, BlockId>,
    /// Cached full blocks by chain hash.
    index: HashMap<BlockHash, BlockId>,
    tables: HashMap<SeqId, SeqBlocks>,
    /// Blocks entered in the index since the last [`BlockManager::commit_step`]: their
    /// contents are written by the step being run.
    pending: Vec<BlockId>,
    tick: u64,
    /// Part of every block's name: the cache's model (one per engine, so a constant).
    salt: u64,
    stats: PrefixStats,
}

impl BlockManager {
    /// `total_blocks` blocks of `block_size` positions each, all free.
    pub fn new(total_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block size must be positive");
        // Lowest ids are handed out first (pop from the end).
        let free = (0..total_blocks as BlockId).rev().collect();
        Self {
            block_size,
            blocks: vec![BlockState::default(); total_blocks],
            free,
            evictable: BTreeMap::new(),
            index: HashMap::new(),
            tables: HashMap::new(),
            pending: Vec::new(),
            tick: 0,
            salt: 0,
            stats: PrefixStats::default(),
        }
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// All blocks, used or free.
    pub fn total_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks an allocation can take: free ones and cached ones nobody references.
    pub fn free_blocks(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks referenced by sequences.
    pub fn used_blocks(&self) -> usize {
        self.total_blocks() - self.free_blocks()
    }

    /// Blocks in the prefix index (referenced or not).
    pub fn cached_blocks(&self) -> usize {
        self.index.len()
    }

    /// Counters of the prefix cache since the start.
    pub fn stats(&self) -> PrefixStats {
        self.stats
    }

    /// Blocks needed to hold `positions` positions.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_size)
    }

    /// Whether a sequence of `positions` positions could ever fit, with the cache empty.
    pub fn could_ever_fit(&self, positions: usize) -> bool {
        self.blocks_for(positions) <= self.total_blocks()
    }

    /// Extra blocks `seq` needs to hold `positions` positions.
    pub fn blocks_missing(&self, seq: SeqId, positions: usize) -> usize {
        let have = self.tables.get(&seq).map_or(0, |t| t.blocks.len());
        self.blocks_for(positions).saturating_sub(have)
    }

    /// Grows `seq`'s table to cover `positions` positions with fresh blocks (evicting cached
    /// ones when none is free). All or nothing: on failure no block is taken.
    pub fn ensure(&mut self, seq: SeqId, positions: usize) -> Result<(), OutOfBlocks> {
        let missing = self.blocks_missing(seq, positions);
        if missing > self.free_blocks() {
            return Err(OutOfBlocks {
                needed: missing,
                free: self.free_blocks(),
            });
        }
        let mut fresh = Vec::with_capacity(missing);
        for _ in 0..missing {
            if let Some(b) = self.take_block() {
                fresh.push(b);
            }
        }
        self.stats.allocated_blocks += fresh.len() as u64;
        self.tables.entry(seq).or_default().blocks.extend(fresh);
        Ok(())
    }

    /// An unreferenced block for a new owner: a free one, else the least recently used
    /// cached one (leaving the index).
    fn take_block(&mut self) -> Option<BlockId> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.evictable.pop_first()?;
                if let Some(hash) = self.blocks[b as usize].hash.take() {
                    self.index.remove(&hash);
                }
                self.stats.evicted_blocks += 1;
                b
            }
        };
        self.blocks[b as usize].refs = 1;
        Some(b)
    }

    /// The longest run of `tokens`' leading full blocks in the index, at most `max_blocks`.
    pub fn match_prefix(&self, tokens: &[u32], max_blocks: usize) -> PrefixMatch {
        let mut found = PrefixMatch::default();
        let mut parent = None;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let hash = prefix::chain_hash(self.salt, parent, chunk);
            let Some(&b) = self.index.get(&hash) else {
                break;
            };
            found.blocks.push(b);
            found.hashes.push(hash);
            parent = Some(hash);
        }
        found
    }

    /// Blocks an allocation would take from [`BlockManager::free_blocks`] for a new sequence
    /// that starts with `found` and needs `positions` positions: the fresh ones and the
    /// matched ones nobody references yet.
    pub fn cost_with(&self, found: &PrefixMatch, positions: usize) -> usize {
        let unreferenced = found
            .blocks
            .iter()
            .filter(|b| self.blocks[**b as usize].refs == 0)
            .count();
        self.blocks_for(positions)
            .saturating_sub(found.blocks.len())
            + unreferenced
    }

    /// Gives `seq` (which holds no blocks) the matched blocks, then fresh ones up to
    /// `positions` positions. All or nothing.
    pub fn attach(
        &mut self,
        seq: SeqId,
        found: PrefixMatch,
        positions: usize,
    ) -> Result<(), OutOfBlocks> {
        let cost = self.cost_with(&found, positions);
        if self.tables.contains_key(&seq) || cost > self.free_blocks() {
            return Err(OutOfBlocks {
                needed: cost,
                free: self.free_blocks(),
            });
        }
        for &b in &found.blocks {
            let state = &mut self.blocks[b as usize];
            if state.refs == 0 {
                self.evictable.remove(&state.tick);
            }
            state.refs += 1;
        }
        self.tables.insert(
            seq,
            SeqBlocks {
                blocks: found.blocks,
                hashes: found.hashes,
            },
        );
        self.ensure(seq, positions)
    }

    /// Counts one admission's lookup: `queried` prompt tokens, `hit` of them found cached.
    pub fn record_lookup(&mut self, queried: usize, hit: usize) {
        self.stats.queried_tokens += queried as u64;
        self.stats.hit_tokens += hit as u64;
    }

    /// Enters `seq`'s full blocks among its first `upto` positions (whose tokens are
    /// `tokens[..upto]`, computed by the step being planned) in the index. A block whose
    /// contents another block already caches stays private.
    pub fn register(&mut self, seq: SeqId, tokens: &[u32], upto: usize) {
        let Some(table) = self.tables.get_mut(&seq) else {
            return;
        };
        let full = (upto.min(tokens.len()) / self.block_size).min(table.blocks.len());
        for i in table.hashes.len()..full {
            let chunk = &tokens[i * self.block_size..(i + 1) * self.block_size];
            let parent = i.checked_sub(1).map(|p| table.hashes[p]);
            let hash = prefix::chain_hash(self.salt, parent, chunk);
            table.hashes.push(hash);
            let b = table.blocks[i];
            let state = &mut self.blocks[b as usize];
            if state.hash.is_none() && !self.index.contains_key(&hash) {
                state.hash = Some(hash);
                self.index.insert(hash, b);
                self.pending.push(b);
            }
        }
    }

    /// The step whose blocks were registered ran: their contents are in the cache.
    pub fn commit_step(&mut self) {
        self.pending.clear();
    }

    /// The step whose blocks were registered failed: they hold nothing usable, so they leave
    /// the index (and become free once unreferenced).
    pub fn forget_step(&mut self) {
        for b in std::mem::take(&mut self.pending) {
            let state = &mut self.blocks[b as usize];
            let Some(hash) = state.hash.take() else {
                continue;
            };
            if self.index.get(&hash) == Some(&b) {
                self.index.remove(&hash);
            }
            if state.refs == 0 && self.evictable.remove(&state.tick).is_some() {
                self.free.push(b);
            }
        }
    }

    /// Lets go of all of `seq`'s blocks: cached ones stay cached (evictable), the others are
    /// free. The last blocks of a sequence are evicted before its first ones, which other
    /// prompts are likelier to share.
    pub fn release(&mut self, seq: SeqId) {
        let Some(table) = self.tables.remove(&seq) else {
            return;
        };
        for &b in table.blocks.iter().rev() {
            let state = &mut self.blocks[b as usize];
            state.refs = state.refs.saturating_sub(1);
            if state.refs > 0 {
                continue;
            }
            if state.hash.is_some() {
                self.tick += 1;
                state.tick = self.tick;
                self.evictable.insert(self.tick, b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// The blocks of `seq`, in position order.
    pub fn table(&self, seq: SeqId) -> Option<&[BlockId]> {
        self.tables.get(&seq).map(|t| t.blocks.as_slice())
    }

    /// Positions `seq` can hold without new blocks.
    pub fn capacity(&self, seq: SeqId) -> usize {
        self.tables
            .get(&seq)
            .map_or(0, |t| t.blocks.len() * self.block_size)
    }

    /// Checks every count against the tables: references, the free and evictable pools
    /// (disjoint, together with the referenced blocks exactly all blocks), the index. For
    /// tests; the message says what is off.
    pub fn check_consistency(&self) -> Result<(), String> {
        let mut refs = vec![0u32; self.blocks.len()];
        for (seq, t) in &self.tables {
            for &b in &t.blocks {
                refs[b as usize] += 1;
            }
            if t.hashes.len() > t.blocks.len() {
                return Err(format!("sequence {seq} has more hashes than blocks"));
            }
        }
        let mut seen = vec![false; self.blocks.len()];
        for &b in self.free.iter().chain(self.evictable.values()) {
            if std::mem::replace(&mut seen[b as usize], true) {
                return Err(format!("block {b} is pooled twice"));
            }
        }
        for (b, state) in self.blocks.iter().enumerate() {
            if state.refs != refs[b] {
                return Err(format!(
                    "block {b} counts {} references, tables hold {}",
                    state.refs, refs[b]
                ));
            }
            if (state.refs == 0) != seen[b] {
                return Err(format!(
                    "block {b} has {} references and is {}pooled",
                    state.refs,
                    if seen[b] { "" } else { "not " }
                ));
            }
            if let Some(hash) = state.hash {
                if self.index.get(&hash) != Some(&(b as BlockId)) {
                    return Err(format!("block {b} is hashed but not indexed"));
                }
            }
        }
        for &b in self.free.iter() {
            if self.blocks[b as usize].hash.is_some() {
                return Err(format!("free block {b} is still cached"));
            }
        }
        for (tick, &b) in &self.evictable {
            let state = &self.blocks[b as usize];
            if state.hash.is_none() || state.tick != *tick {
                return Err(format!("evictable block {b} is uncached or out of order"));
            }
        }
        for (hash, &b) in &self.index {
            if self.blocks[b as usize].hash != Some(*hash) {
                return Err(format!("the index names block {b} for another hash"));
            }
        }
        Ok(())
    }
}
