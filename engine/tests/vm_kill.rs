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
use std::error::Error;
use std::io::Write;
use std::sync::Arc;
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
    nvkv_qemu::kill::host_test(NAME, || host().map_err(|e| e.to_string()));
}

fn host() -> Result<(), Box<dyn Error>> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("nvkv-kill-{}", std::process::id()));
    let img = dir.join("disk.img");
    let serial = format!("NVKVKILL{}", std::process::id());
    let kills = kills();
    println!("running 1 test ({kills} kills of QEMU, then a check)");
    let sum = nvkv_qemu::kill::run_rounds(
        kills,
        KEYS,
        &serial,
        0x00c0_ffee ^ u64::from(std::process::id()),
        |round, last| {
            let vm = Vm::builder()
                .controller(NvmeController::new(&serial).namespace(NvmeNamespace::file(
                    &img,
                    128 << 20,
                    4096,
                )))
                .binary(&exe, "nvkv-guest-tests");
            let cmd = format!(
                "/bin/nvkv-guest-tests {round}{}\n",
                if last { " last" } else { "" }
            );
            (vm, cmd)
        },
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "kills {}, acknowledged writes {}, keys checked {}, lost: 0",
        sum.kills, sum.acked, sum.checked
    );
    Ok(())
}
