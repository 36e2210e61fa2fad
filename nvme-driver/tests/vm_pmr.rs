//! The Persistent Memory Region (PMR) on QEMU's emulated NVMe, inside the test VM: one boot for the guest tests
//! and the host's check of the PMR's backing file after the guest powered off, and a second boot that ends in
//! `kill -9` of QEMU right after a barrier returned.
//!
//! | controller | address | set-up |
//! | --- | --- | --- |
//! | 0 | 0000:00:10.0 | serial NVKV-PMR; 16 MiB PMR on `/dev/shm/nvkv-pmr-<pid>-boot.pmr`; ns 1: 64 MiB null-co |
//! | 1 | 0000:00:11.0 | serial NVKV-NOPMR; ns 1: 64 MiB null-co |
//! | 2 | 0000:00:12.0 | serial NVKV-NOWC, `write-cache=off` on its namespace; ns 1: 64 MiB null-co |
//!
//! The backing files are on the host's tmpfs (QEMU.md: QEMU's PMRSTS-read barrier is an msync of the whole
//! file). There a store reaches the file's pages as soon as the guest makes it, barrier or not: these tests
//! prove the data path (guest stores land in the file and outlive QEMU), not that the barrier is needed.

use nvkv_qemu::suite::{self, GuestTest, HostCheck};
use nvkv_qemu::{check, NvmeController, NvmeNamespace, Vm};
use nvme_driver::mmio::Bar;
use nvme_driver::pmr::{PmrHealth, PmrWriteBarrier};
use nvme_driver::{Controller, PmrError};
use std::error::Error as StdError;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type R = Result<(), Box<dyn StdError>>;

const C_PMR: &str = "0000:00:10.0";
const C_NOPMR: &str = "0000:00:11.0";
const C_NOWC: &str = "0000:00:12.0";
const PMR_SIZE: u64 = 16 << 20;
/// Printed by the kill boot's guest once its barrier has returned: the host then kills QEMU.
const BARRIER_RETURNED: &str = "@@NVKV-PMR-BARRIER-RETURNED";
/// Pattern seeds: the two slices of the main boot, the two of the kill boot.
const SEEDS_BOOT: [u64; 2] = [0xa0, 0xa1];
const SEEDS_KILL: [u64; 2] = [0xb0, 0xb1];

fn main() {
    let tests = [
        GuestTest {
            name: "pmr_found_enabled_and_decoded",
            run: pmr_found_enabled_and_decoded,
        },
        GuestTest {
            name: "pmr_barrier_cost",
            run: pmr_barrier_cost,
        },
        GuestTest {
            name: "pmr_pattern_in_two_slices_read_back",
            run: pmr_pattern_in_two_slices_read_back,
        },
        GuestTest {
            name: "pmr_after_controller_reset",
            run: pmr_after_controller_reset,
        },
        GuestTest {
            name: "no_pmr_is_none",
            run: no_pmr_is_none,
        },
        GuestTest {
            name: "write_cache_off_what_qemu_reports",
            run: write_cache_off_what_qemu_reports,
        },
    ];
    let checks = [
        HostCheck {
            name: "pmr_file_holds_the_pattern_after_power_off",
            run: pmr_file_holds_the_pattern_after_power_off,
        },
        HostCheck {
            name: "pmr_file_holds_the_pattern_after_kill_9",
            run: pmr_file_holds_the_pattern_after_kill_9,
        },
    ];
    if nvkv_qemu::guest::in_guest() {
        // The kill boot's guest half is run only by that boot (its host check names it).
        let mut all = tests.to_vec();
        all.push(GuestTest {
            name: "pmr_write_barrier_then_wait_for_kill",
            run: pmr_write_barrier_then_wait_for_kill,
        });
        suite::main(&all, || unreachable!("no VM is built in the guest"));
    }
    suite::main_then(
        &tests,
        || {
            Vm::builder()
                .controller(
                    NvmeController::new("NVKV-PMR")
                        .pmr(pmr_file("boot"), PMR_SIZE)
                        .namespace(NvmeNamespace::null(64 << 20, 4096)),
                )
                .controller(
                    NvmeController::new("NVKV-NOPMR")
                        .namespace(NvmeNamespace::null(64 << 20, 4096)),
                )
                .controller(
                    NvmeController::new("NVKV-NOWC")
                        .write_cache(false)
                        .namespace(NvmeNamespace::null(64 << 20, 4096)),
                )
        },
        &checks,
    );
}

/// The PMR backing file of one boot of this test process, on the host's tmpfs.
fn pmr_file(boot: &str) -> PathBuf {
    PathBuf::from(format!(
        "/dev/shm/nvkv-pmr-{}-{boot}.pmr",
        std::process::id()
    ))
}

// ---------- the pattern ----------

/// Byte `off` of the pattern of `seed`: a splitmix64 of each 8-byte word, so every word differs.
fn pattern_word(seed: u64, word: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(word.wrapping_mul(0xbf58_476d_1ce4_e5b9));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the pattern of `seed` from byte `start` on (`start` a multiple of 8).
fn fill_pattern(seed: u64, start: usize, buf: &mut [u8]) {
    for (i, c) in buf.chunks_mut(8).enumerate() {
        let w = pattern_word(seed, (start / 8 + i) as u64).to_le_bytes();
        c.copy_from_slice(&w[..c.len()]);
    }
}

/// Where `data` (bytes `start..` of the pattern of `seed`) first differs from it.
fn first_mismatch(seed: u64, start: usize, data: &[u8]) -> Option<usize> {
    let mut want = vec![0u8; data.len()];
    fill_pattern(seed, start, &mut want);
    data.iter().zip(&want).position(|(a, b)| a != b)
}

const CHUNK: usize = 256 << 10;

/// Writes the pattern of `seeds[i]` over the whole of slice `i`, barriers each, and reads it all back.
fn write_patterns(c: &Controller, seeds: [u64; 2]) -> R {
    let mut pmr = c.pmr()?.ok_or("no PMR")?;
    let mut slices = pmr.split(2, 0)?;
    check!(
        slices.iter().all(|s| s.len() == PMR_SIZE as usize / 2),
        "slice sizes {:?}",
        slices.iter().map(|s| s.len()).collect::<Vec<_>>()
    );
    let mut buf = vec![0u8; CHUNK];
    for (s, seed) in slices.iter_mut().zip(seeds) {
        for at in (0..s.len()).step_by(CHUNK) {
            fill_pattern(seed, at, &mut buf);
            s.write(at, &buf);
        }
        s.barrier()?;
    }
    for (i, (s, seed)) in slices.iter().zip(seeds).enumerate() {
        for at in (0..s.len()).step_by(CHUNK) {
            s.read(at, &mut buf);
            if let Some(bad) = first_mismatch(seed, at, &buf) {
                return Err(format!("slice {i}: byte {} read back differs", at + bad).into());
            }
        }
    }
    Ok(())
}

// ---------- guest tests ----------

fn pmr_found_enabled_and_decoded() -> R {
    let c = Controller::open(C_PMR)?;
    check!(c.cap().pmrs(), "CAP.PMRS clear on the PMR controller");
    let before = c
        .pmr_registers()
        .ok_or("pmr_registers: None with CAP.PMRS set")?;
    let cap = before.pmrcap;
    check!(
        cap.rds && cap.wds && cap.bir == 4 && cap.pmrwbm == 0x2,
        "PMRCAP {:#x}: {cap:?}",
        cap.raw
    );
    let pmr = c.pmr()?.ok_or("pmr(): None")?;
    check!(pmr.len() as u64 == PMR_SIZE, "PMR of {} bytes", pmr.len());
    check!(
        pmr.write_barrier() == PmrWriteBarrier::PmrstsRead,
        "barrier {:?}",
        pmr.write_barrier()
    );
    let r = pmr.registers();
    check!(
        r.pmrctl.en,
        "PMRCTL.EN clear after bring-up: {:?}",
        r.pmrctl
    );
    check!(
        !r.pmrsts.nrdy && r.pmrsts.hsts == PmrHealth::NormalOperation && r.pmrsts.err == 0,
        "PMRSTS {:#x}: {:?}",
        r.pmrsts.raw,
        r.pmrsts
    );
    match c.pmr() {
        Err(PmrError::InUse { .. }) => {}
        other => return Err(format!("a second pmr() while one lives: {other:?}").into()),
    }
    suite::note(&format!(
        "QEMU's PMR registers: PMRCAP {:#x} (before enable PMRCTL {:#x} PMRSTS {:#x}; after PMRCTL {:#x} PMRSTS {:#x}), \
         PMREBS {:#x}, PMRSWTP {:#x}, PMRMSC {:#x}/{:#x}",
        cap.raw,
        before.pmrctl.raw,
        before.pmrsts.raw,
        r.pmrctl.raw,
        r.pmrsts.raw,
        r.pmrebs.raw,
        r.pmrswtp.raw,
        r.pmrmsc.raw_lower,
        r.pmrmsc.raw_upper
    ));
    drop(pmr);
    // Once it is gone, the PMR can be had again.
    let again = c.pmr()?.ok_or("pmr() after drop: None")?;
    check!(
        again.len() as u64 == PMR_SIZE,
        "PMR of {} bytes",
        again.len()
    );
    Ok(())
}

fn median_p99(mut ns: Vec<u64>) -> (u64, u64) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

fn pmr_barrier_cost() -> R {
    const N: usize = 2000;
    let c = Controller::open(C_PMR)?;
    let mut pmr = c.pmr()?.ok_or("no PMR")?;
    let mut s = pmr.split(1, 0)?.remove(0);
    let mut barrier = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        s.barrier()?;
        barrier.push(t.elapsed().as_nanos() as u64);
    }
    let rec = [0x5au8; 128];
    let mut write = Vec::with_capacity(N);
    let mut write_barrier = Vec::with_capacity(N);
    for i in 0..N {
        let off = (i * 128) % s.len();
        let t = Instant::now();
        s.write(off, &rec);
        let w = t.elapsed().as_nanos() as u64;
        s.barrier()?;
        write.push(w);
        write_barrier.push(t.elapsed().as_nanos() as u64);
    }
    // The control: the same copy code into ordinary guest memory (a DMA buffer), so the PMR's own share shows.
    let ram = Bar::from_memory(c.alloc(1 << 20)?).ok_or("DMA buffer at address 0")?;
    let mut plain = Vec::with_capacity(N);
    for i in 0..N {
        let off = (i * 128) % ram.len();
        let t = Instant::now();
        ram.write_bytes(off, &rec);
        plain.push(t.elapsed().as_nanos() as u64);
    }
    let (b50, b99) = median_p99(barrier);
    let (w50, w99) = median_p99(write);
    let (wb50, wb99) = median_p99(write_barrier);
    let (p50, p99) = median_p99(plain);
    suite::note(&format!(
        "PMR cost in the guest ({} build, TCG, 16 MiB PMR on the host's /dev/shm, {N} each, median / p99): \
         barrier {b50} / {b99} ns; 128-byte write {w50} / {w99} ns; 128-byte write + barrier {wb50} / {wb99} ns; \
         the same 128-byte copy into ordinary guest memory {p50} / {p99} ns",
        if cfg!(debug_assertions) { "debug" } else { "release" }
    ));
    Ok(())
}

fn pmr_pattern_in_two_slices_read_back() -> R {
    let c = Controller::open(C_PMR)?;
    write_patterns(&c, SEEDS_BOOT)?;
    // Unaligned edges: odd offsets and lengths go through the byte paths and land where they should.
    let mut pmr = c.pmr()?.ok_or("no PMR")?;
    let mut s = pmr.split(2, 0)?;
    let edge: Vec<u8> = (0..37u8).collect();
    let mut keep = vec![0u8; 64];
    s[1].read(1000, &mut keep);
    s[1].write(1003, &edge);
    s[1].barrier()?;
    let mut back = vec![0u8; 64];
    s[1].read(1000, &mut back);
    check!(
        back[..3] == keep[..3] && back[3..40] == edge[..] && back[40..] == keep[40..],
        "unaligned write: {back:?}"
    );
    // Put the pattern back for the host's check of the file.
    s[1].write(1000, &keep);
    s[1].barrier()?;
    Ok(())
}

fn pmr_after_controller_reset() -> R {
    let c = Controller::open(C_PMR)?;
    let mut pmr = c.pmr()?.ok_or("no PMR")?;
    let s = pmr.split(2, 0)?;
    c.reset()?;
    let after = c.pmr_registers().ok_or("no PMR registers")?;
    let barrier = s[0].barrier();
    suite::note(&format!(
        "after a controller reset (CC.EN 1→0→1): PMRCTL {:#x}, PMRSTS {:#x}, barrier {barrier:?}",
        after.pmrctl.raw, after.pmrsts.raw
    ));
    // QEMU 7.2 leaves the PMR alone on a controller reset: still enabled, still ready, contents intact.
    check!(
        after.pmrctl.en && !after.pmrsts.nrdy,
        "the PMR after a reset: {after:?}"
    );
    barrier?;
    let mut head = vec![0u8; 4096];
    s[0].read(0, &mut head);
    check!(
        first_mismatch(SEEDS_BOOT[0], 0, &head).is_none(),
        "the pattern changed across a controller reset"
    );
    Ok(())
}

fn no_pmr_is_none() -> R {
    let c = Controller::open(C_NOPMR)?;
    check!(!c.cap().pmrs(), "CAP.PMRS set without a pmrdev");
    check!(c.pmr_registers().is_none(), "PMR registers without a PMR");
    match c.pmr() {
        Ok(None) => Ok(()),
        other => Err(format!("pmr() without a PMR: {other:?}").into()),
    }
}

fn write_cache_off_what_qemu_reports() -> R {
    let on = Controller::open(C_NOPMR)?;
    let off = Controller::open(C_NOWC)?;
    let (vwc_on, vwc_off) = (on.info().vwc, off.info().vwc);
    let (wce_on, wce_off) = (
        on.volatile_write_cache_enabled()?,
        off.volatile_write_cache_enabled()?,
    );
    let ns_off = off.namespace(1)?;
    suite::note(&format!(
        "write-cache: default → Identify VWC {vwc_on:#x}, Get Features WCE {wce_on}; write-cache=off → Identify \
         VWC {vwc_off:#x}, Get Features WCE {wce_off}, Namespace::volatile_write_cache {}",
        ns_off.volatile_write_cache
    ));
    // What QEMU 7.2 does: Identify Controller's VWC is fixed (present, and Flush with NSID FFFFFFFFh
    // supported) whatever the namespaces' write-cache; only Get Features (Volatile Write Cache) tells.
    check!(vwc_on & 1 == 1, "default VWC {vwc_on:#x}");
    check!(
        vwc_off & 1 == 1,
        "write-cache=off: Identify VWC bit 0 is {vwc_off:#x} (QEMU 7.2 was seen to keep it set)"
    );
    check!(
        wce_on,
        "default: Get Features says the write cache is disabled"
    );
    check!(
        !wce_off,
        "write-cache=off: Get Features says the write cache is enabled"
    );
    Ok(())
}

/// The kill boot's guest half: the pattern, its barriers, the marker, then a bounded wait for the kill.
fn pmr_write_barrier_then_wait_for_kill() -> R {
    let c = Controller::open(C_PMR)?;
    write_patterns(&c, SEEDS_KILL)?;
    println!("{BARRIER_RETURNED}");
    std::thread::sleep(Duration::from_secs(120));
    Err("QEMU was not killed within 120 s of the barrier".into())
}

// ---------- host checks ----------

/// Reads the backing file and checks both slices hold their patterns; then removes the file.
fn check_file(path: &PathBuf, seeds: [u64; 2]) -> Result<(), String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = std::fs::remove_file(path);
    if data.len() as u64 != PMR_SIZE {
        return Err(format!("{}: {} bytes", path.display(), data.len()));
    }
    let half = data.len() / 2;
    for (i, seed) in seeds.into_iter().enumerate() {
        if let Some(bad) = first_mismatch(seed, 0, &data[i * half..(i + 1) * half]) {
            return Err(format!(
                "{}: slice {i} differs from what the guest wrote at byte {bad}",
                path.display()
            ));
        }
    }
    Ok(())
}

fn pmr_file_holds_the_pattern_after_power_off() -> Result<(), String> {
    check_file(&pmr_file("boot"), SEEDS_BOOT)
}

/// The PID of the QEMU whose command line names `file` (this test process's own, by its PID in the name).
fn qemu_pid_with(file: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if (cmd.starts_with("qemu-system") || cmd.contains("/qemu-system")) && cmd.contains(file) {
            return Some(pid);
        }
    }
    None
}

fn pmr_file_holds_the_pattern_after_kill_9() -> Result<(), String> {
    let file = pmr_file("kill");
    let _ = std::fs::remove_file(&file);
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let killed = Arc::new(AtomicBool::new(false));
    let (k2, f2) = (killed.clone(), file.display().to_string());
    let out = Vm::builder()
        .controller(
            NvmeController::new("NVKV-PMR-KILL")
                .pmr(&file, PMR_SIZE)
                .namespace(NvmeNamespace::null(64 << 20, 4096)),
        )
        .binary(&exe, "nvkv-guest-tests")
        .timeout(Duration::from_secs(600))
        .on_line(move |l| {
            if l.trim_end().ends_with(BARRIER_RETURNED) && !k2.swap(true, Ordering::SeqCst) {
                // SIGKILL of QEMU itself, the moment the guest says its barrier returned: nothing QEMU
                // holds is flushed or shut down.
                match qemu_pid_with(&f2) {
                    Some(pid) => {
                        let _ = std::process::Command::new("kill")
                            .args(["-9", &pid.to_string()])
                            .status();
                    }
                    None => eprintln!("host: no QEMU with {f2} on its command line"),
                }
            }
        })
        .run("/bin/nvkv-guest-tests --exact pmr_write_barrier_then_wait_for_kill\n");
    if !killed.load(Ordering::SeqCst) {
        return Err(match out {
            Ok(o) => format!("the guest never reported its barrier:\n{}", o.output),
            Err(e) => format!("the kill boot failed before the barrier: {e}"),
        });
    }
    match out {
        Err(nvkv_qemu::Error::QemuExited { status, .. })
            if status.contains("SIGKILL") || status.contains("signal: 9") => {}
        other => return Err(format!("QEMU did not die by the kill: {other:?}")),
    }
    check_file(&file, SEEDS_KILL)
}
