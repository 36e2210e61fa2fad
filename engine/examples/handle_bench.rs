//! The handle path's figures (memory backend, one shard thread polling, one client thread, 16-byte keys,
//! 100-byte values): puts and gets one at a time and in batches of 64, through each way in, with
//! latency percentiles and the maximum for the single calls. The ways in alternate within a run and
//! each figure is the median over the rounds. Prints figures; asserts nothing. Run in release:
//!
//! ```text
//! cargo run --release -p nvkv --example handle_bench [-- OPS ROUNDS]
//! ```

use std::time::Instant;

use nvkv::api::{Op, Wait};
use nvkv::bdev::MemDisk;
use nvkv::{Db, DbHandle, Options, WriteOpts};

/// Key `i`: 16 hex characters of a hashed counter, made before the runs (formatted in the timed loop,
/// a key's allocation and formatting counted in every call, and on the critical path of a batch).
fn key(i: u64) -> [u8; 16] {
    KEYS.get()
        .map_or_else(|| make_key(i), |k| k[i as usize % k.len()])
}

static KEYS: std::sync::OnceLock<Vec<[u8; 16]>> = std::sync::OnceLock::new();

fn make_key(i: u64) -> [u8; 16] {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29) ^ i;
    let mut k = [0u8; 16];
    k.copy_from_slice(format!("{h:016x}").as_bytes());
    k
}

#[derive(Clone, Copy, Default)]
struct Figures {
    ops_per_s: f64,
    p50_ns: u64,
    p99_ns: u64,
    max_ns: u64,
}

fn figures(lat: &mut [u64], secs: f64) -> Figures {
    lat.sort_unstable();
    let at = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    Figures {
        ops_per_s: lat.len() as f64 / secs,
        p50_ns: at(0.5),
        p99_ns: at(0.99),
        max_ns: *lat.last().unwrap_or(&0),
    }
}

/// `n` single operations, each timed.
fn singles(n: u64, mut op: impl FnMut(u64)) -> Figures {
    let mut lat = Vec::with_capacity(n as usize);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        op(i);
        lat.push(t.elapsed().as_nanos() as u64);
    }
    figures(&mut lat, t0.elapsed().as_secs_f64())
}

/// `n` operations in batches of 64: throughput only.
fn batches(n: u64, mut batch: impl FnMut(u64, u64)) -> Figures {
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + 64).min(n);
        batch(i, end);
        i = end;
    }
    Figures {
        ops_per_s: n as f64 / t0.elapsed().as_secs_f64(),
        ..Figures::default()
    }
}

type Case = (&'static str, Box<dyn Fn(&DbHandle, u64) -> Figures>);

fn cases() -> Vec<Case> {
    let value = [7u8; 100];
    let mut v: Vec<Case> = vec![
        (
            "handle put, one at a time",
            Box::new(move |h, n| {
                singles(n, |i| {
                    std::hint::black_box(h.put(&key(i), &value).expect("put"));
                })
            }),
        ),
        (
            "handle get, one at a time",
            Box::new(|h, n| {
                singles(n, |i| {
                    std::hint::black_box(h.get(&key(i)).expect("get"));
                })
            }),
        ),
        (
            "handle put, batches of 64 (Batch of Op)",
            Box::new(move |h, n| {
                batches(n, |a, b| {
                    let mut bt = h.batch();
                    for j in a..b {
                        let op = Op::Put(key(j).to_vec(), value.to_vec(), WriteOpts::default());
                        bt.submit_key(&key(j), op).expect("submit");
                    }
                    for r in bt.wait() {
                        r.expect("put");
                    }
                })
            }),
        ),
    ];
    // NEW-PATHS-BEGIN (the lines to the end marker use the request slots)
    v.push((
        "handle get_into, one at a time",
        Box::new(|h, n| {
            let mut out = Vec::new();
            singles(n, |i| {
                std::hint::black_box(h.get_into(&key(i), &mut out).expect("get"));
            })
        }),
    ));
    for (name, how) in [
        ("client put (spin), one at a time", Wait::Spin),
        (
            "client put (spin, then park), one at a time",
            Wait::default(),
        ),
    ] {
        v.push((
            name,
            Box::new(move |h, n| {
                let mut c = h.client();
                c.set_wait(how);
                singles(n, |i| {
                    std::hint::black_box(
                        c.put(&key(i), &value, WriteOpts::default()).expect("put"),
                    );
                })
            }),
        ));
    }
    v.push((
        "client get_into (spin), one at a time",
        Box::new(|h, n| {
            let mut c = h.client();
            c.set_wait(Wait::Spin);
            let mut out = Vec::new();
            singles(n, |i| {
                std::hint::black_box(c.get_into(&key(i), &mut out).expect("get"));
            })
        }),
    ));
    v.push((
        "client put, batches of 64 (batch_put)",
        Box::new(move |h, n| {
            let mut c = h.client();
            batches(n, |a, b| {
                for j in a..b {
                    c.batch_put(&key(j), &value, WriteOpts::default());
                }
                c.batch_wait();
                for j in 0..(b - a) as usize {
                    c.batch_answer(j).expect("answered").expect("put");
                }
                c.batch_clear();
            })
        }),
    ));
    v.push((
        "client get, batches of 64 (batch_get)",
        Box::new(move |h, n| {
            let mut c = h.client();
            batches(n, |a, b| {
                for j in a..b {
                    c.batch_get(&key(j));
                }
                c.batch_wait();
                for j in 0..(b - a) as usize {
                    c.batch_answer(j).expect("answered").expect("get");
                }
                c.batch_clear();
            })
        }),
    ));
    // NEW-PATHS-END
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    // Set once, before any key is asked for: `set` cannot find it taken.
    let _ = KEYS.set((0..n.max(1)).map(make_key).collect());
    let mut o = Options::memory(MemDisk::new(4096, 1 << 20));
    o.buffer_bytes = 1 << 20;
    o.checkpoint_every = 1 << 30;
    o.busy_poll = true;
    o.shards = 1;
    let db = Db::open(o).expect("open");
    let h = db.handle();
    let cases = cases();
    let mut got: Vec<Vec<Figures>> = vec![Vec::new(); cases.len()];
    // Warm-up: the keys exist before the first get, buffers have grown.
    (cases[0].1)(&h, n);
    for _ in 0..rounds {
        for (i, (_, run)) in cases.iter().enumerate() {
            got[i].push(run(&h, n));
        }
    }
    println!(
        "memory backend, 1 shard (polling), 1 client thread, 16 B keys, 100 B values, {n} ops per \
         case, {rounds} rounds alternating, medians (min-max of ops/s)"
    );
    println!(
        "{:<46} {:>12} {:>20} {:>9} {:>9} {:>10}",
        "case", "ops/s", "(min-max)", "p50 ns", "p99 ns", "max µs"
    );
    for ((name, _), f) in cases.iter().zip(&got) {
        let ops: Vec<f64> = f.iter().map(|x| x.ops_per_s).collect();
        let lo = ops.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ops.iter().copied().fold(0.0, f64::max);
        let p50 = median(f.iter().map(|x| x.p50_ns as f64).collect());
        let p99 = median(f.iter().map(|x| x.p99_ns as f64).collect());
        let max = median(f.iter().map(|x| x.max_ns as f64).collect());
        let lat = |x: f64| {
            if x == 0.0 {
                "-".to_string()
            } else {
                format!("{x:.0}")
            }
        };
        println!(
            "{:<46} {:>12.0} {:>20} {:>9} {:>9} {:>10}",
            name,
            median(ops),
            format!("({lo:.0}-{hi:.0})"),
            lat(p50),
            lat(p99),
            if max == 0.0 {
                "-".into()
            } else {
                format!("{:.1}", max / 1000.0)
            },
        );
    }
    db.close().expect("close");
}
