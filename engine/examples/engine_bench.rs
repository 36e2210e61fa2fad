//! Engine figures on the memory backend: shard-local put latency (p50/p99/p99.9), put and get throughput
//! on the shard-local path and through the handle (one client thread, one shard thread), index memory per
//! key, and recovery speed. Prints figures; asserts nothing. Run in release:
//!
//! ```text
//! cargo run --release -p nvkv --example engine_bench [-- KEYS]
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use nvkv::bdev::MemDisk;
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

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0)
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let value = [7u8; 100];
    // Enough room for n records of 148 bytes, twice over, plus checkpoints.
    let blocks = (n * 148 * 3 / 4096 + 4096).max(16384);
    println!("nvkv engine bench: {n} keys, 16 B keys, 100 B values, memory backend, 4 KiB blocks");

    // Shard-local put latency.
    let disk = MemDisk::new(4096, blocks);
    let cfg = ShardConfig {
        buffer_bytes: 1 << 20,
        checkpoint_every: 1 << 30,
        ..Default::default()
    };
    let (mut s, _) = Shard::open(disk.bdev(), cfg.clone()).expect("open");
    let mut lat = Vec::with_capacity(n as usize);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        if let Err(e) = s.put(&key(i), &value, WriteOpts::default()) {
            panic!("put {i}: {e}: {:?}", s.stats());
        }
        lat.push(t.elapsed().as_nanos() as u64);
        if i % 256 == 0 {
            s.tick().expect("tick");
        }
    }
    let put_secs = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "local put latency: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        lat.last().copied().unwrap_or(0)
    );
    println!("local put throughput: {:.0} puts/s", n as f64 / put_secs);
    let t0 = Instant::now();
    for i in 0..n {
        std::hint::black_box(s.get(&key(i)).expect("get"));
    }
    println!(
        "local get throughput: {:.0} gets/s (values read from the device)",
        n as f64 / t0.elapsed().as_secs_f64()
    );
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
    for i in 0..n {
        s.put(&key(i), &value, WriteOpts::default()).expect("put");
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
    for i in 0..n {
        ix.insert(
            &key(i),
            Entry {
                loc: i * 148,
                val_len: 100,
                ts: i,
                version: i,
            },
        );
    }
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "index memory: {:.1} B per key beyond the 16 key bytes ({} keys)",
        bytes as f64 / n as f64 - 16.0,
        ix.len()
    );
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
