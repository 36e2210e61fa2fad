//! Writes the seed corpus (`fuzz/corpus/<target>/`): valid structures from the engine's own encoders,
//! so the fuzzers start inside the formats instead of at random bytes.
use nvkv::bdev::MemDisk;
use nvkv::format::{self, Superblock};
use nvkv::{Shard, ShardConfig, WriteOpts};
use std::path::Path;

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(name), data).expect("write");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let disk = MemDisk::new(512, 1024);
    let cfg = ShardConfig {
        buffer_bytes: 4096,
        ..Default::default()
    };
    let (mut s, _) = Shard::open(disk.bdev(), cfg).expect("open");
    for k in 0..40u32 {
        s.put(
            format!("key{k}").as_bytes(),
            &[k as u8; 50],
            WriteOpts::default(),
        )
        .expect("put");
    }
    s.close().expect("close");
    let img = disk.image();
    let sb = Superblock::decode(&img[..512]).expect("superblock");
    write(&root.join("superblock"), "sb0", &img[..512]);
    write(&root.join("superblock"), "sb1", &img[512..1024]);
    let at = sb.ckpt.lba as usize * 512;
    let len = sb.ckpt.blocks as usize * 512;
    write(&root.join("checkpoint"), "ckpt", &img[at..at + len]);
    // Every segment header in the image, with its blocks.
    let mut n = 0;
    for b in 2..1024usize {
        if let Ok((h, _)) = format::SegmentHeader::decode(&img[b * 512..], 512) {
            let end = (b + h.nblocks as usize) * 512;
            write(
                &root.join("segment"),
                &format!("seg{n}"),
                &img[b * 512..end.min(img.len())],
            );
            n += 1;
        }
    }
    // Recovery: a few mutations each (offset, xor), and none.
    write(&root.join("recovery"), "none", &[]);
    write(&root.join("recovery"), "sb", &[7, 0, 0, 1]);
    write(
        &root.join("recovery"),
        "ckpt",
        &[
            (at + 100) as u8,
            ((at + 100) >> 8) as u8,
            ((at + 100) >> 16) as u8,
            0x20,
        ],
    );
    // The durable log: no mutation, one in the header area, one in the first records.
    write(&root.join("durable_log"), "none", &[]);
    write(&root.join("durable_log"), "header", &[130, 0, 0, 4]);
    write(&root.join("durable_log"), "record", &[44, 1, 0, 0x10]);
    write(
        &root.join("capi"),
        "ops",
        &[1, 1, 1, 1, 0, 0, 1, 5, 1, 9, 2, 1, 5, 0, 0, 0],
    );
    println!("{n} segments, checkpoint of {len} bytes");
}
