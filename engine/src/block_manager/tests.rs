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
fn tables_never_share_blocks_without_the_prefix_cache() {
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

/// Admits `tokens` as a new sequence the way the scheduler does: match, attach, register.
fn admit(m: &mut BlockManager, seq: SeqId, tokens: &[u32]) -> usize {
    let found = m.match_prefix(tokens, (tokens.len() - 1) / m.block_size());
    let hit = found.len() * m.block_size();
    m.attach(seq, found, tokens.len()).unwrap();
    m.register(seq, tokens, tokens.len());
    m.commit_step();
    hit
}

#[test]
fn a_shared_prefix_is_matched_by_whole_blocks_and_shared() {
    let mut m = BlockManager::new(16, 4);
    let a: Vec<u32> = (0..10).collect();
    assert_eq!(admit(&mut m, 1, &a), 0);
    // Same first 6 tokens: one whole block matches (the second diverges inside).
    let mut b = a[..6].to_vec();
    b.extend([100, 101, 102]);
    assert_eq!(admit(&mut m, 2, &b), 4);
    assert_eq!(m.table(1).unwrap()[0], m.table(2).unwrap()[0]);
    assert_ne!(m.table(1).unwrap()[1], m.table(2).unwrap()[1]);
    assert_eq!(m.used_blocks(), 3 + 2);
    m.check_consistency().unwrap();
    // A finished sequence's blocks stay cached: the same prompt again matches both full
    // blocks, never its last partial one.
    m.release(1);
    m.release(2);
    assert_eq!(m.used_blocks(), 0);
    assert_eq!(m.cached_blocks(), 3);
    assert_eq!(admit(&mut m, 3, &a), 8);
    m.check_consistency().unwrap();
}

#[test]
fn a_prompt_of_whole_blocks_keeps_its_last_block_private() {
    let mut m = BlockManager::new(8, 4);
    let a: Vec<u32> = (0..8).collect();
    admit(&mut m, 1, &a);
    assert_eq!(admit(&mut m, 2, &a), 4, "the last token is computed again");
}

#[test]
fn cached_blocks_are_evicted_before_a_request_waits_oldest_and_last_first() {
    let mut m = BlockManager::new(6, 2);
    let a: Vec<u32> = (0..7).collect(); // 4 blocks, 3 full
    admit(&mut m, 1, &a);
    m.release(1);
    assert_eq!((m.free_blocks(), m.cached_blocks()), (6, 3));
    // 5 fresh blocks: 3 free ones, then two cached ones, the tail of the prefix first.
    m.ensure(2, 10).unwrap();
    assert_eq!(m.stats().evicted_blocks, 2);
    assert_eq!(m.cached_blocks(), 1);
    assert_eq!(
        m.match_prefix(&a, 3).len(),
        1,
        "the first block is still cached"
    );
    m.check_consistency().unwrap();
}

#[test]
fn matched_blocks_cost_only_when_unreferenced() {
    let mut m = BlockManager::new(8, 2);
    let a: Vec<u32> = (0..5).collect();
    admit(&mut m, 1, &a);
    let found = m.match_prefix(&a, 2);
    assert_eq!(
        m.cost_with(&found, 5),
        1,
        "shared with a running sequence: only the tail"
    );
    m.release(1);
    let found = m.match_prefix(&a, 2);
    assert_eq!(
        m.cost_with(&found, 5),
        3,
        "unreferenced cached blocks leave the pool too"
    );
}

#[test]
fn a_failed_step_takes_its_blocks_out_of_the_index() {
    let mut m = BlockManager::new(8, 2);
    let a: Vec<u32> = (0..5).collect();
    m.attach(1, PrefixMatch::default(), 5).unwrap();
    m.register(1, &a, 5);
    m.forget_step();
    m.release(1);
    assert_eq!(m.cached_blocks(), 0);
    assert!(m.match_prefix(&a, 2).is_empty());
    m.check_consistency().unwrap();
}

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Random admissions (prompts built from a few shared prefixes), extensions (decode),
/// finishes, preemptions (release and re-admit later) and failed steps, with every count
/// checked after each operation.
#[test]
fn random_operations_keep_every_count_right() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let bs = 1 + rng.below(4);
        let mut m = BlockManager::new(24 + rng.below(24), bs);
        let prefixes: Vec<Vec<u32>> = (0..3)
            .map(|p| (0..(3 * bs + p)).map(|t| (p * 1000 + t) as u32).collect())
            .collect();
        // Running sequences: id -> tokens; preempted ones wait to be re-admitted.
        let mut running: Vec<(SeqId, Vec<u32>)> = Vec::new();
        let mut waiting: Vec<(SeqId, Vec<u32>)> = Vec::new();
        let mut next: SeqId = 0;
        // What each block's positions hold: the token written there (None: garbage).
        let mut store: Vec<Vec<Option<u32>>> = vec![vec![None; bs]; m.total_blocks()];
        let write = |m: &BlockManager,
                     store: &mut Vec<Vec<Option<u32>>>,
                     id: SeqId,
                     tokens: &[u32],
                     from: usize,
                     ok: bool| {
            let table = m.table(id).unwrap();
            for (p, t) in tokens.iter().enumerate().skip(from) {
                store[table[p / bs] as usize][p % bs] = ok.then_some(*t);
            }
        };
        for op in 0..400 {
            match rng.below(6) {
                0 | 1 => {
                    let tokens = match waiting.pop() {
                        Some((_, t)) if rng.below(2) == 0 => t,
                        other => {
                            waiting.extend(other);
                            let mut t = prefixes[rng.below(3)].clone();
                            t.truncate(1 + rng.below(t.len()));
                            t.extend((0..rng.below(2 * bs)).map(|_| rng.below(50) as u32));
                            t
                        }
                    };
                    let found = m.match_prefix(&tokens, (tokens.len() - 1) / bs);
                    let cost = m.cost_with(&found, tokens.len());
                    let before = m.free_blocks();
                    let fits = cost <= before;
                    let computed_from = found.len() * bs;
                    let result = m.attach(next, found, tokens.len());
                    assert_eq!(result.is_ok(), fits, "seed {seed} op {op}");
                    if result.is_ok() {
                        assert_eq!(m.free_blocks(), before - cost, "seed {seed} op {op}");
                        m.register(next, &tokens, tokens.len());
                        let failed = rng.below(10) == 0;
                        write(&m, &mut store, next, &tokens, computed_from, !failed);
                        if failed {
                            m.forget_step();
                            m.release(next);
                        } else {
                            m.commit_step();
                            running.push((next, tokens));
                        }
                        next += 1;
                    }
                }
                2 if !running.is_empty() => {
                    let i = rng.below(running.len());
                    let (id, tokens) = &mut running[i];
                    tokens.push(rng.below(50) as u32);
                    if m.ensure(*id, tokens.len()).is_ok() {
                        let from = tokens.len() - 1;
                        write(&m, &mut store, *id, tokens, from, true);
                        m.register(*id, tokens, tokens.len());
                        m.commit_step();
                    } else {
                        let (id, tokens) = running.swap_remove(i);
                        m.release(id);
                        waiting.push((id, tokens));
                    }
                }
                3 if !running.is_empty() => {
                    let (id, tokens) = running.swap_remove(rng.below(running.len()));
                    m.release(id);
                    waiting.push((id, tokens));
                }
                _ if !running.is_empty() => {
                    let (id, _) = running.swap_remove(rng.below(running.len()));
                    m.release(id);
                }
                _ => {}
            }
            if let Err(e) = m.check_consistency() {
                panic!("seed {seed} op {op}: {e}");
            }
            // Every running sequence's table covers its tokens, and what its blocks hold is
            // its own tokens, shared blocks included.
            for (id, tokens) in &running {
                assert!(m.capacity(*id) >= tokens.len(), "seed {seed} op {op}");
                let table = m.table(*id).unwrap();
                for (p, t) in tokens.iter().enumerate() {
                    let held = store[table[p / bs] as usize][p % bs];
                    assert_eq!(held, Some(*t), "seed {seed} op {op}: seq {id} position {p}");
                }
            }
        }
        for (id, _) in running {
            m.release(id);
        }
        assert_eq!(m.free_blocks(), m.total_blocks(), "seed {seed}: all back");
        m.check_consistency().unwrap();
    }
}
