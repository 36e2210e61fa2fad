//! Corrupt images: single bit flips in superblocks, checkpoints and segments. Recovery must not panic;
//! it either opens (reporting what it skipped) or refuses with a typed error; and no read may return a
//! value that was not the key's value — a damaged record is an error or, when reported, a missing key.

use std::collections::BTreeMap;

use nvkv::bdev::MemDisk;
use nvkv::format::{Superblock, SB_LEN};
use nvkv::{Error, RecoveryReport, Shard, ShardConfig, WriteOpts};

const BS: u32 = 512;

fn cfg() -> ShardConfig {
    ShardConfig {
        buffer_bytes: 4096,
        checkpoint_every: 1000,
        ..Default::default()
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Image A: closed cleanly (everything in the checkpoint). Image B: more writes synced after it, then
/// dropped without closing (recovery must replay segments).
type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn images() -> Vec<(&'static str, Vec<u8>, Model)> {
    let disk = MemDisk::new(BS, 800);
    let mut model = BTreeMap::new();
    let (mut s, _) = Shard::open(disk.bdev(), cfg()).expect("open");
    for i in 0..80u32 {
        let (k, v) = (
            format!("k{i:03}").into_bytes(),
            format!("value-{i}-{}", "x".repeat(i as usize % 50)).into_bytes(),
        );
        s.put(&k, &v, WriteOpts::default()).expect("put");
        model.insert(k, v);
    }
    for i in (0..80u32).step_by(7) {
        let k = format!("k{i:03}").into_bytes();
        s.delete(&k, WriteOpts::default()).expect("delete");
        model.remove(&k);
    }
    s.close().expect("close");
    let a = (disk.image(), model.clone());
    let (mut s, _) = Shard::open(disk.bdev(), cfg()).expect("reopen");
    for i in (0..120u32).step_by(3) {
        let (k, v) = (
            format!("k{i:03}").into_bytes(),
            format!("second-{i}").into_bytes(),
        );
        s.put(&k, &v, WriteOpts::default()).expect("put");
        model.insert(k, v);
    }
    s.delete(b"k001", WriteOpts::default()).expect("delete");
    model.remove(b"k001".as_slice());
    s.sync().expect("sync");
    drop(s);
    vec![("closed", a.0, a.1), ("replay", disk.image(), model)]
}

fn lost_something(r: &RecoveryReport) -> bool {
    !r.checkpoint_errors.is_empty()
        || r.checkpoint_fallback
        || !r.replay_stop.ends_with("not written")
}

/// Every value ever written per key: after a reported loss, an older value of the key may come back
/// (the log is cut at the damage), but never bytes that were not written for that key.
fn history() -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    let mut h: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for i in 0..80u32 {
        h.entry(format!("k{i:03}").into_bytes())
            .or_default()
            .push(format!("value-{i}-{}", "x".repeat(i as usize % 50)).into_bytes());
    }
    for i in (0..120u32).step_by(3) {
        h.entry(format!("k{i:03}").into_bytes())
            .or_default()
            .push(format!("second-{i}").into_bytes());
    }
    h
}

/// Opens a damaged image and checks every key. Returns whether it opened.
fn check(img: &[u8], model: &BTreeMap<Vec<u8>, Vec<u8>>, what: &str) -> bool {
    let hist = history();
    let disk = MemDisk::from_image(BS, img);
    let (mut s, rep) = match Shard::open(disk.bdev(), cfg()) {
        Ok(x) => x,
        Err(
            Error::Unrecoverable(_) | Error::NotADatabase(_) | Error::Corrupt(_) | Error::Config(_),
        ) => return false,
        Err(e) => panic!("{what}: unexpected error kind {e:?}"),
    };
    for (k, v) in model {
        match s.get(k) {
            Ok(Some((got, _))) if &got == v => {}
            Ok(Some((got, _))) => assert!(
                lost_something(&rep) && hist.get(k).is_some_and(|h| h.contains(&got)),
                "{what}: wrong value for {k:?}: {got:?} ({rep:?})"
            ),
            Ok(None) => assert!(
                lost_something(&rep),
                "{what}: {k:?} missing without a report: {rep:?}"
            ),
            Err(Error::Corrupt(_)) => {}
            Err(e) => panic!("{what}: get failed oddly: {e}"),
        }
    }
    if let Ok(all) = s.scan(b"", None, 10_000) {
        for (k, v) in all {
            let ok = model.get(&k) == Some(&v)
                || (lost_something(&rep) && hist.get(&k).is_some_and(|h| h.contains(&v)));
            assert!(ok, "{what}: scan returned {k:?} = {v:?} wrongly");
        }
    }
    true
}

#[test]
fn bit_flips_are_detected_and_skipped() {
    let mut opened = 0;
    let mut refused = 0;
    let mut flips = 0;
    for (name, img, model) in images() {
        assert!(
            check(&img, &model, name),
            "undamaged {name} image must open"
        );
        // Every bit of both superblock copies: one bad copy is always survivable.
        for copy in 0..2usize {
            for bit in 0..SB_LEN * 8 {
                let mut d = img.clone();
                d[copy * BS as usize + bit / 8] ^= 1 << (bit % 8);
                assert!(
                    check(&d, &model, &format!("{name}: superblock {copy} bit {bit}")),
                    "{name}: sb {copy} bit {bit}"
                );
                flips += 1;
            }
        }
        // The checkpoint the newest superblock points at: every byte, one bit each.
        let sbs: Vec<Superblock> = (0..2)
            .filter_map(|c| Superblock::decode(&img[c * BS as usize..]).ok())
            .collect();
        let sb = sbs.iter().max_by_key(|s| s.seq).expect("a superblock");
        let ck = sb.ckpt.lba as usize * BS as usize;
        let ck_len = sb.ckpt.blocks as usize * BS as usize;
        let mut rng = Rng(0x1234_5678 ^ ck as u64);
        for byte in (0..ck_len).step_by(3) {
            let mut d = img.clone();
            d[ck + byte] ^= 1 << rng.below(8);
            if check(&d, &model, &format!("{name}: checkpoint byte {byte}")) {
                opened += 1;
            } else {
                refused += 1;
            }
            flips += 1;
        }
        // Random bits in every other non-zero block (segments, old checkpoints).
        let used: Vec<usize> = (2..img.len() / BS as usize)
            .filter(|b| !(ck..ck + ck_len).contains(&(b * BS as usize)))
            .filter(|b| {
                img[b * BS as usize..(b + 1) * BS as usize]
                    .iter()
                    .any(|&x| x != 0)
            })
            .collect();
        for _ in 0..1200 {
            let b = used[rng.below(used.len() as u64) as usize];
            let at = b * BS as usize + rng.below(BS as u64) as usize;
            let mut d = img.clone();
            d[at] ^= 1 << rng.below(8);
            if check(&d, &model, &format!("{name}: block {b} byte {at}")) {
                opened += 1;
            } else {
                refused += 1;
            }
            flips += 1;
        }
    }
    eprintln!("corrupt images: {flips} flips, {opened} opened past damage, {refused} refused");
    assert!(opened > 0);
}
