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
                prefetch(arena, r.refs[lo + len / 2]);
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

/// Asks for node `r`'s line ahead of its use (merges know their next nodes long before comparing them).
fn prefetch(arena: &Arena, r: u32) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = arena.node_ptr(r);
        // SAFETY: prefetching is only a hint; it never faults, and `p` points into a live chunk anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (arena, r);
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

/// The ordered view of the index.
#[derive(Clone, Default)]
pub struct Ordered {
    staging: Vec<u32>,
    runs: Vec<Run>,
    /// Zombie nodes still referenced (freed when a merge drops them).
    pub zombies: usize,
}

impl Ordered {
    /// Adds a new key's node.
    pub fn add(&mut self, arena: &mut Arena, r: u32) {
        self.staging.push(r);
        if self.staging.len() >= STAGE {
            self.flush(arena);
        }
    }

    /// Notes that a node became a zombie; compacts when zombies dominate.
    pub fn note_zombie(&mut self, arena: &mut Arena, live: usize) {
        self.zombies += 1;
        if self.zombies > STAGE && self.zombies > live {
            self.merge_all(arena);
        }
    }

    /// Sorts the staged keys into a run and merges full tiers.
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
        loop {
            let n = self.runs.len();
            if n < FANOUT
                || self.runs[n - FANOUT..]
                    .iter()
                    .any(|r| r.tier != self.runs[n - 1].tier)
            {
                break;
            }
            let tier = self.runs[n - 1].tier + 1;
            let merged = self.merge(arena, n - FANOUT);
            self.runs.push(Run::new(merged, arena, tier));
        }
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

    /// Merges runs `from..` into one sorted list (zombies dropped and freed) and removes them.
    fn merge(&mut self, arena: &mut Arena, from: usize) -> Vec<u32> {
        const AHEAD: usize = 16;
        let runs: Vec<Run> = self.runs.drain(from..).collect();
        let total: usize = runs.iter().map(|r| r.refs.len()).sum();
        let mut out = Vec::with_capacity(total);
        let mut pos = vec![0usize; runs.len()];
        let mut heads: Vec<Option<Head>> = Vec::with_capacity(runs.len());
        for r in &runs {
            for &x in r.refs.iter().take(AHEAD) {
                prefetch(arena, x);
            }
            heads.push(r.refs.first().map(|&x| Head {
                prefix: arena.prefix(x),
                r: x,
            }));
        }
        loop {
            let mut best: Option<usize> = None;
            for (i, h) in heads.iter().enumerate() {
                if let Some(h) = h {
                    match best {
                        Some(b) if !h.less(heads[b].as_ref().expect("best is a head"), arena) => {}
                        _ => best = Some(i),
                    }
                }
            }
            let Some(i) = best else { break };
            let x = heads[i].map_or(0, |h| h.r);
            pos[i] += 1;
            let refs = &runs[i].refs;
            if let Some(&ahead) = refs.get(pos[i] + AHEAD) {
                prefetch(arena, ahead);
            }
            heads[i] = refs.get(pos[i]).map(|&y| Head {
                prefix: arena.prefix(y),
                r: y,
            });
            if arena.loc(x) == ZOMBIE {
                arena.free(x);
                self.zombies -= 1;
            } else {
                out.push(x);
            }
        }
        out
    }

    /// Merges everything into one run (dropping all zombies).
    pub fn merge_all(&mut self, arena: &mut Arena) {
        self.flush(arena);
        if self.runs.len() > 1 || self.zombies > 0 {
            let tier = self.runs.iter().map(|r| r.tier).max().unwrap_or(0);
            let merged = self.merge(arena, 0);
            self.runs.push(Run::new(merged, arena, tier));
        }
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
                prefetch(arena, x);
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
                prefetch(arena, ahead);
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

    /// True when staged keys wait to be sorted.
    pub fn has_staged(&self) -> bool {
        !self.staging.is_empty()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.staging.capacity() * 4
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
