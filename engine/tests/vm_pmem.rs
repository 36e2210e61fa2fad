//! An NVDIMM in the guest, as device DAX: `MappedPmem` maps `/dev/daxX.Y`, writes a pattern to two
//! regions (the split of one mapping, as two shards would get) and barriers; the host then finds
//! the pattern in the NVDIMM's backing file —
//!
//! 1. after the guest powered off (boot 1, which configures the devdax device through sysfs and
//!    prints the guest-side cost of a barrier after a 128-byte store: median and p99 of 2000);
//! 2. after `kill -9` of QEMU right after the barrier returned (boot 2, on the same file: the
//!    kernel finds the DAX info block boot 1 left and brings the device up by itself).
//!
//! Guest lines: `@@DEV path size align data_offset reused`, `@@KIND kind flush`, `@@BARRIER phase`,
//! `@@COST median_ns p99_ns n`, `@@ERROR what`.

use nvkv::pmem::{MappedPmem, PersistentMemory};
use nvkv_qemu::Vm;
use std::error::Error;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NAME: &str = "nvdimm_devdax_stores_survive_power_off_and_kill_9";
/// The NVDIMM (and its backing file).
const NVDIMM_BYTES: u64 = 128 << 20;
/// The two regions, from the start of the devdax device.
const REGION: usize = 16 << 20;
/// Where in each region the pattern goes (not line-aligned on purpose), and how long it is.
const PAT_OFF: usize = 12_345;
const PAT_LEN: usize = 64 << 10;
/// Where in region 0 the barrier-cost stores go (after the pattern), and how many.
const COST_OFF: usize = 1 << 20;
const COST_ROUNDS: usize = 2000;

fn pattern(phase: u64, region: usize, i: usize) -> u8 {
    let x = (i as u64).wrapping_mul(0x9e37_79b9) ^ (phase << 20) ^ ((region as u64) << 12);
    (x ^ (x >> 13) ^ (x >> 27)) as u8
}

fn guest(phase: u64) -> Result<(), Box<dyn Error>> {
    let mut out = std::io::stdout().lock();
    let dd = nvkv_qemu::guest::nvdimm_devdax(2 << 20)?;
    writeln!(
        out,
        "@@DEV {} {} {} {} {}",
        dd.path.display(),
        dd.size,
        dd.align,
        dd.data_offset,
        dd.reused
    )?;
    let whole = MappedPmem::open_whole(&dd.path)?;
    writeln!(out, "@@KIND {} {:?}", whole.kind(), whole.flush_insn())?;
    out.flush()?;
    let mut regions = whole.split(2, REGION)?;
    for (r, region) in regions.iter_mut().enumerate() {
        let data: Vec<u8> = (0..PAT_LEN).map(|i| pattern(phase, r, i)).collect();
        region.write(PAT_OFF, &data);
    }
    for region in &mut regions {
        region.barrier()?;
    }
    writeln!(out, "@@BARRIER {phase}")?;
    out.flush()?;
    if phase == 2 {
        // The host kills QEMU now; a guest still alive after a minute ends the test itself.
        std::thread::sleep(Duration::from_secs(60));
        return Err("not killed within 60 s of the barrier".into());
    }
    barrier_cost(&mut regions[0], &mut out)
}

/// Prints `@@COST median p99 n`: the barrier after each of `COST_ROUNDS` 128-byte stores (at
/// 128-byte aligned offsets from `COST_OFF`, so two cache lines each).
fn barrier_cost(r: &mut MappedPmem, out: &mut impl Write) -> Result<(), Box<dyn Error>> {
    let store = [0x5au8; 128];
    let mut ns: Vec<u64> = Vec::with_capacity(COST_ROUNDS);
    for i in 0..COST_ROUNDS {
        r.write(COST_OFF + (i % 512) * 128, &store);
        let t = Instant::now();
        r.barrier()?;
        ns.push(t.elapsed().as_nanos() as u64);
    }
    ns.sort_unstable();
    writeln!(
        out,
        "@@COST {} {} {}",
        ns[ns.len() / 2],
        ns[ns.len() * 99 / 100],
        ns.len()
    )?;
    Ok(())
}

/// `nvkv-guest-tests file PATH` (for exploring by hand, see docs/nvdimm.md): maps PATH (created
/// with 4 MiB when missing), prints its kind and the barrier cost.
fn guest_file(path: &str) -> Result<(), Box<dyn Error>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    if f.metadata()?.len() < 4 << 20 {
        f.set_len(4 << 20)?;
    }
    let mut r = MappedPmem::open_whole(path)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@KIND {} {:?}", r.kind(), r.flush_insn())?;
    barrier_cost(&mut r, &mut out)
}

fn main() {
    if nvkv_qemu::guest::in_guest() {
        if let (Some("file"), Some(p)) =
            (std::env::args().nth(1).as_deref(), std::env::args().nth(2))
        {
            if let Err(e) = guest_file(&p) {
                println!("@@ERROR {e}");
                std::process::exit(1);
            }
            return;
        }
        let phase: u64 = std::env::args()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        if let Err(e) = guest(phase) {
            println!("@@ERROR {e}");
            std::process::exit(1);
        }
        return;
    }
    nvkv_qemu::kill::host_test(NAME, || host().map_err(|e| e.to_string()));
}

/// The fields of the first line starting with `tag`.
fn field<'a>(lines: &'a [String], tag: &str) -> Option<Vec<&'a str>> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(tag))
        .map(|r| r.split_whitespace().collect())
}

/// Checks phase `phase`'s pattern in both regions of the backing file, given the devdax data offset.
fn check_file(img: &std::path::Path, data_offset: usize, phase: u64) -> Result<(), String> {
    let bytes = std::fs::read(img).map_err(|e| format!("{}: {e}", img.display()))?;
    for r in 0..2 {
        let at = data_offset + r * REGION + PAT_OFF;
        let got = bytes
            .get(at..at + PAT_LEN)
            .ok_or_else(|| format!("backing file too short for region {r}"))?;
        if let Some(i) = (0..PAT_LEN).find(|&i| got[i] != pattern(phase, r, i)) {
            return Err(format!(
                "phase {phase}, region {r}: byte {i} (file offset {}) is {:#04x}, expected {:#04x}",
                at + i,
                got[i],
                pattern(phase, r, i)
            ));
        }
    }
    Ok(())
}

fn host() -> Result<(), Box<dyn Error>> {
    println!("running 1 test (2 boots)");
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("nvkv-pmem-{}", std::process::id()));
    let img = dir.join("nvdimm.img");
    let _ = std::fs::remove_file(&img);
    let vm = || {
        Vm::builder()
            .nvdimm(&img, NVDIMM_BYTES)
            .binary(&exe, "nvkv-guest-tests")
            .timeout(Duration::from_secs(300))
    };

    // Boot 1: configure, write, barrier, measure, power off.
    let out = vm().run("/bin/nvkv-guest-tests 1\n")?;
    let lines: Vec<String> = out.output.lines().map(str::to_string).collect();
    if let Some(e) = lines.iter().find(|l| l.starts_with("@@ERROR")) {
        return Err(format!("boot 1: {e}\nconsole tail:\n{}", tail(&out.console)).into());
    }
    if out.exit_code != 0 {
        return Err(format!("boot 1: exit {}\n{}", out.exit_code, tail(&out.console)).into());
    }
    let dev = field(&lines, "@@DEV ").ok_or("boot 1: no @@DEV line")?;
    let data_offset: usize = dev.get(3).and_then(|s| s.parse().ok()).ok_or("bad @@DEV")?;
    println!(
        "boot 1: {} of {} bytes, align {}, data at byte {data_offset} of the NVDIMM, configured now \
         (reused={})",
        dev[0], dev[1], dev[2], dev[4]
    );
    let kind = field(&lines, "@@KIND ").ok_or("boot 1: no @@KIND line")?;
    println!(
        "boot 1: MappedPmem kind {} (flush {})",
        kind[..kind.len() - 1].join(" "),
        kind[kind.len() - 1]
    );
    if let Some(c) = field(&lines, "@@COST ") {
        println!(
            "barrier after a 128-byte store, guest side (TCG, 2 vCPUs, devdax): median {} ns, p99 {} ns over {}",
            c[0], c[1], c[2]
        );
    }
    check_file(&img, data_offset, 1)?;
    println!("boot 1: both regions' pattern is in the backing file after the power-off");

    // Boot 2: same file; kill -9 of QEMU as soon as the barrier returned.
    let seen: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let killed = Arc::new(Mutex::new(0usize));
    let (s2, k2) = (seen.clone(), killed.clone());
    let r = vm()
        .on_line(move |l| {
            if let Ok(mut v) = s2.lock() {
                v.push(l.to_string());
            }
            if l.starts_with("@@BARRIER 2") {
                let n = nvkv_qemu::kill::kill_own_qemu();
                if let Ok(mut k) = k2.lock() {
                    *k += n;
                }
            }
        })
        .run("/bin/nvkv-guest-tests 2\n");
    let lines = seen.lock().map(|v| v.clone()).unwrap_or_default();
    let killed = *killed.lock().map_err(|_| "poisoned")?;
    if let Some(e) = lines.iter().find(|l| l.starts_with("@@ERROR")) {
        return Err(format!("boot 2: {e}").into());
    }
    if killed == 0 {
        return Err(format!("boot 2: QEMU was not killed (run: {r:?})").into());
    }
    let dev2 = field(&lines, "@@DEV ").ok_or("boot 2: no @@DEV line")?;
    let off2: usize = dev2
        .get(3)
        .and_then(|s| s.parse().ok())
        .ok_or("bad @@DEV")?;
    if off2 != data_offset {
        return Err(format!("boot 2: data offset {off2}, boot 1 had {data_offset}").into());
    }
    println!(
        "boot 2: {} (reused the info block of boot 1: {}); QEMU killed with SIGKILL after the barrier",
        dev2[0], dev2[4]
    );
    check_file(&img, data_offset, 2)?;
    println!("boot 2: both regions' new pattern is in the backing file after kill -9 of QEMU");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tail(console: &str) -> String {
    let l: Vec<&str> = console.lines().collect();
    l[l.len().saturating_sub(40)..].join("\n")
}
