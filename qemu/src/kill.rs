//! Stacked real kills from the host: boot the VM on a raw-file namespace, let a guest program write,
//! `kill -9` QEMU at a random moment, boot again on the same image, and check what the guest finds
//! against a model of what was acknowledged — round after round, with no clean shutdown between two
//! kills. The guest program (Rust or C) speaks a line protocol on the console:
//!
//! - it reads the model from `/etc/nvkv/model`: per line `key acked tried...`, each an id or `-`
//!   (absent): the last acknowledged state and the writes tried after it without an acknowledgement;
//! - prints `@@LOST key ...` for a key whose value is none of those, then `@@STATE key id|-` for every
//!   key (what recovery made durable), then `@@CHECKED n LOST m`;
//! - then writes, printing `@@TRY key id|-` before and `@@ACK key id|-` after each durable write,
//!   until it is killed; in the last round it closes instead, and `@@ERROR what` ends it on a failure.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::vm::VmBuilder;

/// The `harness = false` side of a host-driven VM test named `name`: answers `--list`, honours a name
/// filter and `NVKV_SKIP_VM=1` (outside CI), runs `f` and prints libtest's result lines (exit 101 on a
/// failure).
pub fn host_test(name: &str, f: impl FnOnce() -> Result<(), String>) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{name}: test");
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        println!("running 0 tests");
        return;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !ci && std::env::var("NVKV_SKIP_VM").is_ok_and(|v| v == "1") {
        println!("SKIPPED (NVKV_SKIP_VM=1)");
        return;
    }
    match f() {
        Ok(()) => println!("test {name} ... ok\n\ntest result: ok. 1 passed; 0 failed"),
        Err(e) => {
            println!("test {name} ... FAILED\n{e}");
            std::process::exit(101);
        }
    }
}

/// Sends SIGKILL to the QEMU processes this process started (children whose command name starts
/// with `qemu-system`, found by parent pid in `/proc`): a kill by process id, never by a name
/// pattern that could hit another user's QEMU. Returns how many were signalled.
pub fn kill_own_qemu() -> usize {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut n = 0;
    for e in procs.flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // "pid (comm) state ppid ...": comm may hold spaces, so split at the last ')'.
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if comm.starts_with("qemu-system") && ppid == Some(me.as_str()) {
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .is_ok_and(|s| s.success());
            n += usize::from(killed);
        }
    }
    n
}

/// Per key: the last acknowledged state (None: absent) and what was tried after it.
pub type Model = BTreeMap<u64, (Option<u64>, Vec<Option<u64>>)>;

/// What the rounds did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KillSummary {
    /// Sums of the guest's `@@COUNT name n` lines over all rounds.
    pub counts: BTreeMap<String, u64>,
    /// Kills of QEMU.
    pub kills: usize,
    /// Writes acknowledged as durable by the guest.
    pub acked: u64,
    /// Keys checked against the model after a recovery.
    pub checked: u64,
}

fn parse_state(s: &str) -> Option<u64> {
    s.parse().ok()
}

/// The model as the guest reads it.
pub fn model_file(m: &Model) -> Vec<u8> {
    let mut s = String::new();
    for (k, (acked, tried)) in m {
        let f = |x: &Option<u64>| x.map_or("-".to_string(), |v| v.to_string());
        s += &format!("{k} {}", f(acked));
        for t in tried {
            s += &format!(" {}", f(t));
        }
        s += "\n";
    }
    s.into_bytes()
}

/// Runs `kills` rounds ending in `kill -9` of QEMU and a last one ending in a close. `vm(round, last)`
/// gives the VM (its controller's serial must be `serial`, the model file is added here) and the
/// guest command of a round. Fails on the first key lost or wrong, naming the round.
pub fn run_rounds(
    kills: usize,
    keys: u64,
    serial: &str,
    seed: u64,
    vm: impl Fn(usize, bool) -> (VmBuilder, String),
) -> Result<KillSummary, String> {
    let mut model: Model = (0..keys).map(|k| (k, (None, Vec::new()))).collect();
    let mut sum = KillSummary::default();
    let mut rng = seed | 1;
    for round in 0..=kills {
        let last = round == kills;
        let lines: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        // Kill after a random number of acknowledgements (the moment inside a write is random too).
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_after = 50 + (rng % 400) as usize;
        let killed = Arc::new(Mutex::new(false));
        let (l2, k2, pattern) = (lines.clone(), killed.clone(), format!("serial={serial}"));
        let acks = Arc::new(Mutex::new(0usize));
        let (builder, cmd) = vm(round, last);
        let builder = builder
            .file("/etc/nvkv/model", model_file(&model))
            .timeout(Duration::from_secs(300))
            .on_line(move |l| {
                if let Ok(mut v) = l2.lock() {
                    v.push(l.to_string());
                }
                if !last && l.starts_with("@@ACK") {
                    let mut a = acks.lock().unwrap_or_else(|e| e.into_inner());
                    *a += 1;
                    let mut k = k2.lock().unwrap_or_else(|e| e.into_inner());
                    if *a >= kill_after && !*k {
                        *k = true;
                        // SIGKILL of QEMU itself: nothing it holds is flushed or shut down. A failure
                        // to run pkill shows as a round that ends without a kill.
                        let _ = std::process::Command::new("pkill")
                            .args(["-KILL", "-f", &pattern])
                            .status();
                    }
                }
            });
        let r = builder.run(&cmd);
        let was_killed = *killed.lock().unwrap_or_else(|e| e.into_inner());
        match (&r, last) {
            (Ok(out), true) if out.exit_code == 0 => {}
            (Ok(out), _) if !was_killed => {
                return Err(format!(
                    "round {round}: the guest ended (exit {}) without a kill:\n{}",
                    out.exit_code,
                    out.output
                        .lines()
                        .rev()
                        .take(10)
                        .collect::<Vec<_>>()
                        .join("\n")
                ))
            }
            (Err(e), _) if !was_killed => return Err(format!("round {round}: {e}")),
            _ => {}
        }
        let lines = lines.lock().map(|v| v.clone()).unwrap_or_default();
        if let Some(e) = lines.iter().find(|l| l.starts_with("@@ERROR")) {
            return Err(format!("round {round}: {e}"));
        }
        let checked = lines
            .iter()
            .find_map(|l| l.strip_prefix("@@CHECKED "))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| format!("round {round}: the guest did not check (killed too early?)"))?;
        let lost: Vec<&String> = lines.iter().filter(|l| l.starts_with("@@LOST")).collect();
        if !lost.is_empty() {
            return Err(format!(
                "round {round}: {} keys lost or wrong after kill {}:\n{}",
                lost.len(),
                sum.kills,
                lost.iter()
                    .take(20)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        sum.checked += checked;
        for l in &lines {
            let mut f = l.split_whitespace();
            if let (Some("@@COUNT"), Some(name), Some(n)) = (f.next(), f.next(), f.next()) {
                if let Ok(n) = n.parse::<u64>() {
                    *sum.counts.entry(name.to_string()).or_default() += n;
                }
            }
        }
        // The recovered state is the new base; then the writes of this life.
        let mut acked = 0;
        for l in &lines {
            let mut f = l.split_whitespace();
            let (tag, key, id) = (f.next(), f.next(), f.next());
            if !matches!(tag, Some("@@STATE" | "@@TRY" | "@@ACK")) {
                continue;
            }
            let (Some(key), Some(id)) = (key.and_then(|k| k.parse::<u64>().ok()), id) else {
                continue;
            };
            let id = parse_state(id);
            let e = model.entry(key).or_insert((None, Vec::new()));
            match tag {
                Some("@@STATE") => *e = (id, Vec::new()),
                Some("@@TRY") => e.1.push(id),
                _ => {
                    *e = (id, Vec::new());
                    acked += 1;
                }
            }
        }
        sum.acked += acked;
        if !last {
            sum.kills += 1;
        }
        println!(
            "round {round}: {checked} keys checked against the acknowledged writes, {acked} writes \
             acknowledged{}",
            if last { ", closed" } else { ", then kill -9 of QEMU" }
        );
    }
    Ok(sum)
}
