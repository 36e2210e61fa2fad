//! Basic behaviour of one shard and of the database, on the memory and file backends.

use std::time::Duration;

use nvkv::bdev::MemDisk;
use nvkv::{Conflict, Db, Error, Options, Shard, ShardConfig, WriteOpts};

fn cfg() -> ShardConfig {
    ShardConfig {
        buffer_bytes: 8192,
        checkpoint_every: 4,
        ..Default::default()
    }
}

#[test]
fn shard_put_get_reopen() {
    let disk = MemDisk::new(512, 4096);
    let (mut s, rep) = Shard::open(disk.bdev(), cfg()).expect("open");
    assert!(rep.formatted);
    for i in 0..500u32 {
        s.put(
            format!("k{i:04}").as_bytes(),
            format!("value-{i}").as_bytes(),
            WriteOpts::default(),
        )
        .expect("put");
    }
    s.delete(b"k0003", WriteOpts::default()).expect("delete");
    assert_eq!(
        s.get(b"k0007").expect("get").map(|v| v.0),
        Some(b"value-7".to_vec())
    );
    assert_eq!(s.get(b"k0003").expect("get"), None);
    let scan = s.scan(b"k0001", Some(b"k0005"), 10).expect("scan");
    assert_eq!(
        scan.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        vec![b"k0001".to_vec(), b"k0002".to_vec(), b"k0004".to_vec()]
    );
    s.sync().expect("sync");
    drop(s);
    let (mut s, rep) = Shard::open(disk.bdev(), cfg()).expect("reopen");
    assert!(!rep.formatted);
    assert_eq!(rep.keys, 499, "{rep:?}");
    for i in 0..500u32 {
        let want = if i == 3 {
            None
        } else {
            Some(format!("value-{i}").into_bytes())
        };
        assert_eq!(
            s.get(format!("k{i:04}").as_bytes())
                .expect("get")
                .map(|v| v.0),
            want,
            "key {i}"
        );
    }
}

/// Several segments are written at once and one Flush covers the ones written before it, also when the
/// device completes them newest first; a generation is published only once every older one is durable.
#[test]
fn pipelined_cycles_share_a_flush_and_publish_in_order() {
    let disk = MemDisk::new(512, 4096).with_volatile_cache(true);
    let mut dev = disk.bdev();
    dev.set_lifo_completions(true);
    let cfg = ShardConfig {
        buffer_bytes: 4096,
        max_inflight_cycles: 4,
        commit_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let (mut s, _) = Shard::open(dev, cfg.clone()).expect("open");
    let before = s.stats();
    let durable0 = s.durable_gen();
    // ~100-byte records into 4 KiB buffers: three buffers fill and are sealed without a poll between.
    let mut last_gen = 0;
    for i in 0..100u32 {
        let w = s
            .put(
                format!("k{i:03}").as_bytes(),
                &[i as u8; 100],
                WriteOpts::default(),
            )
            .expect("put");
        last_gen = w.gen;
    }
    assert!(
        last_gen >= durable0 + 3,
        "three buffers sealed: gen {last_gen}"
    );
    assert_eq!(s.durable_gen(), durable0, "nothing durable before a poll");
    s.wait_durable(last_gen).expect("durable");
    let after = s.stats();
    let cycles = after.cycles - before.cycles;
    let flushes = after.flushes - before.flushes;
    assert!(cycles >= 3, "{cycles} cycles");
    assert!(
        flushes < cycles,
        "group commit: {flushes} flushes for {cycles} cycles"
    );
    drop(s);
    let (mut s, _) = Shard::open(disk.bdev(), cfg).expect("reopen");
    for i in 0..100u32 {
        assert_eq!(
            s.get(format!("k{i:03}").as_bytes())
                .expect("get")
                .map(|v| v.0),
            Some(vec![i as u8; 100]),
            "key {i}"
        );
    }
}

#[test]
fn overwrites_cycle_and_gc_keep_data() {
    // 400 KiB: the 160 KiB of live records, two checkpoints of 33 KiB (the newest and its fallback)
    // and the reserve, with room for GC to work in.
    let disk = MemDisk::new(512, 800);
    let c = ShardConfig {
        gc_free_low: 0.5,
        ..cfg()
    };
    let (mut s, _) = Shard::open(disk.bdev(), c.clone()).expect("open");
    let cold = |k: u32| vec![(k % 256) as u8; 150];
    // Cold and hot keys share segments, so cleaning has live records to move.
    for k in 0..800u32 {
        s.put(
            format!("cold{k}").as_bytes(),
            &cold(k),
            WriteOpts::default(),
        )
        .expect("put cold");
        s.put(
            format!("key{}", k % 40).as_bytes(),
            b"first",
            WriteOpts::default(),
        )
        .expect("put hot");
    }
    // Far more bytes written than the slice holds: only GC makes this possible.
    for round in 0..60u32 {
        for k in 0..40u32 {
            let v = vec![(round % 251) as u8; 100 + (k as usize % 7)];
            if let Err(e) = s.put(format!("key{k}").as_bytes(), &v, WriteOpts::default()) {
                panic!("round {round} key {k}: {e}: {:?}", s.stats());
            }
        }
        s.sync().expect("sync");
        s.tick().expect("tick");
    }
    let st = s.stats();
    assert!(st.gc_segments > 0 && st.gc_bytes_moved > 0, "{st:?}");
    let check = |s: &mut Shard<nvkv::bdev::MemBdev>| {
        for k in 0..40u32 {
            let v = s
                .get(format!("key{k}").as_bytes())
                .expect("get")
                .expect("present")
                .0;
            assert_eq!(v, vec![59u8; 100 + (k as usize % 7)]);
        }
        for k in 0..800u32 {
            let v = s
                .get(format!("cold{k}").as_bytes())
                .expect("get")
                .expect("present")
                .0;
            assert_eq!(v, cold(k));
        }
    };
    check(&mut s);
    drop(s);
    let (mut s, rep) = Shard::open(disk.bdev(), c).expect("reopen");
    assert_eq!(rep.keys, 840, "{rep:?}");
    check(&mut s);
}

#[test]
fn limits_and_typed_errors() {
    let disk = MemDisk::new(512, 4096);
    let (mut s, _) = Shard::open(disk.bdev(), cfg()).expect("open");
    assert_eq!(s.put(b"", b"x", WriteOpts::default()), Err(Error::EmptyKey));
    assert!(matches!(
        s.put(&vec![1u8; 2000], b"x", WriteOpts::default()),
        Err(Error::KeyTooLarge { .. })
    ));
    assert!(matches!(
        s.put(b"k", &vec![1u8; 9000], WriteOpts::default()),
        Err(Error::ValueTooLarge { .. })
    ));
    s.put(b"k", b"abc", WriteOpts::default()).expect("put");
    assert_eq!(
        s.incr(b"k", 1, WriteOpts::default()),
        Err(Error::NotAnInteger)
    );
    assert_eq!(s.incr(b"n", 5, WriteOpts::default()).expect("incr").0, 5);
    assert_eq!(s.incr(b"n", -7, WriteOpts::default()).expect("incr").0, -2);
    let v = s.get(b"k").expect("get").expect("some").1.version;
    assert!(matches!(
        s.cas(b"k", Some(v + 100), Some(b"z"), WriteOpts::default()),
        Err(Error::VersionMismatch { .. })
    ));
    let w = s
        .cas(b"k", Some(v), Some(b"z"), WriteOpts::default())
        .expect("cas");
    assert!(w.applied && w.version > v);
    assert!(
        s.cas(b"new", None, Some(b"1"), WriteOpts::default())
            .expect("cas")
            .applied
    );
}

#[test]
fn conflict_strategies() {
    let disk = MemDisk::new(512, 4096);
    let (mut s, _) = Shard::open(disk.bdev(), cfg()).expect("open");
    let at = |t| WriteOpts {
        ts: Some(t),
        durable: false,
    };
    assert!(s.put(b"a", b"1", at(10)).expect("put").applied);
    assert!(!s.put(b"a", b"old", at(5)).expect("put").applied);
    assert!(s.put(b"a", b"2", at(20)).expect("put").applied);
    assert_eq!(s.get(b"a").expect("get").expect("v").0, b"2");

    let disk = MemDisk::new(512, 4096);
    let (mut s, _) = Shard::open(
        disk.bdev(),
        ShardConfig {
            conflict: Conflict::FirstWriterWins,
            ..cfg()
        },
    )
    .expect("open");
    assert!(
        s.put(b"a", b"first", WriteOpts::default())
            .expect("put")
            .applied
    );
    assert!(
        !s.put(b"a", b"second", WriteOpts::default())
            .expect("put")
            .applied
    );
    assert_eq!(s.get(b"a").expect("get").expect("v").0, b"first");

    let disk = MemDisk::new(512, 4096);
    let merge: nvkv::MergeFn =
        std::sync::Arc::new(|_k: &[u8], old: &[u8], new: &[u8]| [old, new].concat());
    let (mut s, _) = Shard::open(
        disk.bdev(),
        ShardConfig {
            conflict: Conflict::Merge(merge),
            ..cfg()
        },
    )
    .expect("open");
    s.put(b"a", b"x", WriteOpts::default()).expect("put");
    s.put(b"a", b"y", WriteOpts::default()).expect("put");
    assert_eq!(s.get(b"a").expect("get").expect("v").0, b"xy");
}

fn db_roundtrip(opts: Options) {
    let db = Db::open(opts.clone()).expect("open");
    let h = db.handle();
    for i in 0..300u32 {
        h.put(format!("k{i:03}").as_bytes(), format!("v{i}").as_bytes())
            .expect("put");
    }
    h.put_opts(
        b"durable",
        b"yes",
        WriteOpts {
            ts: None,
            durable: true,
        },
    )
    .expect("durable put");
    assert_eq!(h.get(b"k042").expect("get"), Some(b"v42".to_vec()));
    let scan = h.scan(b"k100", Some(b"k110"), 5).expect("scan");
    assert_eq!(scan.len(), 5);
    assert!(scan.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(scan[0].0, b"k100");
    assert_eq!(h.incr(b"ctr", 3).expect("incr"), 3);
    let shard = nvkv::api::shard_of(b"k001", h.shards());
    let local = db
        .run_on(shard, |ctx| ctx.get(b"k001").map(|v| v.map(|x| x.0)))
        .expect("run_on");
    assert_eq!(local.expect("get"), Some(b"v1".to_vec()));
    // A closure on the shard's thread does a durable write and waits for it by polling.
    let durable = db
        .run_on(shard, |ctx| -> Result<bool, Error> {
            let w = ctx.put(
                b"k001",
                b"v1-durable",
                WriteOpts {
                    ts: None,
                    durable: true,
                },
            )?;
            ctx.wait_durable(w.gen)?;
            ctx.tick()?;
            Ok(ctx.stats().cycles > 0)
        })
        .expect("run_on");
    assert!(durable.expect("durable put"), "a cycle completed");
    let boom = db.run_on(shard, |_ctx| -> u32 { panic!("closure bug") });
    assert!(boom.is_err());
    let stats = h.stats().expect("stats");
    assert_eq!(stats.iter().map(|s| s.keys).sum::<u64>(), 302);
    db.close().expect("close");
    let db = Db::open(opts).expect("reopen");
    assert_eq!(
        db.recovery_reports().iter().map(|r| r.keys).sum::<u64>(),
        302
    );
    assert_eq!(db.get(b"k299").expect("get"), Some(b"v299".to_vec()));
    assert_eq!(db.get(b"k001").expect("get"), Some(b"v1-durable".to_vec()));
    assert_eq!(db.get(b"durable").expect("get"), Some(b"yes".to_vec()));
    db.close().expect("close");
}

#[test]
fn db_on_memory() {
    let mut o = Options::memory(MemDisk::new(512, 16384));
    o.shards = 3;
    o.buffer_bytes = 16384;
    o.commit_interval = Duration::from_millis(2);
    db_roundtrip(o);
}

#[test]
fn db_on_file() {
    let dir = std::env::temp_dir().join(format!("nvkv-basic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut o = Options::file(dir.join("db"), Some(16 << 20));
    o.shards = 2;
    o.buffer_bytes = 64 << 10;
    db_roundtrip(o);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A device without a volatile write cache (NVMe VWC = 0: a drive with power-loss protection) makes a
/// completed write durable by itself: durable writes are acknowledged without a Flush. With a cache,
/// every cycle is covered by one.
#[test]
fn no_flush_without_a_volatile_cache() {
    for cache in [false, true] {
        let disk = MemDisk::new(512, 8192).with_volatile_cache(cache);
        let (mut s, _) = Shard::open(disk.bdev(), cfg()).expect("open");
        for i in 0..50u32 {
            let w = s
                .put(
                    format!("k{i}").as_bytes(),
                    b"v",
                    WriteOpts {
                        ts: None,
                        durable: true,
                    },
                )
                .expect("put");
            s.wait_write(&w).expect("durable");
        }
        let st = s.stats();
        assert!(st.cycles >= 50, "a cycle per durable write: {}", st.cycles);
        if cache {
            assert!(st.flushes > 0, "no Flush with a volatile cache");
        } else {
            assert_eq!(st.flushes, 0, "a Flush without a volatile cache");
        }
        drop(s);
        // Durable either way: what the device holds (no cache to lose) recovers every write.
        let (mut s, _) =
            Shard::open(MemDisk::from_image(512, &disk.image()).bdev(), cfg()).expect("reopen");
        assert_eq!(
            s.get(b"k49").expect("get").map(|(v, _)| v),
            Some(b"v".to_vec())
        );
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Records replaced inside the buffer by one of another size are written as they are when they are
/// few (squeezing them out would cost an index update per moved record on the put path): recovery
/// replays them in order, so the newest still wins, after one reopen and after a second. When most of a
/// buffer is dead it is compacted before it is written.
#[test]
fn dead_records_in_a_segment_replay_in_order_and_hot_keys_are_compacted() {
    let cfg = ShardConfig {
        buffer_bytes: 8192,
        checkpoint_every: 1 << 20,
        ..Default::default()
    };
    let disk = MemDisk::new(512, 4096);
    let (mut s, _) = Shard::open(disk.bdev(), cfg.clone()).expect("open");
    let w = WriteOpts::default();
    // Enough live keys that the few dead records are not worth a compaction.
    for i in 0..40u32 {
        s.put(
            format!("live{i:02}").as_bytes(),
            b"0123456789012345678901234567890123456789",
            w,
        )
        .expect("put");
    }
    s.put(b"k", b"dead-value-of-k", w).expect("put");
    s.put(b"k", b"the-newest-value-of-k", w).expect("put");
    s.put(b"j", b"dead-value-of-j", w).expect("put");
    s.delete(b"j", w).expect("delete");
    s.put(b"j", b"j-after-its-tombstone", w).expect("put");
    s.put(b"m", b"dead-value-of-m", w).expect("put");
    s.delete(b"m", w).expect("delete");
    s.sync().expect("sync");
    let img = disk.image();
    for dead in [
        &b"dead-value-of-k"[..],
        b"dead-value-of-j",
        b"dead-value-of-m",
    ] {
        assert!(
            contains(&img, dead),
            "the dead record went to the device as it was"
        );
    }
    let check = |s: &mut Shard<_>| {
        let get = |s: &mut Shard<_>, k: &[u8]| s.get(k).expect("get").map(|v| v.0);
        assert_eq!(get(s, b"k"), Some(b"the-newest-value-of-k".to_vec()));
        assert_eq!(get(s, b"j"), Some(b"j-after-its-tombstone".to_vec()));
        assert_eq!(get(s, b"m"), None);
        assert_eq!(get(s, b"live07").map(|v| v.len()), Some(40));
    };
    check(&mut s);
    drop(s);
    let (mut s, rep) = Shard::open(disk.bdev(), cfg.clone()).expect("reopen");
    assert_eq!(rep.keys, 42, "{rep:?}");
    check(&mut s);
    // A second life writes on; a second reopen still finds the newest of everything.
    s.put(b"k", b"k-in-the-second-life", w).expect("put");
    s.sync().expect("sync");
    drop(s);
    let (mut s, _) = Shard::open(disk.bdev(), cfg.clone()).expect("second reopen");
    assert_eq!(
        s.get(b"k").expect("get").map(|v| v.0),
        Some(b"k-in-the-second-life".to_vec())
    );
    assert_eq!(
        s.get(b"j").expect("get").map(|v| v.0),
        Some(b"j-after-its-tombstone".to_vec())
    );

    // A hot key rewritten with values of changing sizes: most of the buffer is dead, so it is
    // compacted before it is written, and its early values never reach the device.
    for i in 0..60u32 {
        let v = format!("hot-{i:03}-{}", "x".repeat(i as usize % 7));
        s.put(b"hot", v.as_bytes(), w).expect("put");
    }
    s.sync().expect("sync");
    let img = disk.image();
    assert!(
        !contains(&img, b"hot-010-"),
        "a compacted record was written"
    );
    let newest = format!("hot-059-{}", "x".repeat(59 % 7));
    assert!(contains(&img, newest.as_bytes()));
    drop(s);
    let (mut s, _) = Shard::open(disk.bdev(), cfg).expect("third reopen");
    assert_eq!(
        s.get(b"hot").expect("get").map(|v| v.0),
        Some(newest.into_bytes())
    );
}

/// The shard threads' timers fire when due: with Linux's default slack (50 µs) each 20 µs sleep of a
/// shard waiting for its writes lasted about 70 µs, most of a durable put's latency on the file backend.
#[test]
fn shard_threads_sleep_with_a_fine_timer_slack() {
    let mut o = nvkv::Options::memory(nvkv::bdev::MemDisk::new(4096, 4096));
    o.shards = 2;
    o.pin_threads = false;
    let db = nvkv::Db::open(o).expect("open");
    let mut slacks = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").expect("tasks") {
        let dir = t.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim().starts_with("nvkv-shard-") {
            // The file is under /proc/TID, not /proc/self/task/TID.
            let tid = dir.file_name().expect("tid").to_string_lossy().into_owned();
            let ns = std::fs::read_to_string(format!("/proc/{tid}/timerslack_ns"))
                .expect("timerslack_ns");
            slacks.push((comm.trim().to_string(), ns.trim().to_string()));
        }
    }
    db.close().expect("close");
    slacks.sort();
    assert_eq!(
        slacks,
        vec![
            ("nvkv-shard-0".to_string(), "1".to_string()),
            ("nvkv-shard-1".to_string(), "1".to_string())
        ]
    );
}
