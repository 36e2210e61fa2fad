//! How full a shard gets before it refuses new data, and that it never wedges: one shard on the memory
//! backend, a mix of long-lived values and hot overwrites (1 in 4 puts overwrites one of 64 hot keys),
//! until the first put is refused with NoSpace. Then deletes (half the long-lived keys), `sync`, more
//! puts and `close` must all succeed, and a reopen must hold exactly what was acknowledged. Prints the
//! live fraction at the first refusal per value size (live bytes = record headers + keys + values the
//! index points at, over the slice), as a table and one JSON line each. Asserts only that nothing wedges
//! or is lost. Run in release:
//!
//! ```text
//! cargo run --release -p nvkv --example fill_bench [-- SLICE_MIB]
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use nvkv::bdev::MemDisk;
use nvkv::{Error, Shard, ShardConfig, WriteOpts};

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let bs = 4096u32;
    let blocks = (mib << 20) / u64::from(bs);
    println!("one shard, {mib} MiB slice, 4 KiB blocks, 256 KiB write buffers, memory backend");
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>8} {:>8} {:>10}",
        "value B", "keys", "live %", "dead %", "free %", "GC segs", "fill s"
    );
    let mut json = Vec::new();
    for value in [100usize, 1024, 4096] {
        let disk = MemDisk::new(bs, blocks);
        let cfg = ShardConfig {
            buffer_bytes: 256 << 10,
            ..Default::default()
        };
        let (mut s, _) = Shard::open(disk.bdev(), cfg.clone()).expect("open");
        let mut live: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut cold = 0u64;
        let started = Instant::now();
        loop {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = if x % 4 == 0 {
                format!("hot-{:02}", (x >> 8) % 64)
            } else {
                cold += 1;
                format!("cold-{cold:012}")
            };
            let v = vec![(x >> 16) as u8; value];
            match s.put(key.as_bytes(), &v, WriteOpts::default()) {
                Ok(_) => {
                    live.insert(key.into_bytes(), (32 + 16 + value) as u64);
                }
                Err(Error::NoSpace) => break,
                Err(e) => panic!("put failed: {e}"),
            }
        }
        let fill_s = started.elapsed().as_secs_f64();
        let st = s.stats();
        let slice = blocks * u64::from(bs);
        let live_bytes: u64 = live.iter().map(|(k, l)| l - 16 + k.len() as u64).sum();
        let (lp, dp, fp) = (
            100.0 * live_bytes as f64 / slice as f64,
            100.0 * st.dead_bytes as f64 / slice as f64,
            100.0 * (st.free_blocks * u64::from(bs)) as f64 / slice as f64,
        );
        println!(
            "{value:>8} {:>10} {lp:>9.1} {dp:>9.1} {fp:>8.1} {:>8} {fill_s:>10.1}",
            live.len(),
            st.gc_segments
        );
        json.push(format!(
            "{{\"value_bytes\":{value},\"slice_bytes\":{slice},\"keys\":{},\"live_fraction\":{:.4},\"dead_fraction\":{:.4},\"free_fraction\":{:.4},\"gc_segments\":{},\"checkpoints\":{},\"fallbacks_spent\":{}}}",
            live.len(),
            lp / 100.0,
            dp / 100.0,
            fp / 100.0,
            st.gc_segments,
            st.checkpoints,
            st.fallbacks_spent
        ));
        // Never a wedge: deletes, sync, puts once there is room, close; then the reopen holds it all.
        let gone: Vec<Vec<u8>> = live
            .keys()
            .filter(|k| k.starts_with(b"cold"))
            .step_by(2)
            .cloned()
            .collect();
        for k in &gone {
            s.delete(k, WriteOpts::default())
                .expect("delete on a full shard");
            live.remove(k);
        }
        s.sync().expect("sync on a full shard");
        for j in 0..100u32 {
            let k = format!("after-{j}").into_bytes();
            s.put(&k, &vec![1u8; value], WriteOpts::default())
                .expect("put after deletes");
            live.insert(k, 0);
        }
        s.close().expect("close on a full shard");
        let (mut s, _) = Shard::open(disk.bdev(), cfg).expect("reopen");
        assert_eq!(s.len(), live.len(), "keys after reopen");
        for k in gone.iter().take(1000) {
            assert!(s.get(k).expect("get").is_none(), "a delete was lost");
        }
    }
    for j in json {
        println!("{j}");
    }
}
