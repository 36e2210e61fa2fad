//! Engine figures on the memory backend: shard-local put latency (p50/p99/p99.9), put and get throughput
//! on the shard-local path and through the handle (one client thread, one shard thread), index memory per
//! key, and recovery speed. Prints figures; asserts nothing. Run in release:
//!
//! ```text
//! cargo run --release -p nvkv --example engine_bench [-- KEYS [fill [file] | churn | durable]]
//! ```
//!
//! `fill` stops after the fill; `fill file` runs it on the file backend instead (O_DIRECT through
//! io_uring on a file in the current directory), where the device's copy is not on the shard's thread
//! as the memory backend's is. `churn` follows the fill with KEYS overwrites and deletes of random keys
//! with values of 60 to 139 bytes, so buffered records die and buffers hold dead bytes when sealed.
//! `durable` times KEYS durable puts one at a time through the handle on the file backend (a file in
//! the current directory, written once beforehand so no block is fresh), the shard sleeping while its
//! I/O is in flight (the default) against a busy-polling one, alternating 5 rounds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use nvkv::bdev::{BlockDevice, FileDisk, MemDisk};
use nvkv::index::{Entry, Index};
use nvkv::{Db, Options, Shard, ShardConfig, WriteOpts};

/// Counts live heap bytes, to measure the index's memory per key.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The key `nvkv-bench kv-host` uses: 16 hex characters of a hashed counter (random insertion order).
fn key(i: u64) -> [u8; 16] {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29) ^ i;
    let mut k = [0u8; 16];
    k.copy_from_slice(format!("{h:016x}").as_bytes());
    k
}

/// xorshift64*, for random read orders.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0)
}

fn report(what: &str, lat: &mut [u64], secs: f64) {
    lat.sort_unstable();
    println!(
        "{what}: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns ({} over 1 ms); {:.0} ops/s",
        pct(lat, 0.5),
        pct(lat, 0.99),
        pct(lat, 0.999),
        lat.last().copied().unwrap_or(0),
        lat.iter().filter(|&&ns| ns > 1_000_000).count(),
        lat.len() as f64 / secs
    );
}

/// The shard-local fill: every key once, in the keys' (random) order; returns each put's latency (ns).
fn fill<D: BlockDevice>(s: &mut Shard<D>, keys: &[[u8; 16]], value: &[u8]) -> (Vec<u64>, f64) {
    let mut lat = Vec::with_capacity(keys.len());
    let t0 = Instant::now();
    for k in keys {
        let t = Instant::now();
        if let Err(e) = s.put(k, value, WriteOpts::default()) {
            panic!("put: {e}: {:?}", s.stats());
        }
        lat.push(t.elapsed().as_nanos() as u64);
    }
    (lat, t0.elapsed().as_secs_f64())
}

/// What the fill's longest puts did: seal a full buffer (the shard's own work), or wait for the device.
fn print_seals<D: BlockDevice>(s: &Shard<D>) {
    let st = s.stats();
    println!(
        "  seals {}: mean {} us, longest {} us; waits for the device {}: total {} us, longest {} us",
        st.seals,
        st.seal_ns_total / st.seals.max(1) / 1000,
        st.seal_ns_max / 1000,
        st.device_waits,
        st.device_wait_ns_total / 1000,
        st.device_wait_ns_max / 1000
    );
}

fn print_tail(lat: &[u64]) {
    let q: Vec<String> = [0.9, 0.95, 0.98, 0.99, 0.995, 0.998]
        .iter()
        .map(|&p| format!("p{} {} ns", p * 100.0, pct(lat, p)))
        .collect();
    println!("  {}", q.join(", "));
}

/// Durable puts one at a time on the file backend: a shard that sleeps while its I/O is in flight
/// (the default) against one that busy-polls, alternating.
fn durable_on_file(n: u64) {
    let path = std::path::Path::new("engine_bench_durable.img");
    let size: u64 = 256 << 20;
    // Written once: a Flush after writes into blocks never written costs a journal commit too.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(path).expect("create the file");
        let zeroes = vec![0u8; 1 << 20];
        for _ in 0..size >> 20 {
            f.write_all(&zeroes).expect("write the file");
        }
        f.sync_all().expect("sync the file");
    }
    println!(
        "durable puts one at a time through the handle: file backend ({}, written once before), \
         1 shard, 1 ms commit interval, 16 B keys, 100 B values, {n} puts per round, 5 rounds \
         alternating; each durable put is a segment write and an fdatasync",
        path.display()
    );
    let value = [7u8; 100];
    let keys: Vec<[u8; 16]> = (0..n).map(key).collect();
    let mut got: [Vec<(f64, u64, u64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..5 {
        for busy in [round % 2 == 1, round % 2 == 0] {
            let mut o = Options::file(path, None);
            o.shards = 1;
            o.commit_interval = Duration::from_millis(1);
            o.busy_poll = busy;
            let db = Db::open(o).expect("open");
            let h = db.handle();
            let opts = WriteOpts {
                durable: true,
                ..WriteOpts::default()
            };
            let mut lat = Vec::with_capacity(keys.len());
            let t0 = Instant::now();
            for k in &keys {
                let t = Instant::now();
                h.put_opts(k, &value, opts).expect("durable put");
                lat.push(t.elapsed().as_nanos() as u64);
            }
            let secs = t0.elapsed().as_secs_f64();
            db.close().expect("close");
            lat.sort_unstable();
            got[usize::from(busy)].push((n as f64 / secs, pct(&lat, 0.5), pct(&lat, 0.99)));
        }
    }
    for (i, name) in ["sleeping shard (default)", "busy-polling shard"]
        .iter()
        .enumerate()
    {
        let mut ops: Vec<f64> = got[i].iter().map(|g| g.0).collect();
        let mut p50: Vec<u64> = got[i].iter().map(|g| g.1).collect();
        let mut p99: Vec<u64> = got[i].iter().map(|g| g.2).collect();
        ops.sort_by(f64::total_cmp);
        p50.sort_unstable();
        p99.sort_unstable();
        println!(
            "  {name:<25} {:>6.0} puts/s ({:.0}-{:.0}), p50 {} µs ({}-{}), p99 {} µs; medians of 5",
            ops[2],
            ops[0],
            ops[4],
            p50[2] / 1000,
            p50[0] / 1000,
            p50[4] / 1000,
            p99[2] / 1000
        );
    }
    // Scratch: a failure to remove it leaves a file behind, nothing else.
    let _ = std::fs::remove_file(path);
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let value = [7u8; 100];
    // Enough room for n records of 148 bytes, twice over, plus checkpoints.
    let blocks = (n * 148 * 3 / 4096 + 4096).max(16384);
    if std::env::args().nth(2).as_deref() == Some("durable") {
        durable_on_file(n);
        return;
    }
    let on_file = std::env::args().nth(3).as_deref() == Some("file");
    println!(
        "nvkv engine bench: {n} keys, 16 B keys, 100 B values, {} backend, 4 KiB blocks",
        if on_file { "file" } else { "memory" }
    );

    // Shard-local put latency (no ticks, as in `nvkv-bench kv-host`: buffer-full cycles only).
    let cfg = ShardConfig {
        buffer_bytes: 1 << 20,
        checkpoint_every: 1 << 30,
        ..Default::default()
    };
    let keys: Vec<[u8; 16]> = (0..n).map(key).collect();
    if on_file {
        let path = std::path::Path::new("engine_bench.img");
        let disk = FileDisk::open(path, Some(blocks * 4096)).expect("open the file");
        let (mut s, _) = Shard::open(disk.bdev(), cfg).expect("open");
        let (mut lat, secs) = fill(&mut s, &keys, &value);
        report("local put (fill, random order)", &mut lat, secs);
        print_tail(&lat);
        print_seals(&s);
        drop(s);
        // The image is scratch: a failure to remove it leaves a file behind, nothing else.
        let _ = std::fs::remove_file(path);
        return;
    }
    let disk = MemDisk::new(4096, blocks);
    let (mut s, _) = Shard::open(disk.bdev(), cfg.clone()).expect("open");
    let (mut lat, secs) = fill(&mut s, &keys, &value);
    report("local put (fill, random order)", &mut lat, secs);
    if std::env::args().nth(2).as_deref() == Some("fill") {
        print_tail(&lat);
        print_seals(&s);
        // Profiling aid: the fill only.
        return;
    }
    if std::env::args().nth(2).as_deref() == Some("churn") {
        let before = s.stats();
        let mut rng = Rng(11);
        let values: Vec<Vec<u8>> = (60..140).map(|n| vec![5u8; n]).collect();
        lat.clear();
        let t0 = Instant::now();
        for _ in 0..n {
            let k = &keys[rng.below(n) as usize];
            let r = rng.below(10);
            let t = Instant::now();
            let done = if r == 0 {
                s.delete(k, WriteOpts::default()).map(|_| ())
            } else {
                let v = &values[rng.below(values.len() as u64) as usize];
                s.put(k, v, WriteOpts::default()).map(|_| ())
            };
            lat.push(t.elapsed().as_nanos() as u64);
            if let Err(e) = done {
                panic!("churn: {e}: {:?}", s.stats());
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        report(
            "local churn (90% puts of 60-139 B, 10% deletes, random keys)",
            &mut lat,
            secs,
        );
        print_tail(&lat);
        print_seals(&s);
        let st = s.stats();
        println!(
            "  buffer bytes saved {} (in place and compacted), GC segments {}",
            st.buffer_bytes_saved - before.buffer_bytes_saved,
            st.gc_segments - before.gc_segments
        );
        return;
    }

    // Gets in random order: values on the device (all but the last buffer's).
    let mut rng = Rng(3);
    lat.clear();
    let t0 = Instant::now();
    for _ in 0..n {
        let k = &keys[rng.below(n) as usize];
        let t = Instant::now();
        let v = s.get(k).expect("get");
        lat.push(t.elapsed().as_nanos() as u64);
        assert!(v.is_some_and(|(v, _)| v.len() == 100));
    }
    report(
        "local get (random, on device)",
        &mut lat,
        t0.elapsed().as_secs_f64(),
    );
    let mut out = Vec::new();
    lat.clear();
    let t0 = Instant::now();
    for _ in 0..n {
        let k = &keys[rng.below(n) as usize];
        let t = Instant::now();
        let m = s.get_into(k, &mut out).expect("get");
        lat.push(t.elapsed().as_nanos() as u64);
        assert!(m.is_some() && out.len() == 100);
    }
    report(
        "local get_into (random, on device, reused Vec)",
        &mut lat,
        t0.elapsed().as_secs_f64(),
    );

    // Buffered values: fresh keys that still sit in the active write buffer.
    s.sync().expect("sync");
    let fresh: Vec<[u8; 16]> = (n..n + 4000).map(key).collect();
    for k in &fresh {
        s.put(k, &value, WriteOpts::default()).expect("put");
    }
    lat.clear();
    let t0 = Instant::now();
    for _ in 0..200_000 {
        let k = &fresh[rng.below(fresh.len() as u64) as usize];
        let t = Instant::now();
        let v = s.get(k).expect("get");
        lat.push(t.elapsed().as_nanos() as u64);
        assert!(v.is_some());
    }
    report(
        "local get (random, buffered)",
        &mut lat,
        t0.elapsed().as_secs_f64(),
    );

    // Overwrites of existing keys, random order.
    lat.clear();
    let t0 = Instant::now();
    for _ in 0..n.min(500_000) {
        let k = &keys[rng.below(n) as usize];
        let t = Instant::now();
        s.put(k, &value, WriteOpts::default()).expect("put");
        lat.push(t.elapsed().as_nanos() as u64);
    }
    report(
        "local put (overwrite, random)",
        &mut lat,
        t0.elapsed().as_secs_f64(),
    );

    // Short scans from random keys.
    lat.clear();
    // A scan starting among the last keys in order returns fewer than 10.
    let mut sorted: Vec<&[u8; 16]> = keys.iter().collect();
    sorted.sort();
    let t0 = Instant::now();
    for _ in 0..20_000 {
        let k = &keys[rng.below(n) as usize];
        let t = Instant::now();
        let r = s.scan(k, None, 10).expect("scan");
        lat.push(t.elapsed().as_nanos() as u64);
        let after = sorted.len() - sorted.partition_point(|x| x.as_slice() < k.as_slice());
        assert_eq!(r.len(), after.min(10));
    }
    report("local scan (10 keys)", &mut lat, t0.elapsed().as_secs_f64());
    s.close().expect("close");

    // Recovery: reopen from the checkpoint, and replay of segments (no checkpoint since the load).
    let t0 = Instant::now();
    let (s, rep) = Shard::open(disk.bdev(), cfg.clone()).expect("reopen");
    println!(
        "reopen with checkpoint: {} keys in {:.3} s",
        rep.keys,
        t0.elapsed().as_secs_f64()
    );
    drop(s);
    let disk2 = MemDisk::new(4096, blocks);
    let (mut s, _) = Shard::open(disk2.bdev(), cfg.clone()).expect("open");
    for k in &keys {
        s.put(k, &value, WriteOpts::default()).expect("put");
    }
    s.sync().expect("sync");
    drop(s);
    let t0 = Instant::now();
    let (s, rep) = Shard::open(disk2.bdev(), cfg).expect("replay");
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "reopen by replay: {} records in {} segments in {:.3} s = {:.0} records/s (includes writing a checkpoint)",
        rep.records_replayed,
        rep.segments_replayed,
        secs,
        rep.records_replayed as f64 / secs
    );
    drop(s);

    // Index memory per key.
    let before = LIVE.load(Ordering::Relaxed);
    let mut ix = Index::new();
    for (i, k) in keys.iter().enumerate() {
        let i = i as u64;
        ix.insert(
            k,
            Entry {
                loc: i * 148,
                val_len: 100,
                ts: i,
                version: i,
            },
        )
        .expect("index room");
    }
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "index memory: {:.1} B per key beyond the 16 key bytes ({} keys; counting allocator), {:.1} B by the index's own accounting",
        bytes as f64 / n as f64 - 16.0,
        ix.len(),
        ix.heap_bytes() as f64 / n as f64 - 16.0,
    );
    // Index-only ordered reads: 10 keys from random starts.
    let mut rng = Rng(5);
    let mut lat = Vec::new();
    let t0 = Instant::now();
    for _ in 0..100_000 {
        let k = keys[rng.below(n) as usize];
        let t = Instant::now();
        let c = ix.range(&k, None).take(10).count();
        lat.push(t.elapsed().as_nanos() as u64);
        assert!(c >= 1);
    }
    report(
        "index range (10 keys)",
        &mut lat,
        t0.elapsed().as_secs_f64(),
    );
    lat.clear();
    let t0 = Instant::now();
    for _ in 0..1_000_000 {
        let k = keys[rng.below(n) as usize];
        let t = Instant::now();
        std::hint::black_box(ix.get(&k));
        lat.push(t.elapsed().as_nanos() as u64);
    }
    report("index get (random)", &mut lat, t0.elapsed().as_secs_f64());
    drop(ix);

    // Through the handle: one client thread, one shard thread.
    let mut o = Options::memory(MemDisk::new(4096, blocks));
    o.buffer_bytes = 1 << 20;
    o.checkpoint_every = 1 << 30;
    o.busy_poll = true;
    let db = Db::open(o).expect("db");
    let h = db.handle();
    let m = n.min(200_000);
    let t0 = Instant::now();
    for i in 0..m {
        h.put(&key(i), &value).expect("put");
    }
    println!(
        "handle put (one at a time): {:.0} puts/s",
        m as f64 / t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let mut i = 0;
    while i < m {
        let mut b = h.batch();
        for j in i..(i + 64).min(m) {
            b.submit(
                0,
                nvkv::api::Op::Put(key(j).to_vec(), value.to_vec(), WriteOpts::default()),
            )
            .expect("submit");
        }
        for a in b.wait() {
            a.expect("put");
        }
        i += 64;
    }
    println!(
        "handle put (batches of 64): {:.0} puts/s",
        m as f64 / t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    for i in 0..m {
        std::hint::black_box(h.get(&key(i)).expect("get"));
    }
    println!(
        "handle get (one at a time): {:.0} gets/s",
        m as f64 / t0.elapsed().as_secs_f64()
    );
    db.close().expect("close");
    let _ = Duration::ZERO;
}
