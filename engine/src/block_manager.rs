//! The paged KV cache's bookkeeping: fixed-size blocks, a block table per sequence, a free
//! list. Pure logic, no tensors: the tensor store asks it where positions live.

use std::collections::HashMap;

use migserve_models::SeqId;

/// Index of one block in the cache's storage.
pub type BlockId = u32;

/// Not enough free blocks for an allocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("need {needed} more KV blocks, {free} free")]
pub struct OutOfBlocks {
    pub needed: usize,
    pub free: usize,
}

/// Hands out blocks of `block_size` token positions to sequences.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    total: usize,
    free: Vec<BlockId>,
    tables: HashMap<SeqId, Vec<BlockId>>,
}

impl BlockManager {
    /// `total_blocks` blocks of `block_size` positions each, all free.
    pub fn new(total_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block size must be positive");
        // Lowest ids are handed out first (pop from the end).
        let free = (0..total_blocks as BlockId).rev().collect();
        Self {
            block_size,
            total: total_blocks,
            free,
            tables: HashMap::new(),
        }
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// All blocks, used or free.
    pub fn total_blocks(&self) -> usize {
        self.total
    }

    /// Blocks not owned by any sequence.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Blocks owned by sequences.
    pub fn used_blocks(&self) -> usize {
        self.total - self.free.len()
    }

    /// Blocks needed to hold `positions` positions.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_size)
    }

    /// Whether a sequence of `positions` positions could ever fit, with the cache empty.
    pub fn could_ever_fit(&self, positions: usize) -> bool {
        self.blocks_for(positions) <= self.total
    }

    /// Extra blocks `seq` needs to hold `positions` positions.
    pub fn blocks_missing(&self, seq: SeqId, positions: usize) -> usize {
        let have = self.tables.get(&seq).map_or(0, Vec::len);
        self.blocks_for(positions).saturating_sub(have)
    }

    /// Grows `seq`'s table to cover `positions` positions. All or nothing: on failure no
    /// block is taken.
    pub fn ensure(&mut self, seq: SeqId, positions: usize) -> Result<(), OutOfBlocks> {
        let missing = self.blocks_missing(seq, positions);
        if missing > self.free.len() {
            return Err(OutOfBlocks {
                needed: missing,
                free: self.free.len(),
            });
        }
        let start = self.free.len() - missing;
        let new_blocks = self.free.split_off(start);
        self.tables
            .entry(seq)
            .or_default()
            .extend(new_blocks.into_iter().rev());
        Ok(())
    }

    /// Returns all of `seq`'s blocks to the free pool.
    pub fn release(&mut self, seq: SeqId) {
        if let Some(blocks) = self.tables.remove(&seq) {
            self.free.extend(blocks.into_iter().rev());
        }
    }

    /// The blocks of `seq`, in position order.
    pub fn table(&self, seq: SeqId) -> Option<&[BlockId]> {
        self.tables.get(&seq).map(Vec::as_slice)
    }

    /// Positions `seq` can hold without new blocks.
    pub fn capacity(&self, seq: SeqId) -> usize {
        self.tables
            .get(&seq)
            .map_or(0, |t| t.len() * self.block_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_rounds_up_to_whole_blocks() {
        let mut m = BlockManager::new(10, 4);
        m.ensure(1, 5).unwrap();
        assert_eq!(m.table(1).unwrap().len(), 2);
        assert_eq!(m.capacity(1), 8);
        m.ensure(1, 8).unwrap();
        assert_eq!(m.table(1).unwrap().len(), 2, "still fits");
        m.ensure(1, 9).unwrap();
        assert_eq!(m.table(1).unwrap().len(), 3);
        assert_eq!((m.used_blocks(), m.free_blocks()), (3, 7));
    }

    #[test]
    fn failed_allocation_takes_nothing() {
        let mut m = BlockManager::new(3, 2);
        m.ensure(1, 4).unwrap();
        let err = m.ensure(2, 6).unwrap_err();
        assert_eq!(err, OutOfBlocks { needed: 3, free: 1 });
        assert_eq!(m.free_blocks(), 1);
        assert!(m.table(2).is_none());
    }

    #[test]
    fn release_returns_every_block_and_they_are_reused() {
        let mut m = BlockManager::new(4, 16);
        m.ensure(1, 40).unwrap();
        m.ensure(2, 10).unwrap();
        assert_eq!(m.free_blocks(), 0);
        let first: Vec<BlockId> = m.table(1).unwrap().to_vec();
        m.release(1);
        assert_eq!(m.free_blocks(), 3);
        m.ensure(3, 48).unwrap();
        let mut reused = m.table(3).unwrap().to_vec();
        reused.sort();
        let mut first_sorted = first.clone();
        first_sorted.sort();
        assert_eq!(reused, first_sorted);
        m.release(3);
        m.release(2);
        m.release(2); // twice is harmless
        assert_eq!(m.free_blocks(), 4);
    }

    #[test]
    fn tables_never_share_blocks() {
        let mut m = BlockManager::new(64, 4);
        for seq in 0..8 {
            m.ensure(seq, 1 + seq as usize * 3).unwrap();
        }
        let mut all: Vec<BlockId> = (0..8).flat_map(|s| m.table(s).unwrap().to_vec()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(m.used_blocks(), n);
    }

    #[test]
    fn could_ever_fit_uses_the_whole_cache() {
        let m = BlockManager::new(4, 16);
        assert!(m.could_ever_fit(64));
        assert!(!m.could_ever_fit(65));
    }
}
