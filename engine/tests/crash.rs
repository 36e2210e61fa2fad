//! Crash tests: a workload runs on a recording device (with a volatile write cache, so the engine must
//! Flush); then disk images are rebuilt from every prefix of the recorded write stream, each combined with
//! allowed outcomes of the writes not yet covered by a completed flush (any subset of their blocks: lost,
//! reordered or torn). Every image must recover without error; every write acknowledged as durable before
//! the crash point must be there; nothing returned may be a value never written for that key, or older
//! than the last durable one.

use std::collections::{BTreeMap, HashMap, HashSet};

use nvkv::bdev::{MemDisk, Recorder, WriteEvent};
use nvkv::{Shard, ShardConfig, WriteOpts};

const BS: u32 = 512;
const BLOCKS: u64 = 640;

fn cfg() -> ShardConfig {
    ShardConfig {
        buffer_bytes: 4096,
        checkpoint_every: 3,
        // Clean whenever a segment has dead bytes, so crashes land in the middle of GC too.
        gc_free_low: 0.99,
        commit_interval: std::time::Duration::from_secs(3600),
        ..Default::default()
    }
}

/// A small deterministic generator (the test must replay the same workload every run).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One write of the workload: key, value (None = delete), and where in the event stream its durable
/// acknowledgement arrived (None: not acknowledged as durable).
struct W {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    acked_at: Option<usize>,
}

/// `lifo`: the device completes the newest request first, so segment writes complete out of order.
fn workload(seed: u64, lifo: bool) -> (Vec<W>, Vec<WriteEvent>) {
    run(MemDisk::new(BS, BLOCKS), seed, lifo, 1500, Vec::new())
}

/// Runs `ops` random operations on a shard over `disk` (recorded), after the writes `before` (the
/// state an earlier life left, all durable). Returns every write and the events.
fn run(
    disk: MemDisk,
    seed: u64,
    lifo: bool,
    ops: usize,
    before: Vec<W>,
) -> (Vec<W>, Vec<WriteEvent>) {
    let rec = Recorder::new();
    let disk = disk.with_volatile_cache(true);
    let mut dev = disk.bdev();
    dev.set_lifo_completions(lifo);
    let (mut s, _) = Shard::open(rec.wrap(dev), cfg()).expect("open");
    let mut rng = Rng(seed);
    let mut writes: Vec<W> = before;
    let mut pending: Vec<(usize, u64)> = Vec::new();
    for i in 0..ops {
        let k = rng.below(30);
        let key = format!("key{k:02}").into_bytes();
        let durable = rng.below(8) == 0;
        let opts = WriteOpts { ts: None, durable };
        // Values name their write, so a recovered value identifies exactly which write it came from.
        let (value, r) = if rng.below(10) == 0 {
            (None, s.delete(&key, opts).expect("delete"))
        } else {
            let len = 20 + rng.below(200) as usize;
            let mut v = format!("w{seed:x}-{i:05}-").into_bytes();
            v.resize(len, b'a' + (i % 26) as u8);
            let r = s.put(&key, &v, opts).expect("put");
            (Some(v), r)
        };
        if !r.applied {
            continue;
        }
        writes.push(W {
            key,
            value,
            acked_at: None,
        });
        if durable {
            pending.push((writes.len() - 1, r.gen));
        }
        if rng.below(25) == 0 || (durable && rng.below(3) == 0) {
            // The client waits for its durable writes: the acknowledgement point is recorded.
            for (w, gen) in pending.drain(..) {
                s.wait_durable(gen).expect("wait");
                writes[w].acked_at = Some(rec.position());
            }
        }
        s.tick().expect("tick");
    }
    let st = s.stats();
    if ops >= 1000 {
        eprintln!("workload {seed:x}: {st:?}");
        assert!(
            st.gc_segments > 0 && st.checkpoints > 3,
            "workload must exercise GC and checkpoints"
        );
    }
    (writes, rec.events())
}

/// The state a recovered image holds, as writes durable from the start of the next life.
fn recovered_state(img: &[u8]) -> Vec<W> {
    let (mut s, _) = Shard::open(MemDisk::from_image(BS, img).bdev(), cfg()).expect("recover");
    (0..30u64)
        .map(|k| {
            let key = format!("key{k:02}").into_bytes();
            let value = s.get(&key).expect("get").map(|x| x.0);
            W {
                key,
                value,
                acked_at: Some(0),
            }
        })
        .collect()
}

fn apply(img: &mut [u8], lba: u64, data: &[u8]) {
    let at = lba as usize * BS as usize;
    img[at..at + data.len()].copy_from_slice(data);
}

/// Calls `f(image, pos)` for crash images of `events` applied on `start`: at every `every`-th prefix
/// of the stream, the writes covered by a completed flush applied, combined with outcomes of the writes
/// not yet covered (any subset of their blocks: lost, reordered or torn; all subsets when few, else
/// `samples` random ones besides none, all and prefixes).
fn crash_images(
    start: &[u8],
    events: &[WriteEvent],
    rng: &mut Rng,
    every: usize,
    samples: usize,
    mut f: impl FnMut(&[u8], usize),
) {
    let mut base = start.to_vec();
    let mut data: HashMap<usize, (u64, std::sync::Arc<Vec<u8>>)> = HashMap::new();
    let mut uncovered: Vec<usize> = Vec::new();
    let mut covered: HashSet<usize> = HashSet::new();
    for pos in 0..=events.len() {
        if pos > 0 {
            match &events[pos - 1] {
                WriteEvent::Write { id, lba, data: d } => {
                    data.insert(*id, (*lba, d.clone()));
                    uncovered.push(*id);
                }
                WriteEvent::FlushDone { covers } => {
                    let mut ids: Vec<usize> = covers.clone();
                    ids.sort_unstable();
                    for id in ids {
                        if covered.insert(id) {
                            let (lba, d) = &data[&id];
                            apply(&mut base, *lba, d);
                        }
                    }
                    uncovered.retain(|id| !covered.contains(id));
                }
            }
        }
        if pos % every != 0 {
            continue;
        }
        // The blocks that may or may not have reached the medium.
        let units: Vec<(u64, &[u8])> = uncovered
            .iter()
            .flat_map(|id| {
                let (lba, d) = &data[id];
                d.chunks(BS as usize)
                    .enumerate()
                    .map(move |(i, c)| (lba + i as u64, c))
            })
            .collect();
        let variants: Vec<Vec<bool>> = if units.len() <= 6 && samples >= 40 {
            (0..1u32 << units.len())
                .map(|m| (0..units.len()).map(|i| m & (1 << i) != 0).collect())
                .collect()
        } else {
            let mut v = vec![vec![false; units.len()], vec![true; units.len()]];
            // Prefixes of the stream in block order, and random subsets.
            for _ in 0..samples / 5 {
                let cut = rng.below(units.len() as u64 + 1) as usize;
                v.push((0..units.len()).map(|i| i < cut).collect());
            }
            for _ in 0..samples {
                v.push((0..units.len()).map(|_| rng.below(2) == 0).collect());
            }
            v
        };
        for keep in &variants {
            let mut img = base.clone();
            for ((lba, c), k) in units.iter().zip(keep) {
                if *k {
                    apply(&mut img, *lba, c);
                }
            }
            f(&img, pos);
        }
    }
}

fn check_image(img: &[u8], writes: &[W], pos: usize, what: &str) {
    let disk = MemDisk::from_image(BS, img);
    let (mut s, rep) = match Shard::open(disk.bdev(), cfg()) {
        Ok(x) => x,
        Err(e) => panic!("{what}: recovery failed: {e}"),
    };
    assert!(!rep.checkpoint_fallback, "{what}: {rep:?}");
    // Per key: the writes in order, and the last one acknowledged durable by `pos`.
    let mut by_key: BTreeMap<&[u8], Vec<(usize, &W)>> = BTreeMap::new();
    for (i, w) in writes.iter().enumerate() {
        by_key.entry(&w.key).or_default().push((i, w));
    }
    for (key, ws) in &by_key {
        let got = match s.get(key) {
            Ok(v) => v.map(|x| x.0),
            Err(e) => panic!("{what}: get {:?} failed: {e}", String::from_utf8_lossy(key)),
        };
        let last_durable = ws
            .iter()
            .rposition(|(_, w)| w.acked_at.is_some_and(|a| a <= pos));
        let allowed: Vec<&Option<Vec<u8>>> = match last_durable {
            Some(d) => ws[d..].iter().map(|(_, w)| &w.value).collect(),
            // Nothing durable yet: absent, or any write that may have reached the disk.
            None => std::iter::once(&None)
                .chain(ws.iter().map(|(_, w)| &w.value))
                .collect(),
        };
        assert!(
            allowed.contains(&&got),
            "{what}: key {:?} recovered {:?}, allowed {} values from write {:?}",
            String::from_utf8_lossy(key),
            got.as_ref()
                .map(|v| String::from_utf8_lossy(&v[..14.min(v.len())]).to_string()),
            allowed.len(),
            last_durable.map(|d| ws[d].0)
        );
    }
    // Nothing else.
    for (k, _) in s.scan(b"", None, 10_000).expect("scan") {
        assert!(
            by_key.contains_key(k.as_slice()),
            "{what}: unknown key {k:?}"
        );
    }
}

/// From a crash image, a next life: recover, write more (crash images of that checked too), and,
/// `depth` times, crash again from one of those images. No clean shutdown between two crashes.
fn chain(img: &[u8], seed: u64, lifo: bool, depth: u32, what: &str, images: &mut usize) {
    let before = recovered_state(img);
    let (writes, events) = run(MemDisk::from_image(BS, img), seed, lifo, 200, before);
    let mut rng = Rng(seed ^ 0xaaaa);
    let mut pick = Rng(seed ^ 0x7777);
    let mut next: Vec<(Vec<u8>, usize)> = Vec::new();
    crash_images(img, &events, &mut rng, 5, 6, |img2, pos| {
        check_image(img2, &writes, pos, &format!("{what} > crash at {pos}"));
        *images += 1;
        if depth > 0 && pick.below(40) == 0 {
            next.push((img2.to_vec(), pos));
        }
    });
    for (i, (img2, pos)) in next.into_iter().enumerate().take(3) {
        chain(
            &img2,
            seed.wrapping_mul(31).wrapping_add(i as u64 + 1),
            lifo,
            depth - 1,
            &format!("{what} > crash at {pos}"),
            images,
        );
    }
}

#[test]
fn crash_images_recover_durable_writes() {
    let mut images = 0usize;
    let mut multi = 0usize;
    let mut total_events = 0usize;
    for (seed, lifo) in [
        (0x9e37_79b9_7f4a_7c15u64, false),
        (0x0123_4567_89ab_cdef, false),
        (0x00c0_ffee_d00d_f00d, true),
    ] {
        let (writes, events) = workload(seed, lifo);
        total_events += events.len();
        let durable = writes.iter().filter(|w| w.acked_at.is_some()).count();
        assert!(durable > 10, "workload acknowledged too few durable writes");
        let mut rng = Rng(seed ^ 0x5555);
        let mut starts: Vec<(Vec<u8>, usize)> = Vec::new();
        let blank = vec![0u8; BS as usize * BLOCKS as usize];
        crash_images(&blank, &events, &mut rng, 1, 40, |img, pos| {
            check_image(img, &writes, pos, &format!("seed {seed:x} pos {pos}"));
            images += 1;
            if pos % 97 == 13 && starts.last().is_none_or(|s| s.1 != pos) {
                starts.push((img.to_vec(), pos));
            }
        });
        for (i, (img, pos)) in starts.iter().enumerate() {
            chain(
                img,
                seed ^ (i as u64 + 1),
                lifo,
                1,
                &format!("seed {seed:x} crash at {pos}"),
                &mut multi,
            );
        }
    }
    eprintln!(
        "crash test: {} images recovered and checked ({images} after one crash, {multi} after two or \
         three in a row; {total_events} events in the first lives)",
        images + multi
    );
    assert!(images + multi >= 10_000, "only {} images", images + multi);
    assert!(
        multi * 3 >= images + multi,
        "only {multi} multi-crash images"
    );
}
