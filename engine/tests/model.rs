//! Model-based tests: random operation sequences run against the engine and against a `BTreeMap`,
//! including close + reopen, must give identical results. Small buffers and disks make cycles,
//! checkpoints and GC happen within a few hundred operations.

use std::collections::BTreeMap;
use std::time::Duration;

use nvkv::bdev::{FileDisk, MemDisk};
use nvkv::{Db, Error, Options, Shard, ShardConfig, WriteOpts};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, Vec<u8>),
    Delete(u8),
    Get(u8),
    /// Compare-and-swap with the right version (true) or a wrong one.
    Cas(u8, bool, Option<Vec<u8>>),
    Incr(u8, i8),
    Scan(u8, u8, u8),
    Sync,
    Tick,
    Reopen,
    /// Sync, then drop without closing (no final checkpoint): reopening replays the log.
    CrashReopen,
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k:03}").into_bytes()
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u8..24;
    let v = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(any::<u8>(), 100..400),
        Just(vec![0u8; 8]),
    ];
    prop_oneof![
        6 => (k.clone(), v.clone()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => k.clone().prop_map(Op::Delete),
        4 => k.clone().prop_map(Op::Get),
        2 => (k.clone(), any::<bool>(), proptest::option::of(v)).prop_map(|(k, r, v)| Op::Cas(k, r, v)),
        2 => (k.clone(), any::<i8>()).prop_map(|(k, d)| Op::Incr(k, d)),
        1 => (k.clone(), k, 1u8..10).prop_map(|(a, b, l)| Op::Scan(a, b, l)),
        1 => Just(Op::Sync),
        2 => Just(Op::Tick),
        1 => Just(Op::Reopen),
        1 => Just(Op::CrashReopen),
    ]
}

/// The model: key → (value, version as the engine reported it).
#[derive(Default)]
struct Model {
    map: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
}

/// What both sides answer, compared for equality.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Done,
    Value(Option<Vec<u8>>),
    Err(String),
    Num(i64),
    Scan(Vec<(Vec<u8>, Vec<u8>)>),
}

fn err(e: Error) -> Out {
    Out::Err(match e {
        Error::VersionMismatch { .. } => "mismatch".into(),
        Error::NotAnInteger => "nan".into(),
        Error::Overflow => "overflow".into(),
        other => format!("{other}"),
    })
}

/// Applies `op` to the model, given the version the engine assigned (for writes).
fn model_apply(m: &mut Model, op: &Op, engine_version: Option<u64>) -> Out {
    match op {
        Op::Put(k, v) => {
            m.map
                .insert(key(*k), (v.clone(), engine_version.unwrap_or(0)));
            Out::Done
        }
        Op::Delete(k) => {
            m.map.remove(&key(*k));
            Out::Done
        }
        Op::Get(k) => Out::Value(m.map.get(&key(*k)).map(|x| x.0.clone())),
        Op::Cas(k, right, v) => {
            let cur = m.map.get(&key(*k)).map(|x| x.1);
            if !right {
                return Out::Err("mismatch".into());
            }
            let _ = cur;
            match v {
                Some(v) => {
                    m.map
                        .insert(key(*k), (v.clone(), engine_version.unwrap_or(0)));
                }
                None => {
                    m.map.remove(&key(*k));
                }
            }
            Out::Done
        }
        Op::Incr(k, d) => {
            let cur = match m.map.get(&key(*k)) {
                None => 0,
                Some((v, _)) => match <[u8; 8]>::try_from(v.as_slice()) {
                    Ok(b) => i64::from_le_bytes(b),
                    Err(_) => return Out::Err("nan".into()),
                },
            };
            let n = cur + i64::from(*d);
            m.map.insert(
                key(*k),
                (n.to_le_bytes().to_vec(), engine_version.unwrap_or(0)),
            );
            Out::Num(n)
        }
        Op::Scan(a, b, l) => {
            let (lo, hi) = (key(*a.min(b)), key(*a.max(b)));
            Out::Scan(
                m.map
                    .range(lo..hi)
                    .take(*l as usize)
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect(),
            )
        }
        Op::Sync | Op::Tick | Op::Reopen | Op::CrashReopen => Out::Done,
    }
}

/// The version a CAS should present: the model's (right) or one that cannot match.
fn cas_expected(m: &Model, k: u8, right: bool) -> Option<u64> {
    let cur = m.map.get(&key(k)).map(|x| x.1);
    if right {
        cur
    } else {
        Some(cur.map_or(u64::MAX / 2, |v| v + 1_000_000))
    }
}

fn shard_cfg() -> ShardConfig {
    ShardConfig {
        buffer_bytes: 4096,
        checkpoint_every: 3,
        gc_free_low: 0.6,
        commit_interval: Duration::from_secs(60),
        // Two segments' worth: reads hit the segment cache and miss it (the database tests below keep
        // the default, larger than their disks, so every segment written is cached and the cache's
        // overlap rule is exercised as space is reused).
        cache_bytes: 8192,
        ..Default::default()
    }
}

fn run_shard(ops: &[Op]) -> Result<(), TestCaseError> {
    let disk = MemDisk::new(512, 700);
    let mut s = Shard::open(disk.bdev(), shard_cfg())
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .0;
    let mut m = Model::default();
    let o = WriteOpts::default();
    for (i, op) in ops.iter().enumerate() {
        let (out, ver) = match op {
            Op::Put(k, v) => match s.put(&key(*k), v, o) {
                Ok(w) => (Out::Done, Some(w.version)),
                Err(e) => (err(e), None),
            },
            Op::Delete(k) => match s.delete(&key(*k), o) {
                Ok(_) => (Out::Done, None),
                Err(e) => (err(e), None),
            },
            Op::Get(k) => (
                match s.get(&key(*k)) {
                    Ok(v) => Out::Value(v.map(|x| x.0)),
                    Err(e) => err(e),
                },
                None,
            ),
            Op::Cas(k, right, v) => {
                match s.cas(&key(*k), cas_expected(&m, *k, *right), v.as_deref(), o) {
                    Ok(w) => (Out::Done, Some(w.version)),
                    Err(e) => (err(e), None),
                }
            }
            Op::Incr(k, d) => match s.incr(&key(*k), i64::from(*d), o) {
                Ok((n, w)) => (Out::Num(n), Some(w.version)),
                Err(e) => (err(e), None),
            },
            Op::Scan(a, b, l) => {
                let (lo, hi) = (key(*a.min(b)), key(*a.max(b)));
                (
                    match s.scan(&lo, Some(&hi), *l as usize) {
                        Ok(v) => Out::Scan(v),
                        Err(e) => err(e),
                    },
                    None,
                )
            }
            Op::Sync => (s.sync().map_or_else(err, |_| Out::Done), None),
            Op::Tick => (s.tick().map_or_else(err, |_| Out::Done), None),
            Op::Reopen => {
                s.close().map_err(|e| TestCaseError::fail(e.to_string()))?;
                let (s2, rep) = Shard::open(disk.bdev(), shard_cfg())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(
                    rep.keys as usize,
                    m.map.len(),
                    "keys after reopen: {:?}",
                    rep
                );
                prop_assert!(!rep.checkpoint_fallback);
                s = s2;
                (Out::Done, None)
            }
            Op::CrashReopen => {
                s.sync().map_err(|e| TestCaseError::fail(e.to_string()))?;
                drop(s);
                let (s2, rep) = Shard::open(disk.bdev(), shard_cfg())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(
                    rep.keys as usize,
                    m.map.len(),
                    "keys after crash reopen: {:?}",
                    rep
                );
                prop_assert!(!rep.checkpoint_fallback);
                s = s2;
                (Out::Done, None)
            }
        };
        let want = model_apply(&mut m, op, ver);
        prop_assert_eq!(out, want, "op {} {:?}", i, op);
    }
    // Everything, once more, after a final reopen.
    s.close().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let (mut s, _) =
        Shard::open(disk.bdev(), shard_cfg()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (k, (v, ver)) in &m.map {
        let got = s.get(k).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got.map(|x| (x.0, x.1.version)), Some((v.clone(), *ver)));
    }
    prop_assert_eq!(s.len(), m.map.len());
    Ok(())
}

fn db_opts(backend: &Backend) -> Options {
    let mut o = match backend {
        Backend::Mem(d) => Options::memory(d.clone()),
        Backend::File(p) => Options::file(p.clone(), Some(4 << 20)),
    };
    o.shards = 2;
    o.buffer_bytes = 8192;
    o.checkpoint_every = 3;
    o.commit_interval = Duration::from_millis(1);
    o.pin_threads = false;
    o
}

enum Backend {
    Mem(MemDisk),
    File(std::path::PathBuf),
}

fn run_db(ops: &[Op], backend: Backend) -> Result<(), TestCaseError> {
    let fail = |e: Error| TestCaseError::fail(e.to_string());
    let mut db = Db::open(db_opts(&backend)).map_err(fail)?;
    let mut m = Model::default();
    for (i, op) in ops.iter().enumerate() {
        let (out, ver) = match op {
            Op::Put(k, v) => match db.put(&key(*k), v) {
                Ok(w) => (Out::Done, Some(w.version)),
                Err(e) => (err(e), None),
            },
            Op::Delete(k) => (db.delete(&key(*k)).map_or_else(err, |_| Out::Done), None),
            Op::Get(k) => (db.get(&key(*k)).map_or_else(err, Out::Value), None),
            Op::Cas(k, right, v) => {
                match db.cas(&key(*k), cas_expected(&m, *k, *right), v.as_deref()) {
                    Ok(w) => (Out::Done, Some(w.version)),
                    Err(e) => (err(e), None),
                }
            }
            Op::Incr(k, d) => match db.incr(&key(*k), i64::from(*d)) {
                Ok(n) => {
                    let ver = db.get_meta(&key(*k)).map_err(fail)?.map(|x| x.1.version);
                    (Out::Num(n), ver)
                }
                Err(e) => (err(e), None),
            },
            Op::Scan(a, b, l) => {
                let (lo, hi) = (key(*a.min(b)), key(*a.max(b)));
                (
                    db.scan(&lo, Some(&hi), *l as usize)
                        .map_or_else(err, Out::Scan),
                    None,
                )
            }
            Op::Sync | Op::Tick => (db.sync().map_or_else(err, |_| Out::Done), None),
            Op::Reopen | Op::CrashReopen => {
                db.close().map_err(fail)?;
                db = Db::open(db_opts(&backend)).map_err(fail)?;
                let keys: u64 = db.recovery_reports().iter().map(|r| r.keys).sum();
                prop_assert_eq!(keys as usize, m.map.len());
                (Out::Done, None)
            }
        };
        let want = model_apply(&mut m, op, ver);
        prop_assert_eq!(out, want, "op {} {:?}", i, op);
    }
    db.close().map_err(fail)?;
    let db = Db::open(db_opts(&backend)).map_err(fail)?;
    let all = db.scan(b"", None, 1000).map_err(fail)?;
    let want: Vec<(Vec<u8>, Vec<u8>)> = m
        .map
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    prop_assert_eq!(all, want);
    db.close().map_err(fail)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn shard_matches_model(ops in proptest::collection::vec(op(), 1..300)) {
        run_shard(&ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn db_on_memory_matches_model(ops in proptest::collection::vec(op(), 1..150)) {
        run_db(&ops, Backend::Mem(MemDisk::new(512, 8192)))?;
    }

    #[test]
    fn db_on_file_matches_model(ops in proptest::collection::vec(op(), 1..150)) {
        let dir = std::env::temp_dir().join(format!("nvkv-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.join("db");
        let _ = std::fs::remove_file(&path);
        let r = run_db(&ops, Backend::File(path.clone()));
        let _ = std::fs::remove_file(&path);
        r?;
    }
}

#[test]
fn file_backend_uses_direct_io_where_possible() {
    let dir = std::env::temp_dir().join(format!("nvkv-direct-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let disk = FileDisk::open(&dir.join("d"), Some(1 << 20)).expect("open");
    eprintln!(
        "O_DIRECT: {}, io_uring: {}",
        disk.is_direct(),
        disk.bdev().uses_io_uring()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
