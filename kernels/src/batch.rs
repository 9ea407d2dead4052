//! Per-step metadata of a batched attention call over a paged cache, in the flat form the
//! kernels take: which cache row each new token goes to, and for every query row its
//! sequence and how many positions it sees. Pure logic, shared by the CPU and CUDA caches.

/// One sequence's new tokens in the batch, with its block table.
#[derive(Debug, Clone, Copy)]
pub struct SpanBlocks<'a> {
    /// The sequence's blocks, in position order.
    pub block_table: &'a [u32],
    /// Position of the first new token.
    pub start: usize,
    /// Number of new tokens.
    pub len: usize,
}

/// A sequence's block table does not cover the positions asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sequence {index} of the batch has blocks for {have} positions, {need} needed")]
pub struct TooFewBlocks {
    pub index: usize,
    pub have: usize,
    pub need: usize,
}

/// Flat metadata of one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchLayout {
    /// Cache row (block * block_size + slot) of every new token, in batch order.
    pub slots: Vec<u32>,
    /// For every query row: index of its sequence in `block_tables`.
    pub row_seq: Vec<u32>,
    /// For every query row: positions it attends to (`start + i + 1`).
    pub row_visible: Vec<u32>,
    /// `[sequences][max_blocks]` block ids, padded with 0.
    pub block_tables: Vec<u32>,
    /// Width of one row of `block_tables` (at least 1).
    pub max_blocks: usize,
}

impl BatchLayout {
    /// Lays out `spans` for a cache of `block_size`-position blocks.
    pub fn new(spans: &[SpanBlocks<'_>], block_size: usize) -> Result<Self, TooFewBlocks> {
        let rows: usize = spans.iter().map(|s| s.len).sum();
        let max_blocks = spans
            .iter()
            .map(|s| s.block_table.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut layout = BatchLayout {
            slots: Vec::with_capacity(rows),
            row_seq: Vec::with_capacity(rows),
            row_visible: Vec::with_capacity(rows),
            block_tables: vec![0; spans.len() * max_blocks],
            max_blocks,
        };
        for (index, span) in spans.iter().enumerate() {
            let end = span.start + span.len;
            let have = span.block_table.len() * block_size;
            if end > have {
                return Err(TooFewBlocks {
                    index,
                    have,
                    need: end,
                });
            }
            layout.block_tables[index * max_blocks..][..span.block_table.len()]
                .copy_from_slice(span.block_table);
            for p in span.start..end {
                let block = span.block_table[p / block_size] as usize;
                layout
                    .slots
                    .push((block * block_size + p % block_size) as u32);
                layout.row_seq.push(index as u32);
                layout.row_visible.push(p as u32 + 1);
            }
        }
        Ok(layout)
    }
}

/// The new size of a step buffer that holds `current` elements and must hold `needed`: none
/// when it does, else the next power of two (at least 64), so steps that grow slowly
/// reallocate rarely and steps no larger than any before never do.
pub fn grown_capacity(current: usize, needed: usize) -> Option<usize> {
    (needed > current).then(|| needed.next_power_of_two().max(64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn buffers_grow_to_powers_of_two_and_only_when_needed() {
        assert_eq!(grown_capacity(64, 64), None);
        assert_eq!(grown_capacity(64, 10), None);
        assert_eq!(grown_capacity(64, 65), Some(128));
        assert_eq!(grown_capacity(0, 1), Some(64));
        assert_eq!(grown_capacity(1024, 3000), Some(4096));
    }

    use super::*;

    #[test]
    fn slots_follow_the_block_tables() {
        let a = [5u32, 2];
        let b = [7u32];
        let spans = [
            SpanBlocks {
                block_table: &a,
                start: 3,
                len: 2,
            },
            SpanBlocks {
                block_table: &b,
                start: 0,
                len: 1,
            },
        ];
        let l = BatchLayout::new(&spans, 4).unwrap();
        assert_eq!(l.slots, [5 * 4 + 3, 2 * 4, 7 * 4]);
        assert_eq!(l.row_visible, [4, 5, 1]);
        assert_eq!(l.row_seq, [0, 0, 1]);
        assert_eq!(l.max_blocks, 2);
        assert_eq!(l.block_tables, [5, 2, 7, 0]);
    }

    #[test]
    fn a_short_table_is_an_error() {
        let t = [1u32];
        let spans = [SpanBlocks {
            block_table: &t,
            start: 3,
            len: 2,
        }];
        assert_eq!(
            BatchLayout::new(&spans, 4),
            Err(TooFewBlocks {
                index: 0,
                have: 4,
                need: 5
            })
        );
    }
}
