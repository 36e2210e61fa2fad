//! Many client threads on the handle path. Every write gets a version that is unique and increases per
//! shard, so the per-key order of writes is known; the history is then checked for per-key
//! linearizability: a read returns the value of the write whose version it reports, that write started
//! before the read ended, and no write that finished before the read started is newer than what the
//! read saw (a read that finds nothing must be explained by a delete that is late enough).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nvkv::api::Op;
use nvkv::bdev::MemDisk;
use nvkv::{Db, Error, Options};

#[derive(Debug, Clone)]
enum Ev {
    /// A put or delete (value None) that was applied with `version`.
    Write {
        key: u8,
        value: Option<Vec<u8>>,
        version: u64,
        start: u64,
        end: u64,
    },
    /// A read that saw `seen` (value and version) or nothing.
    Read {
        key: u8,
        seen: Option<(Vec<u8>, u64)>,
        start: u64,
        end: u64,
    },
}

fn key(k: u8) -> Vec<u8> {
    format!("ck{k}").into_bytes()
}

fn opts() -> Options {
    let mut o = Options::memory(MemDisk::new(512, 32768));
    o.shards = 3;
    o.buffer_bytes = 8192;
    o.commit_interval = Duration::from_millis(1);
    o.pin_threads = false;
    o
}

#[test]
fn per_key_linearizable_on_the_handle_path() {
    let db = Db::open(opts()).expect("open");
    let clock = Arc::new(AtomicU64::new(0));
    let tick = |c: &AtomicU64| c.fetch_add(1, Ordering::SeqCst);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let h = db.handle();
            let clock = clock.clone();
            std::thread::spawn(move || {
                let mut evs = Vec::new();
                let mut x = 0x9e37_79b9u64 ^ (t << 32);
                for i in 0..400u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = (x % 5) as u8;
                    let start = tick(&clock);
                    match x % 10 {
                        0..=3 => {
                            let v = format!("t{t}-{i}").into_bytes();
                            let w = h.put(&key(k), &v).expect("put");
                            evs.push(Ev::Write {
                                key: k,
                                value: Some(v),
                                version: w.version,
                                start,
                                end: tick(&clock),
                            });
                        }
                        4 => {
                            let w = h.delete(&key(k)).expect("delete");
                            if w.applied {
                                evs.push(Ev::Write {
                                    key: k,
                                    value: None,
                                    version: w.version,
                                    start,
                                    end: tick(&clock),
                                });
                            }
                        }
                        5 => {
                            // CAS on what we just read: applies only if nothing came in between.
                            let cur = h.get_meta(&key(k)).expect("get");
                            let v = format!("c{t}-{i}").into_bytes();
                            let start = tick(&clock);
                            match h.cas(&key(k), cur.map(|c| c.1.version), Some(&v)) {
                                Ok(w) => evs.push(Ev::Write {
                                    key: k,
                                    value: Some(v),
                                    version: w.version,
                                    start,
                                    end: tick(&clock),
                                }),
                                Err(Error::VersionMismatch { .. }) => {}
                                Err(e) => panic!("cas: {e}"),
                            }
                        }
                        _ => {
                            let seen = h
                                .get_meta(&key(k))
                                .expect("get")
                                .map(|(v, m)| (v, m.version));
                            evs.push(Ev::Read {
                                key: k,
                                seen,
                                start,
                                end: tick(&clock),
                            });
                        }
                    }
                }
                evs
            })
        })
        .collect();
    let mut evs = Vec::new();
    for t in threads {
        evs.extend(t.join().expect("client thread"));
    }
    // Index the writes per key by version.
    // Per key: (version, value, start, end).
    type Writes = Vec<(u64, Option<Vec<u8>>, u64, u64)>;
    let mut writes: HashMap<u8, Writes> = HashMap::new();
    for e in &evs {
        if let Ev::Write {
            key,
            value,
            version,
            start,
            end,
        } = e
        {
            writes
                .entry(*key)
                .or_default()
                .push((*version, value.clone(), *start, *end));
        }
    }
    for ws in writes.values_mut() {
        ws.sort_by_key(|w| w.0);
        assert!(
            ws.windows(2).all(|p| p[0].0 < p[1].0),
            "versions must be unique per key"
        );
    }
    let mut reads = 0;
    for e in &evs {
        let Ev::Read {
            key,
            seen,
            start,
            end,
        } = e
        else {
            continue;
        };
        reads += 1;
        let ws = writes.get(key).map(Vec::as_slice).unwrap_or(&[]);
        // The newest write that finished before this read began: the read may not see anything older.
        let floor = ws.iter().filter(|w| w.3 < *start).map(|w| w.0).max();
        match seen {
            Some((v, ver)) => {
                let w = ws
                    .iter()
                    .find(|w| w.0 == *ver)
                    .expect("read saw a version nobody wrote");
                assert_eq!(w.1.as_ref(), Some(v), "value does not match its version");
                assert!(w.2 < *end, "read saw a write that started after it ended");
                assert!(
                    floor.is_none_or(|f| *ver >= f),
                    "read went back in time: saw {ver}, floor {floor:?}"
                );
            }
            None => {
                // Some delete no older than the floor must have started before the read ended (or the
                // key was never written before the read).
                let explained = match floor {
                    None => true,
                    Some(f) => ws.iter().any(|w| w.1.is_none() && w.0 >= f && w.2 < *end),
                };
                assert!(
                    explained,
                    "read found nothing, but the newest finished write is {floor:?}"
                );
            }
        }
    }
    assert!(reads > 100);
    db.close().expect("close");
}

#[test]
fn increments_from_many_threads_and_batches() {
    let db = Db::open(opts()).expect("open");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let h = db.handle();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                for _ in 0..150 {
                    seen.push(h.incr(b"counter", 1).expect("incr"));
                }
                // Many requests in flight from one thread.
                let mut b = h.batch();
                for i in 0..64u32 {
                    let k = format!("b{t}-{i}").into_bytes();
                    b.submit_key(
                        &k.clone(),
                        Op::Put(k, vec![t as u8; 10], Default::default()),
                    )
                    .expect("submit");
                }
                for a in b.wait() {
                    a.expect("batched put");
                }
                seen
            })
        })
        .collect();
    let mut all: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    all.sort_unstable();
    // Linearizable increments hand out every count exactly once.
    assert_eq!(all, (1..=600).collect::<Vec<i64>>());
    assert_eq!(
        db.get(b"counter").expect("get"),
        Some(600i64.to_le_bytes().to_vec())
    );
    assert_eq!(db.scan(b"b", Some(b"c"), 1000).expect("scan").len(), 256);
    db.close().expect("close");
}
