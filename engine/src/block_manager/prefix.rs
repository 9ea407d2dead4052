//! Names of cached blocks and the prefix cache's counters.

use std::hash::{Hash, Hasher};

use super::BlockId;

/// A full block's name: a hash over the model's salt, the previous block's name and the
/// block's token ids, so equal names mean equal prefixes up to and including the block. 64
/// bits: two different prefixes among a million cached blocks share a name with odds of
/// about 3 in 100 million.
pub type BlockHash = u64;

/// The name of a block holding `tokens` after the block named `parent` (none for a
/// sequence's first block).
pub fn chain_hash(salt: u64, parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    // std's hasher with its fixed keys: the same names for the same prefix within a build.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    salt.hash(&mut h);
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// The cached blocks a sequence's leading full blocks match, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixMatch {
    pub blocks: Vec<BlockId>,
    pub hashes: Vec<BlockHash>,
}

impl PrefixMatch {
    /// Matched blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether nothing matched.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// Counters since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Prompt tokens looked up at admission.
    pub queried_tokens: u64,
    /// Of those, tokens found cached (not computed again).
    pub hit_tokens: u64,
    /// Cached blocks taken back for new allocations.
    pub evicted_blocks: u64,
    /// Fresh blocks handed out (matched blocks are not counted).
    pub allocated_blocks: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_depend_on_every_part() {
        let a = chain_hash(1, None, &[1, 2, 3]);
        assert_eq!(a, chain_hash(1, None, &[1, 2, 3]));
        assert_ne!(a, chain_hash(2, None, &[1, 2, 3]), "salt");
        assert_ne!(a, chain_hash(1, Some(a), &[1, 2, 3]), "parent");
        assert_ne!(a, chain_hash(1, None, &[1, 2, 4]), "tokens");
        assert_ne!(a, chain_hash(1, None, &[3, 2, 1]), "order");
    }
}
