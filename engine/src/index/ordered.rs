//! Key order for range scans, kept off the point-operation path: new keys are appended unsorted to a
//! staging list (their nodes are fresh in the arena, so this touches warm memory only), staging is sorted
//! into a run when it fills, and runs are merged in tiers (four runs of one size make one run of the
//! next), so each key is merged O(log n) times with sequential access and prefetched node reads. A scan
//! merges the runs. Removed keys stay in their run as zombie nodes until a merge drops them.

use super::arena::{prefix_of, Arena, ZOMBIE};

/// Staged keys sorted into a run at once.
const STAGE: usize = 1024;
/// Runs of one tier merged at once.
const FANOUT: usize = 4;
/// A fence (key prefix) is kept for every this many run entries, to start scans without node reads.
const FENCE_EVERY: usize = 16;

/// One sorted run of node references.
#[derive(Clone, Default)]
struct Run {
    refs: Vec<u32>,
    /// Key prefix of `refs[i * FENCE_EVERY]`.
    fences: Vec<u64>,
    tier: u32,
}

impl Run {
    fn new(refs: Vec<u32>, arena: &Arena, tier: u32) -> Self {
        let fences = refs
            .iter()
            .step_by(FENCE_EVERY)
            .map(|&r| arena.prefix(r))
            .collect();
        Run { refs, fences, tier }
    }

    /// The window `[lo, hi)` holding the first key `>= k` (or `hi` itself), from the fences alone.
    fn window(&self, k: &[u8]) -> (usize, usize) {
        let p = prefix_of(k);
        // Prefixes order as keys do (ties aside): blocks whose fence prefix is below `k`'s start below
        // `k`, and those whose fence prefix is above start above it; the answer lies between.
        let f = self.fences.partition_point(|&x| x < p);
        let g = self.fences.partition_point(|&x| x <= p);
        let lo = f.saturating_sub(1) * FENCE_EVERY;
        (lo, (g * FENCE_EVERY).min(self.refs.len()))
    }
}

/// Positions of the first key `>= k` in every run. The binary searches run in lockstep, each round
/// prefetching every run's probe first, so the node reads of different runs overlap.
fn lower_bounds(runs: &[Run], arena: &Arena, k: &[u8]) -> Vec<usize> {
    let mut st: Vec<(usize, usize)> = runs
        .iter()
        .map(|r| {
            let (lo, hi) = r.window(k);
            (lo, hi - lo)
        })
        .collect();
    loop {
        let mut active = false;
        for (r, &(lo, len)) in runs.iter().zip(&st) {
            if len > 0 {
                arena.prefetch(r.refs[lo + len / 2]);
                active = true;
            }
        }
        if !active {
            break;
        }
        for (r, (lo, len)) in runs.iter().zip(st.iter_mut()) {
            if *len > 0 {
                let half = *len / 2;
                let mid = *lo + half;
                if arena.key(r.refs[mid]) < k {
                    *lo = mid + 1;
                    *len -= half + 1;
                } else {
                    *len = half;
                }
            }
        }
    }
    st.into_iter().map(|(lo, _)| lo).collect()
}

/// The head of one input of a merge: its next node and that node's key prefix (compared without a
/// node read; only equal prefixes compare the keys).
#[derive(Clone, Copy)]
struct Head {
    prefix: u64,
    r: u32,
}

impl Head {
    fn less(&self, o: &Head, arena: &Arena) -> bool {
        self.prefix < o.prefix || (self.prefix == o.prefix && arena.key(self.r) < arena.key(o.r))
    }
}

/// Adds and removals per merge step: the others do no merge work, which keeps the typical put cheap.
const MERGE_EVERY: u32 = 128;
/// References a merge step moves (or zombie nodes it frees) at most: about 100-200 µs of work, so no
/// operation waits for a whole merge, and fewer than 1 in 100 operations does any. At 4096 per 128
/// operations (32 per key added), merges keep up
/// with any index 32-bit references can address (a key is merged about log4(keys / 1024) times).
const MERGE_REFS: usize = 4096;

/// A merge in progress: runs `from..from + count` into `out`, a step at a time. Its inputs stay in
/// the list (scans read them) until the output replaces them whole.
struct Merge {
    from: usize,
    count: usize,
    tier: u32,
    pos: Vec<usize>,
    heads: Vec<Option<Head>>,
    out: Vec<u32>,
    fences: Vec<u64>,
    /// Zombie nodes the output leaves out: freed once the inputs are gone.
    dropped: Vec<u32>,
}

/// The ordered view of the index.
#[derive(Default)]
pub struct Ordered {
    staging: Vec<u32>,
    runs: Vec<Run>,
    merging: Option<Merge>,
    /// Zombie nodes no run references any more, freed a step at a time.
    to_free: Vec<u32>,
    /// Operations since the last merge step.
    tick: u32,
    /// Zombie nodes still referenced (freed when a merge drops them).
    pub zombies: usize,
}

impl Clone for Ordered {
    fn clone(&self) -> Self {
        // A merge in progress is not copied (its inputs are): the copy starts over when it wants one.
        Ordered {
            staging: self.staging.clone(),
            runs: self.runs.clone(),
            merging: None,
            to_free: self.to_free.clone(),
            tick: 0,
            zombies: self.zombies,
        }
    }
}

impl Ordered {
    /// Adds a new key's node.
    pub fn add(&mut self, arena: &mut Arena, r: u32) {
        self.staging.push(r);
        if self.staging.len() >= STAGE {
            self.flush(arena);
        }
        self.tick(arena);
    }

    /// Notes that a node became a zombie; compacts (a merge of every run) when zombies dominate.
    pub fn note_zombie(&mut self, arena: &mut Arena, live: usize) {
        self.zombies += 1;
        if self.merging.is_none() && self.zombies > STAGE && self.zombies > live {
            self.flush(arena);
            if self.runs.len() > 1 || (self.runs.len() == 1 && self.zombies > self.to_free.len()) {
                let tier = self.runs.iter().map(|r| r.tier).max().unwrap_or(0);
                self.start_merge(arena, 0, self.runs.len(), tier);
            }
        }
        self.tick(arena);
    }

    /// One operation: every [`MERGE_EVERY`]th does a bounded step of background work.
    fn tick(&mut self, arena: &mut Arena) {
        self.tick += 1;
        if self.tick >= MERGE_EVERY {
            self.tick = 0;
            self.step(arena, MERGE_REFS);
        }
    }

    /// Sorts the staged keys into a run (at most [`STAGE`] of them: bounded work).
    pub fn flush(&mut self, arena: &mut Arena) {
        if self.staging.is_empty() {
            return;
        }
        let mut s = std::mem::take(&mut self.staging);
        self.drop_zombies(arena, &mut s);
        let mut keyed: Vec<(u64, u32)> = s.iter().map(|&r| (arena.prefix(r), r)).collect();
        keyed.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| arena.key(a.1).cmp(arena.key(b.1)))
        });
        s.clear();
        s.extend(keyed.iter().map(|&(_, r)| r));
        self.runs.push(Run::new(s, arena, 0));
    }

    fn drop_zombies(&mut self, arena: &mut Arena, refs: &mut Vec<u32>) {
        refs.retain(|&r| {
            if arena.loc(r) == ZOMBIE {
                arena.free(r);
                self.zombies -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Background work of at most about `budget` references: frees dropped zombies, advances the merge
    /// in progress, or starts the next one (the lowest tier with [`FANOUT`] runs side by side).
    fn step(&mut self, arena: &mut Arena, budget: usize) {
        if !self.to_free.is_empty() {
            let n = self.to_free.len().min(budget);
            for r in self.to_free.drain(self.to_free.len() - n..) {
                arena.free(r);
                self.zombies -= 1;
            }
            return;
        }
        if self.merging.is_none() {
            let mut best: Option<(u32, usize)> = None;
            for (i, w) in self.runs.windows(FANOUT).enumerate() {
                let t = w[0].tier;
                if w.iter().all(|r| r.tier == t) && best.is_none_or(|(bt, _)| t < bt) {
                    best = Some((t, i));
                }
            }
            match best {
                Some((t, i)) => self.start_merge(arena, i, FANOUT, t + 1),
                None => return,
            }
        }
        self.advance(arena, budget);
    }

    fn start_merge(&mut self, arena: &Arena, from: usize, count: usize, tier: u32) {
        const AHEAD: usize = 16;
        let inputs = &self.runs[from..from + count];
        let total: usize = inputs.iter().map(|r| r.refs.len()).sum();
        let mut heads = Vec::with_capacity(count);
        for r in inputs {
            for &x in r.refs.iter().take(AHEAD) {
                arena.prefetch(x);
            }
            heads.push(r.refs.first().map(|&x| Head {
                prefix: arena.prefix(x),
                r: x,
            }));
        }
        self.merging = Some(Merge {
            from,
            count,
            tier,
            pos: vec![0; count],
            heads,
            // Allocated whole now (the allocator maps its pages as they are written).
            out: Vec::with_capacity(total),
            fences: Vec::with_capacity(total / FENCE_EVERY + 1),
            dropped: Vec::new(),
        });
    }

    /// Moves up to `budget` references of the merge in progress; replaces its inputs when done.
    fn advance(&mut self, arena: &Arena, budget: usize) {
        const AHEAD: usize = 16;
        let Some(m) = self.merging.as_mut() else {
            return;
        };
        let runs = &self.runs[m.from..m.from + m.count];
        for _ in 0..budget {
            let mut best: Option<usize> = None;
            for (i, h) in m.heads.iter().enumerate() {
                if let Some(h) = h {
                    match best {
                        Some(b) if !h.less(m.heads[b].as_ref().expect("best is a head"), arena) => {
                        }
                        _ => best = Some(i),
                    }
                }
            }
            let Some(i) = best else { break };
            let head = m.heads[i].expect("best is a head");
            m.pos[i] += 1;
            let refs = &runs[i].refs;
            if let Some(&ahead) = refs.get(m.pos[i] + AHEAD) {
                arena.prefetch(ahead);
            }
            m.heads[i] = refs.get(m.pos[i]).map(|&y| Head {
                prefix: arena.prefix(y),
                r: y,
            });
            if arena.loc(head.r) == ZOMBIE {
                m.dropped.push(head.r);
            } else {
                if m.out.len() % FENCE_EVERY == 0 {
                    m.fences.push(head.prefix);
                }
                m.out.push(head.r);
            }
        }
        if m.heads.iter().any(Option::is_some) {
            return;
        }
        let Some(m) = self.merging.take() else { return };
        let merged = Run {
            refs: m.out,
            fences: m.fences,
            tier: m.tier,
        };
        self.runs
            .splice(m.from..m.from + m.count, std::iter::once(merged));
        self.to_free.extend(m.dropped);
    }

    /// Keys in `[start, end)` in order (the caller flushed staging), as live node references.
    pub fn range<'a>(
        &'a self,
        arena: &'a Arena,
        start: &[u8],
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = u32> + 'a {
        debug_assert!(self.staging.is_empty());
        // Nodes a scan will read next, per run: asked for ahead so that their reads overlap.
        const AHEAD: usize = 3;
        let mut pos = lower_bounds(&self.runs, arena, start);
        for (r, &p) in self.runs.iter().zip(&pos) {
            for &x in r.refs.iter().skip(p + 1).take(AHEAD) {
                arena.prefetch(x);
            }
        }
        let head = |i: usize, p: usize| {
            self.runs[i].refs.get(p).map(|&r| Head {
                prefix: arena.prefix(r),
                r,
            })
        };
        let mut heads: Vec<Option<Head>> =
            pos.iter().enumerate().map(|(i, &p)| head(i, p)).collect();
        std::iter::from_fn(move || loop {
            let mut best: Option<usize> = None;
            for (i, h) in heads.iter().enumerate() {
                if let Some(h) = h {
                    match best {
                        Some(b) if !h.less(heads[b].as_ref().expect("best is a head"), arena) => {}
                        _ => best = Some(i),
                    }
                }
            }
            let i = best?;
            let x = heads[i].map_or(0, |h| h.r);
            pos[i] += 1;
            if let Some(&ahead) = self.runs[i].refs.get(pos[i] + AHEAD) {
                arena.prefetch(ahead);
            }
            heads[i] = head(i, pos[i]);
            if end.is_some_and(|e| arena.key(x) >= e) {
                return None;
            }
            if arena.loc(x) != ZOMBIE {
                return Some(x);
            }
        })
    }

    /// Number of sorted runs.
    #[cfg(test)]
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// True when staged keys wait to be sorted.
    pub fn has_staged(&self) -> bool {
        !self.staging.is_empty()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        let merging = self.merging.as_ref().map_or(0, |m| {
            m.out.capacity() * 4 + m.fences.capacity() * 8 + m.dropped.capacity() * 4
        });
        merging
            + self.to_free.capacity() * 4
            + self.staging.capacity() * 4
            + self.runs.capacity() * std::mem::size_of::<Run>()
            + self
                .runs
                .iter()
                .map(|r| r.refs.capacity() * 4 + r.fences.capacity() * 8)
                .sum::<usize>()
    }

    /// Debug check: every run sorted, no key twice among live nodes.
    #[cfg(debug_assertions)]
    pub fn check(&self, arena: &Arena) {
        for r in &self.runs {
            for w in r.refs.windows(2) {
                assert!(arena.key(w[0]) <= arena.key(w[1]), "run out of order");
            }
        }
    }
}
