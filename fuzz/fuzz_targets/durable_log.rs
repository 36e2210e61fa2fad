//! Recovery with a mutated durable log: a shard whose durable puts were acknowledged by its durable log
//! (in simulated persistent memory) and never reached a segment, the log's bytes XORed with the input at
//! the input's offsets. Opening must not panic: it recovers or refuses with a typed error; what it
//! serves for a key is a value written for that key, never other bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nvkv::bdev::MemDisk;
use nvkv::pmem::{MemPmemImage, PersistentMemory};
use nvkv::{Shard, ShardConfig, WriteOpts};
use std::sync::OnceLock;

const BS: u32 = 512;
const BLOCKS: u64 = 1024;
const LOG: usize = 256 + 8192;

fn cfg() -> ShardConfig {
    ShardConfig {
        buffer_bytes: 16 << 10,
        commit_interval: std::time::Duration::from_secs(3600),
        ..Default::default()
    }
}

fn value(k: u32, round: u32) -> Vec<u8> {
    format!("value-{k}-{round}-{}", "y".repeat((k % 30) as usize)).into_bytes()
}

fn region(img: &MemPmemImage) -> Option<Box<dyn PersistentMemory>> {
    Some(Box::new(img.region(0, img.len())))
}

/// The base: a clean round, then a round of durable puts and deletes acknowledged by the log only.
fn base() -> &'static (Vec<u8>, Vec<u8>) {
    static IMG: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    IMG.get_or_init(|| {
        let disk = MemDisk::new(BS, BLOCKS);
        let log = MemPmemImage::new(LOG);
        for round in 0..2u32 {
            let (mut s, _) = Shard::open_with_log(disk.bdev(), cfg(), region(&log)).expect("open");
            let durable = WriteOpts {
                ts: None,
                durable: round == 1,
            };
            for k in 0..40u32 {
                let key = format!("k{k:02}");
                let w = if (k + round) % 5 == 0 {
                    s.delete(key.as_bytes(), durable).expect("delete")
                } else {
                    s.put(key.as_bytes(), &value(k, round), durable)
                        .expect("put")
                };
                s.wait_write(&w).expect("durable");
            }
            if round == 0 {
                s.close().expect("close");
            }
        }
        (disk.image(), log.persisted())
    })
}

fuzz_target!(|data: &[u8]| {
    let (disk, log) = base();
    let mut bytes = log.clone();
    for m in data.chunks_exact(4) {
        let at = u32::from_le_bytes([m[0], m[1], m[2], 0]) as usize % bytes.len();
        bytes[at] ^= m[3];
    }
    let mem = MemPmemImage::new(bytes.len());
    mem.corrupt(0, |b| b.copy_from_slice(&bytes));
    let opened = Shard::open_with_log(MemDisk::from_image(BS, disk).bdev(), cfg(), region(&mem));
    let Ok((mut s, _)) = opened else {
        return;
    };
    for k in 0..40u32 {
        if let Ok(Some((v, _))) = s.get(format!("k{k:02}").as_bytes()) {
            assert!(
                (0..2).any(|r| v == value(k, r)),
                "k{k:02}: bytes never written for it"
            );
        }
    }
    let _ = s.put(
        b"after",
        b"recovery",
        WriteOpts {
            ts: None,
            durable: true,
        },
    );
    let _ = s.close();
});
