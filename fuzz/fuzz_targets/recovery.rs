//! Recovery of a mutated image: a small database (checkpoint, fallback, replayed log) with the input's
//! bytes XORed in at the input's offsets. Opening must not panic: it recovers or refuses with a typed
//! error; what it serves is a value written for that key (or a typed error), never other bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nvkv::bdev::MemDisk;
use nvkv::{Shard, ShardConfig, WriteOpts};
use std::sync::OnceLock;

const BS: u32 = 512;
const BLOCKS: u64 = 1024;

fn cfg() -> ShardConfig {
    ShardConfig {
        buffer_bytes: 4096,
        checkpoint_every: 2,
        commit_interval: std::time::Duration::from_secs(3600),
        ..Default::default()
    }
}

fn value(k: u32, round: u32) -> Vec<u8> {
    format!("value-{k}-{round}-{}", "x".repeat((k % 40) as usize)).into_bytes()
}

/// The base image: two rounds closed cleanly, a third synced and left without a close.
fn base() -> &'static Vec<u8> {
    static IMG: OnceLock<Vec<u8>> = OnceLock::new();
    IMG.get_or_init(|| {
        let disk = MemDisk::new(BS, BLOCKS);
        for round in 0..3u32 {
            let (mut s, _) = Shard::open(disk.bdev(), cfg()).expect("open");
            for k in 0..60u32 {
                if (k + round) % 7 == 0 {
                    s.delete(format!("k{k:02}").as_bytes(), WriteOpts::default())
                        .expect("delete");
                } else {
                    s.put(
                        format!("k{k:02}").as_bytes(),
                        &value(k, round),
                        WriteOpts::default(),
                    )
                    .expect("put");
                }
            }
            if round < 2 {
                s.close().expect("close");
            } else {
                s.sync().expect("sync");
            }
        }
        disk.image()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut img = base().clone();
    for m in data.chunks_exact(4) {
        let at = u32::from_le_bytes([m[0], m[1], m[2], 0]) as usize % img.len();
        img[at] ^= m[3];
    }
    let Ok((mut s, _)) = Shard::open(MemDisk::from_image(BS, &img).bdev(), cfg()) else {
        return;
    };
    for k in 0..60u32 {
        if let Ok(Some((v, _))) = s.get(format!("k{k:02}").as_bytes()) {
            assert!(
                (0..3).any(|r| v == value(k, r)),
                "k{k:02}: bytes never written for it"
            );
        }
    }
    let _ = s.scan(b"", None, 100);
    let _ = s.put(b"after", b"recovery", WriteOpts::default());
    let _ = s.close();
});
