//! The deterministic fault simulator (issue 13, "Tests"): from a seed, a random workload of every
//! operation on a `Shard` over `FaultBdev<MemBdev>` with injected faults — power losses at random points
//! (also inside an operation and during recovery), several in a row with no clean shutdown between,
//! torn and reordered writes, out-of-order completions, read/write/flush errors, bad blocks, `Busy`,
//! controller resets, small disks that fill up — and after every recovery a check against a model of
//! what was acknowledged.
//!
//! Environment:
//! - `NVKV_SIM_SEEDS=N`: seeds to run (default [`DEFAULT_SEEDS`]); `NVKV_SIM_BASE=X` shifts them.
//! - `NVKV_SIM_SEED=0x…`: replay one seed (twice, checking the runs are identical) with its op trace.
//! - `NVKV_SIM_KNOWN=a,b` (or `all`): failure classes reported loudly but not failed (besides
//!   [`KNOWN_OPEN`]); by default every failure fails the test.
//! - `NVKV_SIM_HANDLE_SEEDS=N`: seeds of the handle-path part (timing-dependent, see `handle`).

//!
//! Failure classes (the name of the check that failed; a suffix `-after-read-fault-in-open` or
//! `-after-failed-open` says a fault during recovery, or a failed open before it, is the likely cause):
//! - `durable-write-lost`: an acknowledged durable write is missing after recovery.
//! - `stale-value-after-recovery`: a value older than the last acknowledged durable one is served.
//! - `lost-write-resurrected`: a write lost in an earlier crash (the recovery after it did not have
//!   it) is back after a later one; `recovered-value-lost`: a value recovered at one open is gone at
//!   the next with no write in between (e.g. a lost delete came back).
//! - `never-written-value`, `unknown-key-after-recovery`, `version-wrong-after-recovery`,
//!   `corrupt-after-recovery`, `get-fails-after-recovery`, `scan-*`: served state that never existed,
//!   a read failing with faults off, scans that disagree with gets or are unordered.
//! - `version-reused` (the earlier holder was durable or closed cleanly), `version-reused-of-lost-write`
//!   (it was lost in a crash), `version-reused-same-life`, `version-not-increasing`.
//! - `cas-wrong-outcome`, `lww-wrong-outcome`, `incr-wrong-sum`, `read-wrong-in-life`: an operation's
//!   answer disagrees with the model while the store runs.
//! - `read-fails-after-write-error`: reads of durable data fail after a write/flush error.
//! - `open-truncates-log-on-read-error`, `open-succeeds-without-checkpoint`,
//!   `recovery-dropped-entries`, `open-fails*`: recovery loses or refuses what it should keep.
//! - `delete-fails-when-full`, `sync-fails-when-full`, `close-fails-when-full`, `close-fails`,
//!   `tick-never-idle` (background work never ends), `hang` (a wait polled without end),
//!   `close-hangs`, `io-error-without-fault:*`, `corrupt-in-life:*`, `unexpected-error:*`, `panic`.

mod handle;
mod model;
mod ops;
mod workload;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use nvkv::bdev::{SimHang, SplitMix64};

use model::Failure;
use ops::{Sim, Tally};

/// Seeds per run by default: sized to take about a minute in a debug build on a 2-core machine.
pub const DEFAULT_SEEDS: u64 = 2000;

/// Failure classes known to be open in the engine: reported, not failed. Empty: everything fails.
pub const KNOWN_OPEN: &[&str] = &[];

thread_local! {
    static CURRENT_OP: RefCell<String> = const { RefCell::new(String::new()) };
}

/// What the seed is doing (reported when it hangs or panics).
pub fn set_current_op(s: &str) {
    CURRENT_OP.with(|c| {
        let mut c = c.borrow_mut();
        c.clear();
        c.push_str(&s[..s.len().min(200)]);
    });
}

fn current_op() -> String {
    CURRENT_OP.with(|c| c.borrow().clone())
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// The i-th seed of a run: spread out so neighbouring runs share nothing.
fn seed_of(i: u64) -> u64 {
    SplitMix64::new(env_u64("NVKV_SIM_BASE").unwrap_or(0) + i).next_u64()
}

/// A panic's payload as a failure (the device's hang detector, or an engine panic).
pub fn panic_failure(p: Box<dyn std::any::Any + Send>, op: &str) -> Failure {
    if let Some(h) = p.downcast_ref::<SimHang>() {
        return Failure {
            class: "hang".into(),
            detail: format!(
                "{} polls without progress ({} requests outstanding) during: {op}",
                h.polls, h.outstanding
            ),
        };
    }
    let msg = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".into());
    Failure {
        class: "panic".into(),
        detail: format!("{msg} during: {op}"),
    }
}

/// Keeps expected panics (the hang detector, and engine panics the simulator reports itself) quiet.
pub fn quiet_panics() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<SimHang>().is_some() {
            return;
        }
        if std::env::var_os("NVKV_SIM_VERBOSE").is_some() {
            prev(info);
        }
    }));
}

struct Outcome {
    /// Known-open failures the seed went on after.
    soft: Vec<Failure>,
    tally: Tally,
    checked: u64,
    result: Result<(), Failure>,
    digest: u64,
    trace: Option<String>,
}

fn run_one(seed: u64, trace: bool, known: &[String]) -> Outcome {
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut rng = SplitMix64::new(seed);
        let p = workload::params(&mut rng);
        let shape = workload::shape(&p, &mut rng);
        let mut sim = Sim::new(rng.next_u64(), shape, trace, known.to_vec());
        sim.gc_free_low = p.cfg.gc_free_low;
        sim.note(format!("seed {seed:#x}: {p:?}"));
        let result = workload::run_seed(seed, &mut sim, &p);
        Outcome {
            soft: std::mem::take(&mut sim.model.soft),
            checked: sim.model.checked,
            tally: sim.tally,
            result,
            digest: sim.digest,
            trace: sim.trace,
        }
    }));
    r.unwrap_or_else(|p| Outcome {
        soft: Vec::new(),
        tally: Tally::default(),
        checked: 0,
        result: Err(panic_failure(p, &current_op())),
        digest: 0,
        trace: None,
    })
}

fn known_classes() -> Vec<String> {
    let mut k: Vec<String> = KNOWN_OPEN.iter().map(|s| s.to_string()).collect();
    if let Ok(v) = std::env::var("NVKV_SIM_KNOWN") {
        k.extend(
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        );
    }
    k
}

fn is_known(known: &[String], class: &str) -> bool {
    known.iter().any(|k| k == "all" || k == class)
}

/// The command that replays `seed` exactly (the known-open list changes where a seed stops, so it is
/// part of the replay).
fn replay_cmd(seed: u64) -> String {
    let known = std::env::var("NVKV_SIM_KNOWN")
        .map(|k| format!("NVKV_SIM_KNOWN={k} "))
        .unwrap_or_default();
    format!(
        "{known}NVKV_SIM_SEED={seed:#x} cargo test -p nvkv --test sim -- --nocapture shard_seeds"
    )
}

#[test]
fn shard_seeds() {
    quiet_panics();
    let known = known_classes();
    if let Some(seed) = env_u64("NVKV_SIM_SEED") {
        let a = run_one(seed, true, &known);
        let b = run_one(seed, true, &known);
        if let (Some(x), Some(y)) = (&a.trace, &b.trace) {
            if let Some((i, (l1, l2))) = x
                .lines()
                .zip(y.lines())
                .enumerate()
                .find(|(_, (l1, l2))| l1 != l2)
            {
                eprintln!("replay differs at trace line {i}:\n  first:  {l1}\n  second: {l2}");
            }
        }
        if let Some(t) = &a.trace {
            eprintln!("{t}");
        }
        eprintln!(
            "seed {seed:#x}: digest {:#x} / replayed {:#x}: {}",
            a.digest,
            b.digest,
            if a.digest == b.digest {
                "identical"
            } else {
                "DIFFERENT"
            }
        );
        eprintln!(
            "ops {} checked {} faults {:?}",
            a.tally.ops, a.checked, a.tally.faults
        );
        for f in &a.soft {
            eprintln!("seed {seed:#x} KNOWN-OPEN [{}]: {}", f.class, f.detail);
        }
        match &a.result {
            Ok(()) => eprintln!("seed {seed:#x} passes"),
            Err(f) => {
                eprintln!("seed {seed:#x} FAILS [{}]: {}", f.class, f.detail);
                assert!(is_known(&known, &f.class), "[{}] {}", f.class, f.detail);
            }
        }
        assert_eq!(a.digest, b.digest, "replay not identical");
        return;
    }
    let n = env_u64("NVKV_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let started = Instant::now();
    let mut total = Tally::default();
    let mut checked = 0u64;
    let mut classes: BTreeMap<String, (u64, u64, String)> = BTreeMap::new();
    let mut failed_seeds = 0u64;
    for i in 0..n {
        let seed = seed_of(i);
        let o = run_one(seed, false, &known);
        checked += o.checked;
        let t = &o.tally;
        total.ops += t.ops;
        total.nospace += t.nospace;
        total.durable_acks += t.durable_acks;
        total.logged_acks += t.logged_acks;
        total.crashes += t.crashes;
        total.mid_op_crashes += t.mid_op_crashes;
        total.restarts += t.restarts;
        total.clean += t.clean;
        total.recoveries += t.recoveries;
        total.faults.add(&t.faults);
        let mut seen = std::collections::BTreeSet::new();
        for f in o.soft {
            if !seen.insert(f.class.clone()) {
                continue;
            }
            let e = classes.entry(f.class).or_insert((0, seed, f.detail));
            e.0 += 1;
        }
        if let Err(f) = o.result {
            failed_seeds += 1;
            let e = classes.entry(f.class).or_insert((0, seed, f.detail));
            e.0 += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let f = &total.faults;
    eprintln!(
        "sim: {n} seeds in {secs:.1} s ({:.0} seeds/s), {} failed; {} ops, {} checks, {} recoveries, \
         {} crashes ({} inside an operation), {} restarts, {} clean closes, {} durable acks ({} by the durable log), {} NoSpace",
        n as f64 / secs,
        failed_seeds,
        total.ops,
        checked,
        total.recoveries,
        total.crashes,
        total.mid_op_crashes,
        total.restarts,
        total.clean,
        total.durable_acks,
        total.logged_acks,
        total.nospace
    );
    eprintln!(
        "sim faults: write errors {}, read errors {}, corrupted reads {}, flush errors {}, bad ranges {} ({} requests failed), \
         busy {}, resets {} ({} requests failed), reordered {}, delayed {}, at crashes: blocks dropped {}, \
         landed {}, torn writes {}, torn sectors {}",
        f.write_errors,
        f.read_errors,
        f.corrupt_reads,
        f.flush_errors,
        f.bad_ranges,
        f.bad_range_errors,
        f.busy,
        f.resets,
        f.reset_failed,
        f.reordered,
        f.delayed,
        f.blocks_dropped,
        f.blocks_landed,
        f.torn_writes,
        f.torn_sectors
    );
    let mut unknown = Vec::new();
    for (class, (count, seed, detail)) in &classes {
        let tag = if is_known(&known, class) {
            "KNOWN-OPEN"
        } else {
            "FAIL"
        };
        eprintln!("sim {tag} [{class}] in {count} seeds; first {seed:#x}: {detail}");
        eprintln!("    replay: {}", replay_cmd(*seed));
        if !is_known(&known, class) {
            unknown.push(class.clone());
        }
    }
    assert!(
        unknown.is_empty(),
        "simulator failure classes: {unknown:?} (see above)"
    );
}

#[test]
fn handle_seeds() {
    quiet_panics();
    handle::run(&known_classes());
}
