//! One seed on a `Shard` over `FaultBdev<MemBdev>`: lives of random operations, each ended by a power
//! loss (often several in a row), a process restart or a clean close, and after every recovery a check
//! of the whole store against the model. Single-threaded and driven by the seed alone.

use nvkv::bdev::{FaultConfig, FaultDisk, MemBdev, MemDisk, SplitMix64};
use nvkv::format::{REC_HDR_LEN, SEG_HDR_LEN};
use nvkv::pmem::{MemPmemImage, PersistentMemory};
use nvkv::{Error, Shard, ShardConfig};

use crate::model::{fail, Check, LifeEnd};
use crate::ops::{injected, Shape, Sim};

pub const BS: u32 = 512;

type Dev = nvkv::bdev::FaultBdev<MemBdev>;

/// What a seed decides up front.
#[derive(Debug, Clone)]
pub struct Params {
    pub blocks: u64,
    pub cfg: ShardConfig,
    pub lives: u32,
    pub ops_per_life: u64,
    pub faults: FaultConfig,
    /// One in this many lives gets a power loss scheduled inside an operation (0: never).
    pub mid_op_crash_every: u64,
    /// Shaped to fill the device.
    pub fill: bool,
    /// Shaped for chains of crashes (see `params`).
    pub chain: bool,
    /// Bytes of the durable log in simulated persistent memory (None: no durable log).
    pub dlog: Option<usize>,
    /// From this life on, the durable log's barriers fail.
    pub dlog_fail_life: Option<u32>,
}

/// Faults that keep every request succeeding (used while checking).
pub fn quiet(f: &FaultConfig) -> FaultConfig {
    FaultConfig {
        reorder: f.reorder,
        delay_ppm: f.delay_ppm,
        hang_polls: f.hang_polls,
        ..Default::default()
    }
}

pub fn params(rng: &mut SplitMix64) -> Params {
    // One seed in four fills its device: a small disk, many keys, big values, long lives.
    let fill = rng.below(4) == 0;
    let blocks = if fill {
        [160u64, 200, 320][rng.below(3) as usize]
    } else {
        [200u64, 320, 600, 1200, 2400][rng.below(5) as usize]
    };
    let buffer_bytes = if rng.below(4) == 0 { 8192 } else { 4096 };
    let cfg = ShardConfig {
        buffer_bytes,
        // Time never decides anything: cycles start on sync, durable waits, full buffers.
        commit_interval: std::time::Duration::from_secs(3600),
        checkpoint_every: 1 + rng.below(4) as u32,
        gc_free_low: [0.3, 0.6, 0.9, 0.99][rng.below(4) as usize],
        cache_bytes: if rng.below(2) == 0 { 0 } else { 64 << 10 },
        max_inflight_cycles: 1 + rng.below(4) as usize,
        ..Default::default()
    };
    let mut faults = FaultConfig {
        reorder: rng.below(4) != 0,
        delay_ppm: [0, 100_000, 300_000][rng.below(3) as usize],
        busy_ppm: [0, 20_000, 100_000][rng.below(3) as usize],
        hang_polls: 200_000,
        ..Default::default()
    };
    match rng.below(4) {
        // Crashes and reordering only.
        0 => {}
        // Now and then an error.
        1 | 2 => {
            faults.write_error_ppm = 3_000;
            faults.read_error_ppm = 2_000;
            faults.flush_error_ppm = 5_000;
            faults.reset_ppm = 500;
            faults.bad_range_ppm = 200_000;
            faults.corrupt_read_ppm = 2_000;
        }
        // A storm.
        _ => {
            faults.write_error_ppm = 30_000;
            faults.read_error_ppm = 20_000;
            faults.flush_error_ppm = 30_000;
            faults.reset_ppm = 5_000;
            faults.bad_range_ppm = 300_000;
            faults.corrupt_read_ppm = 10_000;
        }
    }
    if rng.below(5) == 0 {
        faults.torn_sector_ppm = 100_000;
    }
    // One seed in five: the stale-segment hunt (issue finding 1) — many short lives, each ended by a
    // power loss while durable writes of one-record segments are in flight, no injected errors.
    let chain = !fill && rng.below(5) == 0;
    let mut cfg = cfg;
    if chain {
        faults = FaultConfig {
            reorder: faults.reorder,
            delay_ppm: faults.delay_ppm,
            hang_polls: faults.hang_polls,
            ..Default::default()
        };
        cfg.max_inflight_cycles = 2 + rng.below(3) as usize;
    }
    Params {
        blocks,
        cfg,
        lives: if chain {
            4 + rng.below(6) as u32
        } else {
            2 + rng.below(4) as u32
        },
        ops_per_life: if fill {
            200 + rng.below(300)
        } else if chain {
            8 + rng.below(40)
        } else {
            30 + rng.below(200)
        },
        fill,
        chain,
        faults,
        mid_op_crash_every: 2,
        // Half the seeds acknowledge durable writes from a durable log, most of them small enough
        // to fill and wrap many times; one in eight of those sees its barriers fail from some life on.
        dlog: (rng.below(2) == 0).then(|| [4352usize, 8448, 65792][rng.below(3) as usize]),
        dlog_fail_life: (rng.below(8) == 0).then(|| rng.below(4) as u32),
    }
}

pub fn shape(p: &Params, rng: &mut SplitMix64) -> Shape {
    let cap = p.cfg.buffer_bytes.div_ceil(BS as usize) * BS as usize;
    Shape {
        data_keys: if p.fill {
            40 + rng.below(80)
        } else {
            4 + rng.below(40)
        },
        counter_keys: rng.below(4),
        max_value: cap - SEG_HDR_LEN - REC_HDR_LEN - nvkv::MAX_KEY_LEN,
        // Small disks with big values fill up.
        big_every: if p.fill {
            2
        } else {
            [0, 4, 12][rng.below(3) as usize]
        },
        fixed_len: if p.chain {
            Some([40, 100, 300][rng.below(3) as usize])
        } else {
            (rng.below(3) == 0).then(|| [100, 300, 700][rng.below(3) as usize])
        },
        chain: p.chain,
    }
}

/// Runs one seed. `Err` is the first failed check.
pub fn run_seed(seed: u64, sim: &mut Sim, p: &Params) -> Check {
    let mut image = vec![0u8; BS as usize * p.blocks as usize];
    // An open failed (excused by a fault): what it wrote before failing may explain later losses.
    let mut failed_open = false;
    let pmem = p.dlog.map(MemPmemImage::new);
    // How the last life with an open store ended, and whether its durable log was attached (None:
    // its open failed).
    let mut ended: Option<(LifeEnd, bool)> = None;
    let mut attached;
    // The store is checked after every recovery, and once more at the end (lives + 1 opens).
    for life in 0..=p.lives {
        let last = life == p.lives;
        let disk = FaultDisk::new(BS, image.clone(), sim.rng.next_u64(), p.faults.clone());
        let mem = MemDisk::from_image(BS, &image);
        sim.note(format!("life {life}: open ({} blocks)", p.blocks));
        sim.full = false;
        sim.io_failed = false;
        sim.pending.clear();
        // A power loss during recovery itself, now and then.
        if !last && life > 0 && sim.rng.below(6) == 0 {
            let n = sim.rng.below(40);
            sim.note(format!("crash scheduled at request {n} of open"));
            disk.schedule_crash(n);
        }
        // Faults during recovery in one life of four (they find their own classes and end the seed,
        // which would leave fewer seeds for what only several crashes in a row show).
        let faulty_open = !last && sim.rng.below(4) == 0;
        if !faulty_open {
            disk.set_config(quiet(&p.faults));
        }
        if let Some(img) = &pmem {
            img.fail_barriers(p.dlog_fail_life.is_some_and(|l| life >= l));
            check_open_without_log(sim, &image, p, ended)?;
        }
        disk.note_progress();
        let region = pmem
            .as_ref()
            .map(|i| Box::new(i.region(0, i.len())) as Box<dyn PersistentMemory>);
        let opened = Shard::open_with_log(disk.wrap(mem.bdev()), p.cfg.clone(), region);
        ended = None;
        let mut shard = match opened {
            Ok((s, rep)) => {
                sim.tally.recoveries += 1;
                sim.note(format!(
                    "recovered: {} segments, {} records, ckpt {}, stop: {}; sb errors {:?}, \
                     ckpt errors {:?}",
                    rep.segments_replayed,
                    rep.records_replayed,
                    rep.checkpoint_loaded,
                    rep.replay_stop,
                    rep.superblock_errors,
                    rep.checkpoint_errors
                ));
                if rep.replay_stop.contains("I/O error") {
                    // A read that failed is not the end of the log: what follows is still there.
                    return fail!(
                        "open-truncates-log-on-read-error",
                        "recovery ended the log at a read error and opened: {}",
                        rep.replay_stop
                    );
                }
                if rep
                    .checkpoint_errors
                    .iter()
                    .any(|e| e.contains("no checkpoint could be loaded"))
                {
                    // The index it held is gone, yet open succeeded (and wrote a new checkpoint).
                    return fail!(
                        "open-succeeds-without-checkpoint",
                        "open could not load any checkpoint and went on: {:?}",
                        rep.checkpoint_errors
                    );
                }
                s
            }
            Err(e) => {
                let c = disk.counters();
                let excused = !disk.is_powered() || injected(&c) > 0;
                sim.note(format!("open failed: {e} (excused {excused})"));
                if !excused {
                    let class = match e {
                        Error::NoSpace => "open-fails-nospace",
                        Error::Corrupt(_) => "open-fails-corrupt",
                        Error::Unrecoverable(_) => "open-fails-unrecoverable",
                        _ => "open-fails",
                    };
                    let suffix = if failed_open {
                        "-after-failed-open"
                    } else {
                        ""
                    };
                    return fail!(
                        format!("{class}{suffix}"),
                        "open failed without an injected fault: {e}"
                    );
                }
                // The failed open may have written: what it left is the medium now. The model is
                // unchanged (nothing was observed).
                failed_open = true;
                image = disk.crash();
                if let Some(img) = &pmem {
                    img.crash(sim.rng.next_u64());
                }
                sim.tally.crashes += 1;
                sim.tally.faults.add(&disk.counters());
                sim.model.next_life(LifeEnd::Crash);
                continue;
            }
        };
        attached = shard.stats().durable_log.is_some();
        // The recovered state, checked with faults off (and no power loss left over from open).
        disk.cancel_crash();
        let cfg = p.faults.clone();
        disk.set_config(quiet(&cfg));
        // A fault during recovery's reads is the likely cause of what the check finds: say so.
        let c = disk.counters();
        let open_faults = c.read_errors + c.bad_range_errors + c.corrupt_reads + c.resets;
        check_recovered(sim, &mut shard, &disk).map_err(|mut f| {
            if failed_open {
                f.class = format!("{}-after-failed-open", f.class);
            } else if open_faults > 0 {
                f.class = format!("{}-after-read-fault-in-open", f.class);
                f.detail = format!("{} [recovery saw {c:?}]", f.detail);
            }
            f
        })?;
        disk.set_config(cfg);
        if last {
            sim.tally.faults.add(&disk.counters());
            break;
        }
        if p.mid_op_crash_every > 0 && sim.rng.below(p.mid_op_crash_every) == 0 {
            let n = sim.rng.below(p.ops_per_life * 3);
            sim.note(format!("crash scheduled at request {n}"));
            disk.schedule_crash(n);
        }
        let end = run_life(sim, &mut shard, &disk, p)?;
        // A clean end whose close failed (excused by a fault) may leave the log named or not.
        let mut closed = false;
        image = match end {
            LifeEnd::Crash => {
                let mid = !disk.is_powered();
                sim.note(format!("crash (mid-op {mid})"));
                drop(shard);
                sim.tally.crashes += 1;
                sim.tally.mid_op_crashes += u64::from(mid);
                if let Some(img) = &pmem {
                    img.crash(sim.rng.next_u64());
                }
                disk.crash()
            }
            LifeEnd::Restart => {
                sim.note("restart");
                drop(shard);
                sim.tally.restarts += 1;
                disk.restart_image()
            }
            LifeEnd::Clean => {
                sim.note("close");
                sim.tally.clean += 1;
                disk.note_progress();
                let full = sim.full;
                match shard.close() {
                    Ok(_) => {
                        sim.model.mark_durable(u64::MAX);
                        closed = true;
                    }
                    Err(Error::NoSpace) if full => {
                        return fail!(
                            "close-fails-when-full",
                            "close got NoSpace after the device filled"
                        )
                    }
                    Err(e) => {
                        if disk.is_powered() && injected(&disk.counters()) == 0 {
                            return fail!(
                                "close-fails",
                                "close failed without an injected fault: {e}"
                            );
                        }
                    }
                }
                disk.restart_image()
            }
        };
        sim.tally.faults.add(&disk.counters());
        sim.model.next_life(end);
        ended = Some((end, attached && (end != LifeEnd::Clean || closed)));
        let _ = seed;
    }
    Ok(())
}

/// A database with a durable log: after a crash its superblock names the log, and opening without it
/// is refused (reads only, so nothing changes); after a clean close it opens without it. Checked on
/// a copy of the image, by a probe (which writes nothing).
fn check_open_without_log(
    sim: &mut Sim,
    image: &[u8],
    p: &Params,
    ended: Option<(LifeEnd, bool)>,
) -> Check {
    let Some((end, attached)) = ended else {
        return Ok(());
    };
    // After a clean end whose close failed the log may still be named: either answer is right.
    if end == LifeEnd::Clean && !attached {
        return Ok(());
    }
    if sim.rng.below(4) != 0 {
        return Ok(());
    }
    let copy = MemDisk::from_image(BS, image);
    let probed = Shard::probe(copy.bdev(), p.cfg.clone()).map(|_| ());
    sim.note(format!(
        "probe without the durable log after {end:?}: {probed:?}"
    ));
    match (end, probed) {
        (LifeEnd::Crash | LifeEnd::Restart, Err(Error::DurableLog(_))) if attached => Ok(()),
        (_, Ok(())) if end == LifeEnd::Clean || !attached => Ok(()),
        (end, r) => fail!(
            "open-without-durable-log",
            "after {end:?}, opening without the durable log gave {r:?}"
        ),
    }
}

/// Random operations until the life ends; returns how it ends.
fn run_life(
    sim: &mut Sim,
    shard: &mut Shard<Dev>,
    disk: &FaultDisk,
    p: &Params,
) -> Result<LifeEnd, crate::model::Failure> {
    for _ in 0..p.ops_per_life {
        let r = sim.step(shard, disk);
        soften(sim, r)?;
        if !disk.is_powered() {
            // A scheduled power loss hit inside the operation.
            return Ok(LifeEnd::Crash);
        }
        if sim.io_failed || shard.sync_failed().is_some() {
            sim.io_failed = true;
            let r = check_after_error(sim, shard, disk);
            soften(sim, r)?;
            return Ok(if sim.rng.below(4) == 0 {
                LifeEnd::Restart
            } else {
                LifeEnd::Crash
            });
        }
        if sim.full && sim.rng.below(4) == 0 {
            let r = check_when_full(sim, shard, disk);
            soften(sim, r)?;
        }
        if sim.rng.below(p.ops_per_life * 2) == 0 {
            break;
        }
    }
    if sim.rng.below(4) == 0 {
        let r = check_settles(sim, shard, disk);
        soften(sim, r)?;
    }
    if sim.shape.chain {
        return Ok(LifeEnd::Crash);
    }
    Ok(match sim.rng.below(10) {
        0..=5 => LifeEnd::Crash,
        6 | 7 => LifeEnd::Restart,
        _ => LifeEnd::Clean,
    })
}

/// Classes after which the model is still sound, so a seed may go on when they are known-open.
const CONTINUABLE: &[&str] = &[
    "tick-never-idle",
    "read-fails-after-write-error",
    "delete-fails-when-full",
    "sync-fails-when-full",
];

fn soften(sim: &mut Sim, r: Check) -> Check {
    match r {
        Err(f) if CONTINUABLE.contains(&f.class.as_str()) => sim.model.report_soft(b"", 0, Err(f)),
        r => r,
    }
}

/// After a failed write or flush: everything durable still reads back (faults off), and waiting for
/// durability answers (never hangs).
fn check_after_error(sim: &mut Sim, shard: &mut Shard<Dev>, disk: &FaultDisk) -> Check {
    // A scheduled power loss fails everything in flight and refuses the rest: that is the crash the
    // next life recovers from, not a write error to check reads against.
    if !disk.is_powered() {
        return Ok(());
    }
    let cfg = disk.config();
    disk.set_config(quiet(&cfg));
    sim.note(format!("after error: {:?}", shard.sync_failed()));
    for (k, c) in sim.model.durable_present() {
        disk.note_progress();
        sim.model.checked += 1;
        let before = disk.counters();
        match shard.get(&k) {
            // A block gone bad earlier (a persistent bad range) fails its reads: a typed error for
            // that record, which is what a device without redundancy gives.
            Err(Error::Io(_)) if disk.counters().bad_range_errors > before.bad_range_errors => {}
            // The scheduled power loss struck meanwhile.
            Err(Error::Io(_)) if !disk.is_powered() => return Ok(()),
            Ok(Some((v, m)))
                if Some(&v) == c.value.as_ref() && c.version.is_none_or(|x| x == m.version) => {}
            Ok(got) => {
                // A newer uncertain write may be what is there.
                sim.model
                    .check_live_read(&k, &got, "get after write error")?;
            }
            Err(e) => {
                return fail!(
                    "read-fails-after-write-error",
                    "get of durable key {:?} failed after the write error ({:?}): {e} [device \
                     powered {}, {:?}]",
                    String::from_utf8_lossy(&k),
                    shard.sync_failed(),
                    disk.is_powered(),
                    disk.counters()
                )
            }
        }
    }
    disk.set_config(cfg);
    Ok(())
}

/// Left alone, the shard runs out of background work: `tick` returns false within a bounded number
/// of calls. (The handle path's shard loop only sleeps, and only stops on close, when `tick` has
/// nothing left to do; a shard whose GC never reaches its target never stops.)
fn check_settles(sim: &mut Sim, shard: &mut Shard<Dev>, disk: &FaultDisk) -> Check {
    sim.note("settle");
    for _ in 0..2000 {
        disk.note_progress();
        match shard.tick() {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            // Errors are the other checks' business; a failing tick is not busy.
            Err(_) => return Ok(()),
        }
        if !disk.is_powered() {
            return Ok(());
        }
    }
    let st = shard.stats();
    fail!(
        "tick-never-idle",
        "2000 ticks in a row did work (GC churns: {} segments cleaned, {} bytes moved; {} free blocks, \
         {} live bytes, gc_free_low {})",
        st.gc_segments,
        st.gc_bytes_moved,
        st.free_blocks,
        st.live_bytes,
        sim.gc_free_low
    )
}

/// The device filled: deletes and sync must still work.
fn check_when_full(sim: &mut Sim, shard: &mut Shard<Dev>, disk: &FaultDisk) -> Check {
    let present: Vec<Vec<u8>> = sim
        .model
        .keys
        .iter()
        .filter(|(k, _)| sim.model.exact(k).is_some_and(|c| c.value.is_some()))
        .map(|(k, _)| k.clone())
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let key = present[sim.rng.below(present.len() as u64) as usize].clone();
    let id = sim.model.new_id();
    disk.note_progress();
    sim.note(format!("full: delete {}", String::from_utf8_lossy(&key)));
    match shard.delete(&key, nvkv::WriteOpts::default()) {
        Ok(w) if w.applied => {
            sim.model
                .record(&key, id, None, Some(w.version), None, w.gen, true)?
        }
        Ok(_) => {}
        Err(Error::NoSpace) => {
            sim.model.record(&key, id, None, None, None, 0, false)?;
            return fail!(
                "delete-fails-when-full",
                "a delete got NoSpace after the device filled"
            );
        }
        Err(e) => {
            sim.model.record(&key, id, None, None, None, 0, false)?;
            if disk.is_powered() && injected(&disk.counters()) == 0 {
                return fail!(
                    "delete-fails-when-full",
                    "a delete failed after the device filled: {e}"
                );
            }
            sim.io_failed = true;
        }
    }
    Ok(())
}

/// Every key the model knows is checked by get, then a full scan must agree with the gets and
/// hold no key never written.
fn check_recovered(sim: &mut Sim, shard: &mut Shard<Dev>, disk: &FaultDisk) -> Check {
    let keys: Vec<Vec<u8>> = sim.model.keys.keys().cloned().collect();
    let mut present = std::collections::BTreeMap::new();
    for k in keys {
        disk.note_progress();
        let got = match shard.get(&k) {
            Ok(g) => g,
            Err(Error::Corrupt(c)) => {
                return fail!(
                    "corrupt-after-recovery",
                    "get {:?} after recovery: {c}",
                    String::from_utf8_lossy(&k)
                )
            }
            Err(e) => {
                return fail!(
                    "get-fails-after-recovery",
                    "get {:?} after recovery: {e}",
                    String::from_utf8_lossy(&k)
                )
            }
        };
        if let Some((v, _)) = &got {
            present.insert(k.clone(), v.clone());
        }
        sim.model.check_recovered(&k, &got)?;
    }
    disk.note_progress();
    let all = match shard.scan(b"", None, usize::MAX) {
        Ok(a) => a,
        Err(e) => return fail!("scan-fails-after-recovery", "{e}"),
    };
    sim.model.checked += 1;
    for w in all.windows(2) {
        if w[0].0 >= w[1].0 {
            return fail!(
                "scan-unordered",
                "after recovery: {:?} before {:?}",
                w[0].0,
                w[1].0
            );
        }
    }
    for (k, v) in &all {
        match present.get(k) {
            Some(pv) if pv == v => {}
            Some(_) => {
                return fail!(
                    "scan-disagrees-with-get",
                    "key {:?}",
                    String::from_utf8_lossy(k)
                )
            }
            None if sim.model.keys.contains_key(k) => {
                return fail!(
                    "scan-disagrees-with-get",
                    "scan has {:?}, get does not",
                    String::from_utf8_lossy(k)
                )
            }
            None => {
                return fail!(
                    "unknown-key-after-recovery",
                    "scan returned key {:?} that was never written",
                    String::from_utf8_lossy(k)
                )
            }
        }
    }
    if all.len() != present.len() {
        return fail!(
            "scan-disagrees-with-get",
            "scan {} keys, gets {}",
            all.len(),
            present.len()
        );
    }
    sim.note(format!("checked {} keys after recovery", present.len()));
    Ok(())
}
