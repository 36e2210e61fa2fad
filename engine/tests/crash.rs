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
    let rec = Recorder::new();
    let disk = MemDisk::new(BS, BLOCKS).with_volatile_cache(true);
    let mut dev = disk.bdev();
    dev.set_lifo_completions(lifo);
    let (mut s, _) = Shard::open(rec.wrap(dev), cfg()).expect("open");
    let mut rng = Rng(seed);
    let mut writes: Vec<W> = Vec::new();
    let mut pending: Vec<(usize, u64)> = Vec::new();
    for i in 0..1500usize {
        let k = rng.below(30);
        let key = format!("key{k:02}").into_bytes();
        let durable = rng.below(8) == 0;
        let opts = WriteOpts { ts: None, durable };
        // Values name their write, so a recovered value identifies exactly which write it came from.
        let (value, r) = if rng.below(10) == 0 {
            (None, s.delete(&key, opts).expect("delete"))
        } else {
            let len = 20 + rng.below(200) as usize;
            let mut v = format!("w{i:05}-").into_bytes();
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
    eprintln!("workload {seed:x}: {st:?}");
    assert!(
        st.gc_segments > 0 && st.checkpoints > 3,
        "workload must exercise GC and checkpoints"
    );
    (writes, rec.events())
}

/// The blocks of every write, as (write id, block number in the device, bytes).
fn apply(img: &mut [u8], lba: u64, data: &[u8]) {
    let at = lba as usize * BS as usize;
    img[at..at + data.len()].copy_from_slice(data);
}

fn check_image(img: &[u8], writes: &[W], pos: usize, what: &str) {
    let disk = MemDisk::from_image(BS, img);
    let (mut s, rep) = match Shard::open(disk.bdev(), cfg()) {
        Ok(x) => x,
        Err(e) => panic!("{what}: recovery failed: {e}"),
    };
    assert_eq!(rep.entries_dropped, 0, "{what}: {rep:?}");
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
                .map(|v| String::from_utf8_lossy(&v[..8.min(v.len())]).to_string()),
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

#[test]
fn crash_images_recover_durable_writes() {
    let mut images = 0usize;
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
        // `base`: every write covered by a completed flush so far, applied in submission order.
        let mut base = vec![0u8; BS as usize * BLOCKS as usize];
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
            let variants: Vec<Vec<bool>> = if units.len() <= 6 {
                (0..1u32 << units.len())
                    .map(|m| (0..units.len()).map(|i| m & (1 << i) != 0).collect())
                    .collect()
            } else {
                let mut v = vec![vec![false; units.len()], vec![true; units.len()]];
                // Prefixes of the stream in block order, and random subsets.
                for _ in 0..8 {
                    let cut = rng.below(units.len() as u64 + 1) as usize;
                    v.push((0..units.len()).map(|i| i < cut).collect());
                }
                for _ in 0..40 {
                    v.push((0..units.len()).map(|_| rng.below(2) == 0).collect());
                }
                v
            };
            for (vi, keep) in variants.iter().enumerate() {
                let mut img = base.clone();
                for ((lba, c), k) in units.iter().zip(keep) {
                    if *k {
                        apply(&mut img, *lba, c);
                    }
                }
                check_image(
                    &img,
                    &writes,
                    pos,
                    &format!("seed {seed:x} pos {pos} variant {vi}"),
                );
                images += 1;
            }
        }
    }
    eprintln!(
        "crash test: {images} images recovered and checked ({} events)",
        total_events
    );
    assert!(images >= 10_000, "only {images} images");
}
