//! Crash test of the whole handle path: several client threads make durable puts through a 2-shard
//! database on a recording device; images are rebuilt from prefixes of the recorded stream (with the
//! unflushed writes lost or kept) and reopened as a database. Every put whose durable acknowledgement
//! reached its client before the crash point must be there with its value (or a later one of the key).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use nvkv::bdev::{MemDisk, Recorder, RecordingFactory, WriteEvent};
use nvkv::{Db, Options, WriteOpts};

/// (key, value, position of the durable acknowledgement in the event stream).
type Put = (Vec<u8>, Vec<u8>, Option<usize>);

const BS: u32 = 512;
const BLOCKS: u64 = 4096;

fn opts(disk: MemDisk) -> Options {
    let mut o = Options::memory(disk);
    o.shards = 2;
    o.buffer_bytes = 4096;
    o.checkpoint_every = 4;
    o.commit_interval = Duration::from_millis(2);
    o.pin_threads = false;
    o
}

#[test]
fn durable_acks_through_the_handle_survive_crashes() {
    let disk = MemDisk::new(BS, BLOCKS).with_volatile_cache(true);
    let rec = Recorder::new();
    let factory = Arc::new(RecordingFactory {
        inner: disk.clone(),
        rec: rec.clone(),
    });
    let db = Db::open_with(opts(disk.clone()), factory).expect("open");
    // Each client owns its keys, so per key the writes are ordered by the client.
    let clients: Vec<_> = (0..3u32)
        .map(|c| {
            let h = db.handle();
            let rec = rec.clone();
            std::thread::spawn(move || {
                let mut log: Vec<Put> = Vec::new();
                for i in 0..120u32 {
                    let key = format!("c{c}-k{}", i % 10).into_bytes();
                    let value = format!("c{c}-w{i}-{}", "v".repeat((i % 13) as usize)).into_bytes();
                    let durable = i % 3 == 0;
                    h.put_opts(&key, &value, WriteOpts { ts: None, durable })
                        .expect("put");
                    let acked = durable.then(|| rec.position());
                    log.push((key, value, acked));
                }
                log
            })
        })
        .collect();
    let mut writes = Vec::new();
    for c in clients {
        writes.extend(c.join().expect("client"));
    }
    drop(db);
    let events = rec.events();
    assert!(writes.iter().filter(|w| w.2.is_some()).count() >= 100);

    let mut by_key: BTreeMap<Vec<u8>, Vec<&Put>> = BTreeMap::new();
    for w in &writes {
        by_key.entry(w.0.clone()).or_default().push(w);
    }
    let mut base = vec![0u8; BS as usize * BLOCKS as usize];
    let mut data: HashMap<usize, (u64, Arc<Vec<u8>>)> = HashMap::new();
    let mut uncovered: Vec<usize> = Vec::new();
    let mut covered: HashSet<usize> = HashSet::new();
    let mut images = 0;
    let step = (events.len() / 150).max(1);
    for pos in 0..=events.len() {
        if pos > 0 {
            match &events[pos - 1] {
                WriteEvent::Write { id, lba, data: d } => {
                    data.insert(*id, (*lba, d.clone()));
                    uncovered.push(*id);
                }
                WriteEvent::FlushDone { covers } => {
                    let mut ids = covers.clone();
                    ids.sort_unstable();
                    for id in ids {
                        if covered.insert(id) {
                            let (lba, d) = &data[&id];
                            let at = *lba as usize * BS as usize;
                            base[at..at + d.len()].copy_from_slice(d);
                        }
                    }
                    uncovered.retain(|id| !covered.contains(id));
                }
            }
        }
        if pos % step != 0 && pos != events.len() {
            continue;
        }
        for keep_unflushed in [false, true] {
            let mut img = base.clone();
            if keep_unflushed {
                for id in &uncovered {
                    let (lba, d) = &data[id];
                    let at = *lba as usize * BS as usize;
                    img[at..at + d.len()].copy_from_slice(d);
                }
            }
            let db = Db::open(opts(MemDisk::from_image(BS, &img)))
                .unwrap_or_else(|e| panic!("pos {pos}: reopen failed: {e}"));
            for (key, ws) in &by_key {
                let got = db.get(key).unwrap_or_else(|e| {
                    panic!(
                        "pos {pos} keep {keep_unflushed} key {:?}: {e} {:?}",
                        String::from_utf8_lossy(key),
                        db.recovery_reports()
                    )
                });
                let last = ws.iter().rposition(|w| w.2.is_some_and(|a| a <= pos));
                if let Some(d) = last {
                    let ok = ws[d..].iter().any(|w| Some(&w.1) == got.as_ref());
                    assert!(
                        ok,
                        "pos {pos} keep {keep_unflushed}: key {:?} lost its durable value: got {:?}, acked {:?} at {:?}, later {:?}; {:?}",
                        String::from_utf8_lossy(key),
                        got.as_ref().map(|v| String::from_utf8_lossy(v).to_string()),
                        String::from_utf8_lossy(&ws[d].1),
                        ws[d].2,
                        ws[d + 1..].iter().map(|w| String::from_utf8_lossy(&w.1).to_string()).collect::<Vec<_>>(),
                        db.recovery_reports()
                    );
                } else if let Some(v) = &got {
                    assert!(
                        ws.iter().any(|w| &w.1 == v),
                        "pos {pos}: a value nobody wrote"
                    );
                }
            }
            db.close().expect("close");
            images += 1;
        }
    }
    eprintln!(
        "handle-path crash test: {images} images over {} events",
        events.len()
    );
}
