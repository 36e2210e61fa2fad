//! The durable log through the whole database (handle path, shard threads): durable puts are
//! acknowledged by their log record, survive a power loss that the segments did not see, fall back
//! to persistence cycles when the log is full or its barriers fail (never hang), and a database with
//! a log refuses to open without it, or with another database's, until a clean close detaches it.
//! Shard-level crash coverage is in the fault simulator (`tests/sim`), which runs half its seeds with
//! a durable log.

use std::time::Duration;

use nvkv::bdev::MemDisk;
use nvkv::pmem::MemPmemImage;
use nvkv::{Db, DurableLogDevice, Error, Options, WriteOpts};

const BS: u32 = 512;
const BLOCKS: u64 = 16384;
const DURABLE: WriteOpts = WriteOpts {
    ts: None,
    durable: true,
};

fn opts(disk: MemDisk, log: Option<&MemPmemImage>) -> Options {
    let mut o = Options::memory(disk);
    o.shards = 2;
    o.buffer_bytes = 64 << 10;
    // Long enough that no cycle runs in these tests unless a buffer fills, the log presses or the
    // log is not used.
    o.commit_interval = Duration::from_secs(600);
    o.pin_threads = false;
    if let Some(img) = log {
        o.durable_log = DurableLogDevice::Memory(img.clone());
    }
    o
}

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(60 + (i % 40) as usize)).into_bytes()
}

/// A power loss now: the persistent memory keeps what barriers covered (the rest torn), the disk
/// keeps what was written to it. Memory first: the disk is, if anything, later than it.
fn power_loss(disk: &MemDisk, log: &MemPmemImage, seed: u64) -> (MemDisk, MemPmemImage) {
    let mem = log.fork();
    mem.crash(seed);
    (MemDisk::from_image(BS, &disk.image()), mem)
}

#[test]
fn durable_puts_acknowledged_by_the_log_survive_a_power_loss() {
    let disk = MemDisk::new(BS, BLOCKS);
    let log = MemPmemImage::new(1 << 20);
    let db = Db::open(opts(disk.clone(), Some(&log))).expect("open");
    let h = db.handle();
    for i in 0..400 {
        h.put_opts(&key(i), &value(i), DURABLE).expect("put");
    }
    // Deletes and overwrites through the log too.
    for i in (0..400).step_by(7) {
        h.delete_opts(&key(i), DURABLE).expect("delete");
    }
    for i in (1..400).step_by(11) {
        h.put_opts(&key(i), b"overwritten", DURABLE).expect("put");
    }
    let stats = db.stats().expect("stats");
    let logged: u64 = stats.iter().map(|s| s.durable_log_writes).sum();
    let by_cycle: u64 = stats.iter().map(|s| s.durable_cycle_writes).sum();
    assert_eq!(stats[0].durable_log, Some("memory"));
    assert_eq!(by_cycle, 0, "the log had room for every write");
    assert!(logged >= 400 + 58 + 36, "{logged}");
    let (d2, l2) = power_loss(&disk, &log, 1);
    drop(db);

    // Without its log the database refuses to open, and writes nothing.
    let before = d2.image();
    let e = Db::open(opts(d2.clone(), None)).expect_err("opens without its log");
    assert!(matches!(e, Error::DurableLog(_)), "{e}");
    assert!(before == d2.image(), "a refused open wrote");
    // With another database's log as well.
    let stranger = MemPmemImage::new(1 << 20);
    {
        let other = Db::open(opts(MemDisk::new(BS, BLOCKS), Some(&stranger))).expect("open");
        other.put_opts(b"x", b"y", DURABLE).expect("put");
        drop(other);
    }
    let e = Db::open(opts(d2.clone(), Some(&stranger))).expect_err("opens with a foreign log");
    assert!(matches!(e, Error::DurableLog(_)), "{e}");
    assert!(before == d2.image(), "a refused open wrote");

    let db = Db::open(opts(d2.clone(), Some(&l2))).expect("reopen with the log");
    for i in 0..400 {
        let want = if i % 11 == 1 {
            Some(b"overwritten".to_vec())
        } else if i % 7 == 0 {
            None
        } else {
            Some(value(i))
        };
        assert_eq!(db.get(&key(i)).expect("get"), want, "key {i}");
    }
    // A second power loss right after the recovery: the replayed writes were persisted by it.
    let (d3, l3) = power_loss(&d2, &l2, 2);
    drop(db);
    let db = Db::open(opts(d3, Some(&l3))).expect("reopen after the second loss");
    assert_eq!(db.get(&key(5)).expect("get"), Some(value(5)));
    assert_eq!(db.get(&key(7)).expect("get"), None);
    assert_eq!(
        db.get(&key(12)).expect("get"),
        Some(b"overwritten".to_vec())
    );
    db.close().expect("close");
}

#[test]
fn a_full_log_falls_back_to_cycles_and_wraps_without_hanging() {
    let disk = MemDisk::new(BS, BLOCKS);
    // 8 KiB per shard: about 50 records each before it is full.
    let log = MemPmemImage::new(2 * 8448);
    let mut o = opts(disk.clone(), Some(&log));
    o.commit_interval = Duration::from_millis(20);
    let db = Db::open(o).expect("open");
    let h = db.handle();
    for i in 0..3000 {
        h.put_opts(&key(i % 500), &value(i), DURABLE).expect("put");
    }
    let stats = db.stats().expect("stats");
    let logged: u64 = stats.iter().map(|s| s.durable_log_writes).sum();
    let by_cycle: u64 = stats.iter().map(|s| s.durable_cycle_writes).sum();
    assert_eq!(logged + by_cycle, 3000);
    assert!(
        logged > 200,
        "the log is used again once cycles retire it: {logged}"
    );
    assert!(stats.iter().all(|s| s.cycles > 0));
    let (d2, l2) = power_loss(&disk, &log, 3);
    drop(db);
    let db = Db::open(opts(d2, Some(&l2))).expect("reopen");
    for i in 2500..3000 {
        assert_eq!(
            db.get(&key(i % 500)).expect("get"),
            Some(value(i)),
            "write {i}"
        );
    }
    db.close().expect("close");
}

#[test]
fn failed_barriers_send_durable_writes_to_the_cycle_path() {
    let disk = MemDisk::new(BS, BLOCKS);
    let log = MemPmemImage::new(1 << 20);
    let mut o = opts(disk.clone(), Some(&log));
    o.commit_interval = Duration::from_millis(5);
    let db = Db::open(o).expect("open");
    let h = db.handle();
    h.put_opts(b"before", b"1", DURABLE).expect("put");
    log.fail_barriers(true);
    for i in 0..100 {
        h.put_opts(&key(i), &value(i), DURABLE)
            .expect("put after the log failed");
    }
    let stats = db.stats().expect("stats");
    assert!(stats.iter().any(|s| s.durable_log_failed.is_some()));
    let by_cycle: u64 = stats.iter().map(|s| s.durable_cycle_writes).sum();
    assert!(by_cycle >= 99, "{by_cycle}");
    // Reads, deletes, sync and close go on.
    assert_eq!(h.get(&key(3)).expect("get"), Some(value(3)));
    h.delete_opts(&key(3), DURABLE).expect("delete");
    db.sync().expect("sync");
    let (d2, l2) = power_loss(&disk, &log, 4);
    drop(db);
    l2.fail_barriers(false);
    let db = Db::open(opts(d2, Some(&l2))).expect("reopen");
    assert_eq!(db.get(b"before").expect("get"), Some(b"1".to_vec()));
    for i in 0..100 {
        let want = (i != 3).then(|| value(i));
        assert_eq!(db.get(&key(i)).expect("get"), want, "key {i}");
    }
    db.close().expect("close");
}

#[test]
fn a_clean_close_detaches_the_log() {
    let disk = MemDisk::new(BS, BLOCKS);
    let log = MemPmemImage::new(1 << 20);
    let db = Db::open(opts(disk.clone(), Some(&log))).expect("open");
    db.put_opts(b"k", b"v", DURABLE).expect("put");
    db.close().expect("close");
    // Opens without it, then with a fresh one.
    let db = Db::open(opts(disk.clone(), None)).expect("open without the log");
    assert_eq!(db.get(b"k").expect("get"), Some(b"v".to_vec()));
    db.close().expect("close");
    let fresh = MemPmemImage::new(1 << 20);
    let db = Db::open(opts(disk, Some(&fresh))).expect("open with another log");
    assert_eq!(db.get(b"k").expect("get"), Some(b"v".to_vec()));
    db.close().expect("close");
}

#[test]
fn a_region_too_small_is_refused_by_name() {
    let disk = MemDisk::new(BS, BLOCKS);
    let log = MemPmemImage::new(1024);
    let e = Db::open(opts(disk, Some(&log))).expect_err("tiny region");
    assert!(matches!(e, Error::DurableLog(_)), "{e}");
}

#[test]
fn a_mapped_file_holds_the_log_across_a_process_crash() {
    // A process killed at any moment leaves its mapping's stores in the page cache: a copy of the
    // file (and of the disk) taken while the database runs is what a restart finds.
    let dir = std::env::temp_dir().join(format!("nvkv-dlog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("pmem");
    std::fs::write(&path, vec![0u8; 2 << 20]).expect("pmem file");
    let disk = MemDisk::new(BS, BLOCKS);
    let mut o = opts(disk.clone(), None);
    o.durable_log = DurableLogDevice::Pmem(path.clone());
    let db = Db::open(o).expect("open");
    for i in 0..300 {
        db.put_opts(&key(i), &value(i), DURABLE).expect("put");
    }
    let stats = db.stats().expect("stats");
    assert_eq!(stats[0].durable_log, Some("file (msync)"));
    assert_eq!(stats.iter().map(|s| s.durable_log_writes).sum::<u64>(), 300);
    let copy = dir.join("pmem.copy");
    std::fs::copy(&path, &copy).expect("copy");
    let d2 = MemDisk::from_image(BS, &disk.image());
    drop(db);
    let mut o = opts(d2, None);
    o.durable_log = DurableLogDevice::Pmem(copy);
    let db = Db::open(o).expect("reopen");
    for i in 0..300 {
        assert_eq!(db.get(&key(i)).expect("get"), Some(value(i)), "key {i}");
    }
    db.close().expect("close");
    let e = Db::open({
        let mut o = opts(MemDisk::new(BS, BLOCKS), None);
        o.durable_log = DurableLogDevice::Pmem(dir.join("missing"));
        o
    })
    .expect_err("a missing pmem path");
    assert!(matches!(e, Error::DurableLog(_)), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
