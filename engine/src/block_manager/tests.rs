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

/// A random run against one block manager: running sequences (id, tokens), preempted ones
/// waiting to be re-admitted, and what each block's positions hold (the token written
/// there; `None`: garbage).
struct RandomRun {
    seed: u64,
    rng: Rng,
    bs: usize,
    m: BlockManager,
    prefixes: Vec<Vec<u32>>,
    running: Vec<(SeqId, Vec<u32>)>,
    waiting: Vec<(SeqId, Vec<u32>)>,
    next: SeqId,
    store: Vec<Vec<Option<u32>>>,
}

impl RandomRun {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let bs = 1 + rng.below(4);
        let m = BlockManager::new(24 + rng.below(24), bs);
        let prefixes = (0..3)
            .map(|p| (0..(3 * bs + p)).map(|t| (p * 1000 + t) as u32).collect())
            .collect();
        let store = vec![vec![None; bs]; m.total_blocks()];
        Self {
            seed,
            rng,
            bs,
            m,
            prefixes,
            running: Vec::new(),
            waiting: Vec::new(),
            next: 0,
            store,
        }
    }

    /// Records `tokens[from..]` as written into `id`'s blocks (as garbage when `!ok`).
    fn write(&mut self, id: SeqId, tokens: &[u32], from: usize, ok: bool) {
        let table = self.m.table(id).unwrap();
        for (p, t) in tokens.iter().enumerate().skip(from) {
            self.store[table[p / self.bs] as usize][p % self.bs] = ok.then_some(*t);
        }
    }

    /// A waiting sequence again, or a new prompt from a shared prefix and random tokens.
    fn prompt(&mut self) -> Vec<u32> {
        match self.waiting.pop() {
            Some((_, t)) if self.rng.below(2) == 0 => t,
            other => {
                self.waiting.extend(other);
                let mut t = self.prefixes[self.rng.below(3)].clone();
                t.truncate(1 + self.rng.below(t.len()));
                let extra = self.rng.below(2 * self.bs);
                t.extend((0..extra).map(|_| self.rng.below(50) as u32));
                t
            }
        }
    }

    /// Admits a prompt when it fits (exactly when its cost is free), its step failing now
    /// and then.
    fn admit(&mut self, op: usize) {
        let (seed, bs, next) = (self.seed, self.bs, self.next);
        let tokens = self.prompt();
        let found = self.m.match_prefix(&tokens, (tokens.len() - 1) / bs);
        let cost = self.m.cost_with(&found, tokens.len());
        let before = self.m.free_blocks();
        let computed_from = found.len() * bs;
        let result = self.m.attach(next, found, tokens.len());
        assert_eq!(result.is_ok(), cost <= before, "seed {seed} op {op}");
        if result.is_err() {
            return;
        }
        assert_eq!(self.m.free_blocks(), before - cost, "seed {seed} op {op}");
        self.m.register(next, &tokens, tokens.len());
        let failed = self.rng.below(10) == 0;
        self.write(next, &tokens, computed_from, !failed);
        if failed {
            self.m.forget_step();
            self.m.release(next);
        } else {
            self.m.commit_step();
            self.running.push((next, tokens));
        }
        self.next += 1;
    }

    /// One decode token for a running sequence, which is preempted when no block is free.
    fn extend(&mut self) {
        let i = self.rng.below(self.running.len());
        let token = self.rng.below(50) as u32;
        let (id, mut tokens) = self.running.swap_remove(i);
        tokens.push(token);
        if self.m.ensure(id, tokens.len()).is_ok() {
            self.write(id, &tokens, tokens.len() - 1, true);
            self.m.register(id, &tokens, tokens.len());
            self.m.commit_step();
            self.running.push((id, tokens));
            let last = self.running.len() - 1;
            self.running.swap(i, last);
        } else {
            self.m.release(id);
            self.waiting.push((id, tokens));
        }
    }

    /// Releases a random running sequence, to wait again (preempted) or for good.
    fn release(&mut self, preempt: bool) {
        let (id, tokens) = self.running.swap_remove(self.rng.below(self.running.len()));
        self.m.release(id);
        if preempt {
            self.waiting.push((id, tokens));
        }
    }

    /// Every count is consistent, every running sequence's table covers its tokens, and what
    /// its blocks hold is its own tokens, shared blocks included.
    fn check(&self, op: usize) {
        let seed = self.seed;
        if let Err(e) = self.m.check_consistency() {
            panic!("seed {seed} op {op}: {e}");
        }
        for (id, tokens) in &self.running {
            assert!(self.m.capacity(*id) >= tokens.len(), "seed {seed} op {op}");
            let table = self.m.table(*id).unwrap();
            for (p, t) in tokens.iter().enumerate() {
                let held = self.store[table[p / self.bs] as usize][p % self.bs];
                assert_eq!(held, Some(*t), "seed {seed} op {op}: seq {id} position {p}");
            }
        }
    }
}

/// Random admissions (prompts built from a few shared prefixes), extensions (decode),
/// finishes, preemptions (release and re-admit later) and failed steps, with every count
/// checked after each operation.
#[test]
fn random_operations_keep_every_count_right() {
    for seed in 1..=20u64 {
        let mut run = RandomRun::new(seed);
        for op in 0..400 {
            let busy = !run.running.is_empty();
            match run.rng.below(6) {
                0 | 1 => run.admit(op),
                2 if busy => run.extend(),
                3 if busy => run.release(true),
                _ if busy => run.release(false),
                _ => {}
            }
            run.check(op);
        }
        for (id, _) in std::mem::take(&mut run.running) {
            run.m.release(id);
        }
        assert_eq!(
            run.m.free_blocks(),
            run.m.total_blocks(),
            "seed {seed}: all back"
        );
        run.m.check_consistency().unwrap();
    }
}
