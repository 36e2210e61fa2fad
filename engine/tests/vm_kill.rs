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

use nvkv::bdev::NvmeFactory;
use nvkv::{Db, Options, WriteOpts};
use nvkv_qemu::{NvmeController, NvmeNamespace, Vm};
use std::collections::BTreeMap;
use std::error::Error;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ADDR: &str = "0000:00:10.0";
const KEYS: u64 = 400;
const NAME: &str = "kill_9_of_qemu_loses_no_acknowledged_write";

fn kills() -> usize {
    std::env::var("NVKV_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// The value write `id` stores under `key`.
fn value_for(key: u64, id: u64) -> Vec<u8> {
    let len = 20 + ((key * 131 + id * 7) % 900) as usize;
    let mut v = format!("k{key}-w{id}-").into_bytes();
    v.resize(len, b'a' + (id % 26) as u8);
    v
}

/// What a key's value is: write `id`'s, or absent.
fn parse_state(s: &str) -> Option<u64> {
    s.parse().ok()
}

fn options() -> Options {
    let mut o = Options::file("/dev/null", None);
    o.shards = 2;
    o.create = true;
    o.buffer_bytes = 64 << 10;
    o.commit_interval = Duration::from_millis(3);
    o
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
fn guest_round(round: u64, last: bool) -> Result<(), Box<dyn Error>> {
    let model = std::fs::read_to_string("/etc/nvkv/model").unwrap_or_default();
    let db = Db::open_with(options(), Arc::new(NvmeFactory::open(ADDR, 1)?))?;
    let h = db.handle();
    let mut out = std::io::stdout().lock();
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
            writeln!(
                out,
                "@@LOST key {key}: found {state:?}, allowed {allowed:?}"
            )?;
        }
    }
    // The state recovered is durable (open wrote a checkpoint of it): the next round's base.
    for key in 0..KEYS {
        let got = h.get(format!("key{key:04}").as_bytes())?;
        let id = got.and_then(|v| {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.split('-').nth(1))
                .and_then(|w| w.strip_prefix('w'))
                .and_then(|n| n.parse::<u64>().ok())
        });
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
    for seq in 0.. {
        let key = rng.below(KEYS);
        let id = round * 10_000_000 + seq;
        let k = format!("key{key:04}");
        match rng.below(10) {
            0..=6 => {
                writeln!(out, "@@TRY {key} {id}")?;
                out.flush()?;
                h.put_opts(k.as_bytes(), &value_for(key, id), durable)?;
                writeln!(out, "@@ACK {key} {id}")?;
            }
            7 | 8 => {
                writeln!(out, "@@TRY {key} -")?;
                out.flush()?;
                h.delete_opts(k.as_bytes(), durable)?;
                writeln!(out, "@@ACK {key} -")?;
            }
            _ => {
                // Not durable: tried, never acknowledged as durable.
                writeln!(out, "@@TRY {key} {id}")?;
                out.flush()?;
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
        if let Err(e) = guest_round(round, last) {
            println!("@@ERROR {e}");
            std::process::exit(1);
        }
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{NAME}: test");
        return;
    }
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        println!("running 0 tests");
        return;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !ci && std::env::var("NVKV_SKIP_VM").is_ok_and(|v| v == "1") {
        println!("SKIPPED (NVKV_SKIP_VM=1)");
        return;
    }
    match host() {
        Ok(()) => println!("test {NAME} ... ok\n\ntest result: ok. 1 passed; 0 failed"),
        Err(e) => {
            println!("test {NAME} ... FAILED\n{e}");
            std::process::exit(101);
        }
    }
}

/// Per key: the last acknowledged state (None: absent) and what was tried after it.
type Model = BTreeMap<u64, (Option<u64>, Vec<Option<u64>>)>;

fn model_file(m: &Model) -> Vec<u8> {
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

fn host() -> Result<(), Box<dyn Error>> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("nvkv-kill-{}", std::process::id()));
    let img = dir.join("disk.img");
    let serial = format!("NVKVKILL{}", std::process::id());
    let rounds = kills();
    println!("running 1 test ({rounds} kills of QEMU, then a check)");
    let mut model: Model = (0..KEYS).map(|k| (k, (None, Vec::new()))).collect();
    let (mut total_checked, mut total_acked, mut kills_done) = (0u64, 0u64, 0usize);
    let mut rng = Rng(0x00c0_ffee ^ u64::from(std::process::id()));
    for round in 0..=rounds {
        let last = round == rounds;
        let lines: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let (l2, pattern) = (lines.clone(), format!("serial={serial}"));
        // Kill after a random number of acknowledgements (the moment inside a write is random too).
        let kill_after = 50 + rng.below(400) as usize;
        let acks = Arc::new(Mutex::new(0usize));
        let killed = Arc::new(Mutex::new(false));
        let (a2, k2) = (acks.clone(), killed.clone());
        let vm = Vm::builder()
            .controller(NvmeController::new(&serial).namespace(NvmeNamespace::file(
                &img,
                128 << 20,
                4096,
            )))
            .binary(&exe, "nvkv-guest-tests")
            .file("/etc/nvkv/model", model_file(&model))
            .timeout(Duration::from_secs(300))
            .on_line(move |l| {
                if let Ok(mut v) = l2.lock() {
                    v.push(l.to_string());
                }
                if !last && l.starts_with("@@ACK") {
                    let mut a = a2.lock().unwrap_or_else(|e| e.into_inner());
                    *a += 1;
                    let mut k = k2.lock().unwrap_or_else(|e| e.into_inner());
                    if *a >= kill_after && !*k {
                        *k = true;
                        // SIGKILL of QEMU itself: nothing it holds is flushed or shut down.
                        let _ = std::process::Command::new("pkill")
                            .args(["-KILL", "-f", &pattern])
                            .status();
                    }
                }
            });
        let cmd = format!(
            "/bin/nvkv-guest-tests {round}{}\n",
            if last { " last" } else { "" }
        );
        let r = vm.run(&cmd);
        let was_killed = *killed.lock().unwrap_or_else(|e| e.into_inner());
        match (&r, last) {
            (Ok(out), true) if out.exit_code == 0 => {}
            (Ok(out), _) if !was_killed => {
                return Err(format!(
                    "round {round}: the guest ended (exit {}) before the kill:\n{}",
                    out.exit_code,
                    out.output
                        .lines()
                        .rev()
                        .take(10)
                        .collect::<Vec<_>>()
                        .join("\n")
                )
                .into())
            }
            (Err(e), _) if !was_killed => return Err(format!("round {round}: {e}").into()),
            _ => {}
        }
        let lines = lines.lock().map(|v| v.clone()).unwrap_or_default();
        if let Some(e) = lines.iter().find(|l| l.starts_with("@@ERROR")) {
            return Err(format!("round {round}: {e}").into());
        }
        let lost: Vec<&String> = lines.iter().filter(|l| l.starts_with("@@LOST")).collect();
        let checked = lines
            .iter()
            .find_map(|l| l.strip_prefix("@@CHECKED "))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| format!("round {round}: the guest did not check (killed too early?)"))?;
        if !lost.is_empty() {
            return Err(format!(
                "round {round}: {} keys lost or wrong after kill {kills_done}:\n{}",
                lost.len(),
                lost.iter()
                    .take(20)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
            .into());
        }
        total_checked += checked;
        // The recovered state is the new base; then the writes of this life.
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
                Some("@@ACK") => {
                    *e = (id, Vec::new());
                    total_acked += 1;
                }
                _ => {}
            }
        }
        if !last {
            kills_done += 1;
        }
        println!(
            "round {round}: {checked} keys checked against the acknowledged writes, {} writes \
             acknowledged{}",
            lines.iter().filter(|l| l.starts_with("@@ACK")).count(),
            if last {
                ", closed"
            } else {
                ", then kill -9 of QEMU"
            }
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "kills {kills_done}, acknowledged writes {total_acked}, keys checked {total_checked}, lost: 0"
    );
    Ok(())
}
