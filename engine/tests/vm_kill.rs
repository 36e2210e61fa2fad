//! Real kills, stacked: QEMU is killed with SIGKILL at a random moment while the guest writes durable
//! puts and deletes through nvkv on QEMU's NVMe (a raw-file namespace), then booted again on the same
//! image: recovery must hold every acknowledged write (its newest value, deletes honoured) and nothing
//! never written; then the guest writes more and is killed again. No clean shutdown between two kills.
//!
//! Each round: the host hands the guest the model (per key: the last acknowledged state and the writes
//! tried after it without an acknowledgement); the guest opens, checks every key against it, prints the
//! state it found (durable now: recovery checkpoints it), then writes — `@@TRY` before each operation,
//! `@@ACK` once it is acknowledged durable — until it is killed. The last round checks and closes.
//! Prints "kills, acknowledged writes checked, lost".
//!
//! Three variants, each its own series of kills: durable writes acknowledged by persistence cycles (the
//! namespace's Flush), by a durable log in the controller's Persistent Memory Region (on a host file in
//! /dev/shm: memory that outlives QEMU), and by a durable log on an emulated NVDIMM (devdax). The logs
//! are small (16 KiB of records per shard), so they wrap many times and fill now and then (falling back to
//! cycles); the guest reports how many writes each path acknowledged and how many records recovery
//! replayed from the log. `NVKV_KILLS` (cycles), `NVKV_KILLS_PMR` and `NVKV_KILLS_NVDIMM` set the kills.

use nvkv::bdev::NvmeFactory;
use nvkv::{Db, DurableLogDevice, Options, WriteOpts};
use nvkv_qemu::{NvmeController, NvmeNamespace, Vm};
use std::error::Error;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

const ADDR: &str = "0000:00:10.0";
const KEYS: u64 = 400;
const NAME: &str = "kill_9_of_qemu_loses_no_acknowledged_write";

fn kills(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where the guest's durable writes are acknowledged from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogMode {
    Cycle,
    Pmr,
    Nvdimm,
}

impl LogMode {
    fn name(self) -> &'static str {
        match self {
            LogMode::Cycle => "cycle",
            LogMode::Pmr => "pmr",
            LogMode::Nvdimm => "nvdimm",
        }
    }
    fn parse(s: &str) -> LogMode {
        match s {
            "pmr" => LogMode::Pmr,
            "nvdimm" => LogMode::Nvdimm,
            _ => LogMode::Cycle,
        }
    }
}

/// Bytes of the durable log per shard: small, so that it wraps and fills.
const LOG_BYTES: usize = (16 << 10) + 256;

/// The value write `id` stores under `key`.
fn value_for(key: u64, id: u64) -> Vec<u8> {
    let len = 20 + ((key * 131 + id * 7) % 900) as usize;
    let mut v = format!("k{key}-w{id}-").into_bytes();
    v.resize(len, b'a' + (id % 26) as u8);
    v
}

/// The id of the write a value came from.
fn write_id(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.split('-').nth(1))
        .and_then(|w| w.strip_prefix('w'))
        .and_then(|n| n.parse::<u64>().ok())
}

/// Waits until what was written to the console has left the guest: a write acknowledged within
/// microseconds (the durable log) could otherwise reach the device while the line announcing it
/// still sits in the guest's tty buffer when QEMU is killed, and the host would not know it was tried.
fn drain_console() {
    // SAFETY: tcdrain takes a file descriptor and touches no memory; on a non-tty it fails with
    // ENOTTY, which leaves nothing to wait for.
    unsafe {
        libc::tcdrain(1);
    }
}

/// What a key's value is: write `id`'s, or absent.
fn parse_state(s: &str) -> Option<u64> {
    s.parse().ok()
}

fn options(mode: LogMode) -> Result<Options, Box<dyn Error>> {
    let mut o = Options::file("/dev/null", None);
    o.shards = 2;
    o.create = true;
    o.buffer_bytes = 64 << 10;
    // With a durable log, cycles may come less often (that is what the log is for): 30 ms leaves
    // records for recovery to replay after most kills.
    o.commit_interval = Duration::from_millis(if mode == LogMode::Cycle { 3 } else { 30 });
    o.durable_log_bytes = LOG_BYTES;
    o.durable_log = match mode {
        LogMode::Cycle => DurableLogDevice::None,
        LogMode::Pmr => DurableLogDevice::Pmr,
        LogMode::Nvdimm => DurableLogDevice::Pmem(nvkv_qemu::guest::nvdimm_devdax(2 << 20)?.path),
    };
    Ok(o)
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// In the guest: check against the model, print the state found, then write until killed (or, in the
/// last round, close).
fn guest_round(round: u64, last: bool, mode: LogMode) -> Result<(), Box<dyn Error>> {
    let model = std::fs::read_to_string("/etc/nvkv/model").unwrap_or_default();
    let db = Db::open_with(options(mode)?, Arc::new(NvmeFactory::open(ADDR, 1)?))?;
    let h = db.handle();
    let mut out = std::io::stdout().lock();
    let replayed: u64 = db
        .recovery_reports()
        .iter()
        .map(|r| r.durable_log_replayed)
        .sum();
    writeln!(out, "@@COUNT replayed_from_log {replayed}")?;
    let st = h.stats()?;
    if mode != LogMode::Cycle && st.iter().any(|s| s.durable_log.is_none()) {
        return Err(format!("no durable log attached: {:?}", st[0].durable_log_failed).into());
    }
    let (mut checked, mut lost) = (0u64, 0u64);
    for line in model.lines() {
        // key acked pending...
        let mut f = line.split_whitespace();
        let (Some(key), Some(acked)) = (f.next(), f.next()) else {
            continue;
        };
        let key: u64 = key.parse()?;
        let allowed: Vec<Option<u64>> = std::iter::once(parse_state(acked))
            .chain(f.map(parse_state))
            .collect();
        let got = h.get(format!("key{key:04}").as_bytes())?;
        let state = match &got {
            None => None,
            Some(v) => allowed
                .iter()
                .flatten()
                .find(|id| value_for(key, **id) == *v)
                .copied()
                .map(Some)
                .unwrap_or(Some(u64::MAX)),
        };
        checked += 1;
        if state == Some(u64::MAX) || !allowed.contains(&state) {
            lost += 1;
            let found_id = got.as_deref().and_then(write_id);
            writeln!(
                out,
                "@@LOST key {key}: found {state:?} (write {found_id:?}), allowed {allowed:?}"
            )?;
        }
    }
    // The state recovered is durable (open wrote a checkpoint of it): the next round's base.
    for key in 0..KEYS {
        let got = h.get(format!("key{key:04}").as_bytes())?;
        let id = got.as_deref().and_then(write_id);
        match id {
            Some(id) => writeln!(out, "@@STATE {key} {id}")?,
            None => writeln!(out, "@@STATE {key} -")?,
        }
    }
    writeln!(out, "@@CHECKED {checked} LOST {lost}")?;
    out.flush()?;
    if last {
        db.close()?;
        return Ok(());
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (round + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let durable = WriteOpts {
        ts: None,
        durable: true,
    };
    let (mut by_log, mut by_cycle, mut appended) = (0u64, 0u64, 0u64);
    for seq in 0.. {
        if seq % 32 == 31 {
            // How the acknowledgements so far were made (the last ones before the kill are not counted).
            let st = h.stats()?;
            let (l, c, a) = st.iter().fold((0, 0, 0), |(l, c, a), s| {
                (
                    l + s.durable_log_writes,
                    c + s.durable_cycle_writes,
                    a + s.durable_log_appended_bytes,
                )
            });
            writeln!(out, "@@COUNT acked_by_log {}", l - by_log)?;
            writeln!(out, "@@COUNT acked_by_cycle {}", c - by_cycle)?;
            writeln!(out, "@@COUNT log_bytes {}", a - appended)?;
            (by_log, by_cycle, appended) = (l, c, a);
        }
        let key = rng.below(KEYS);
        let id = round * 10_000_000 + seq;
        let k = format!("key{key:04}");
        match rng.below(10) {
            0..=6 => {
                writeln!(out, "@@TRY {key} {id}")?;
                out.flush()?;
                drain_console();
                h.put_opts(k.as_bytes(), &value_for(key, id), durable)?;
                writeln!(out, "@@ACK {key} {id}")?;
            }
            7 | 8 => {
                writeln!(out, "@@TRY {key} -")?;
                out.flush()?;
                drain_console();
                h.delete_opts(k.as_bytes(), durable)?;
                writeln!(out, "@@ACK {key} -")?;
            }
            _ => {
                // Not durable: tried, never acknowledged as durable.
                writeln!(out, "@@TRY {key} {id}")?;
                out.flush()?;
                drain_console();
                h.put(k.as_bytes(), &value_for(key, id))?;
            }
        }
        out.flush()?;
    }
    Ok(())
}

fn main() {
    if nvkv_qemu::guest::in_guest() {
        let round: u64 = std::env::args()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let last = std::env::args().nth(2).as_deref() == Some("last");
        let mode = LogMode::parse(std::env::args().nth(3).as_deref().unwrap_or("cycle"));
        if let Err(e) = guest_round(round, last, mode) {
            println!("@@ERROR {e}");
            std::process::exit(1);
        }
        return;
    }
    nvkv_qemu::kill::host_test(NAME, || {
        for (mode, kills) in [
            (LogMode::Cycle, kills("NVKV_KILLS", 12)),
            (LogMode::Pmr, kills("NVKV_KILLS_PMR", 8)),
            (LogMode::Nvdimm, kills("NVKV_KILLS_NVDIMM", 8)),
        ] {
            if kills > 0 {
                host(mode, kills).map_err(|e| format!("{}: {e}", mode.name()))?;
            }
        }
        Ok(())
    });
}

fn host(mode: LogMode, kills: usize) -> Result<(), Box<dyn Error>> {
    let exe = std::env::current_exe()?;
    let id = format!("{}-{}", std::process::id(), mode.name());
    let dir = std::env::temp_dir().join(format!("nvkv-kill-{id}"));
    // Persistent memory lives in the host's tmpfs: it outlives QEMU, as persistent memory outlives
    // a power loss.
    let pm_dir = std::path::PathBuf::from("/dev/shm").join(format!("nvkv-kill-{id}"));
    std::fs::create_dir_all(&pm_dir)?;
    let img = dir.join("disk.img");
    let serial = format!("NVKVKILL{}", std::process::id());
    println!(
        "running 1 test ({kills} kills of QEMU, then a check; durable writes by {})",
        mode.name()
    );
    let sum = nvkv_qemu::kill::run_rounds(
        kills,
        KEYS,
        &serial,
        0x00c0_ffee ^ u64::from(std::process::id()),
        |round, last| {
            let mut ctrl =
                NvmeController::new(&serial).namespace(NvmeNamespace::file(&img, 128 << 20, 4096));
            if mode == LogMode::Pmr {
                ctrl = ctrl.pmr(pm_dir.join("pmr"), 1 << 20);
            }
            let mut vm = Vm::builder()
                .controller(ctrl)
                .binary(&exe, "nvkv-guest-tests");
            if mode == LogMode::Nvdimm {
                vm = vm.nvdimm(pm_dir.join("nvdimm"), 32 << 20);
            }
            let cmd = format!(
                "/bin/nvkv-guest-tests {round} {} {}\n",
                if last { "last" } else { "more" },
                mode.name()
            );
            (vm, cmd)
        },
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&pm_dir);
    let count = |k: &str| sum.counts.get(k).copied().unwrap_or(0);
    println!(
        "{}: kills {}, acknowledged writes {}, keys checked {}, lost: 0; acknowledged by the log {}, \
         by a cycle {} (counted every 32 writes), records replayed from the log at recovery {}, \
         the logs went round {:.1} times",
        mode.name(),
        sum.kills,
        sum.acked,
        sum.checked,
        count("acked_by_log"),
        count("acked_by_cycle"),
        count("replayed_from_log"),
        count("log_bytes") as f64 / (2 * (LOG_BYTES - 256)) as f64
    );
    if mode != LogMode::Cycle && (count("acked_by_log") == 0 || count("replayed_from_log") == 0) {
        return Err("the durable log acknowledged nothing or recovery never replayed it".into());
    }
    Ok(())
}
