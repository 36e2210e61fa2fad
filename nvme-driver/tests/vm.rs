//! The driver's tests on QEMU's emulated NVMe, inside the test VM. On the host this boots one VM with four
//! controllers and runs every test below in it (see `nvkv_qemu::suite`).
//!
//! | controller | address | set-up |
//! | --- | --- | --- |
//! | 0 | 0000:00:10.0 | serial NVKV-FILE-4K, MDTS 5 (128 KiB); ns 1: 64 MiB file, 4 KiB LBAs; ns 2: 256 MiB null-co |
//! | 1 | 0000:00:11.0 | serial NVKV-FILE-512, MDTS 7; ns 1: 32 MiB file, 512 B LBAs |
//! | 2 | 0000:00:12.0 | serial NVKV-FAULT; ns 1: 16 MiB file, 4 KiB LBAs, blkdebug read error at LBA 256 |
//! | 3 | 0000:00:13.0 | serial NVKV-KERNEL, left on the kernel nvme driver; ns 1: 16 MiB file, 4 KiB LBAs |
//! | 4 | 0000:00:14.0 | serial NVKV-SLOW; ns 1: 64 MiB null-co throttled to 1 I/O per second |

use nvkv_qemu::suite::{self, GuestTest};
use nvkv_qemu::vm::Bind;
use nvkv_qemu::{guest, NvmeController, NvmeNamespace, Vm};
use nvme_driver::status::sc;
use nvme_driver::{
    Controller, DmaBuf, Error, IoError, Namespace, QueueConfig, QueuePair, SubmitErrorKind,
};
use std::error::Error as StdError;
use std::time::{Duration, Instant};

type R = Result<(), Box<dyn StdError>>;

const C_4K: &str = "0000:00:10.0";
const C_512: &str = "0000:00:11.0";
const C_FAULT: &str = "0000:00:12.0";
const C_KERNEL: &str = "0000:00:13.0";
const C_SLOW: &str = "0000:00:14.0";
const FAULT_LBA: u64 = 256; // blkdebug sector 2048 (512-byte sectors) = 4 KiB LBA 256

use nvkv_qemu::check;

#[path = "vm_suite/queues.rs"]
mod queues;
use queues::{
    controller_reset_mid_run, deep_queues_verified_with_wraparound, shadow_doorbells_never_stall,
    shadow_doorbells_on_and_off, stuck_commands_time_out_abort_reset,
};

fn main() {
    let tests = [
        GuestTest {
            name: "identify_reports_qemu_configuration",
            run: identify_reports_qemu_configuration,
        },
        GuestTest {
            name: "open_errors_name_the_address_and_fix",
            run: open_errors_name_the_address_and_fix,
        },
        GuestTest {
            name: "kernel_and_nvkv_read_each_others_data",
            run: kernel_and_nvkv_read_each_others_data,
        },
        GuestTest {
            name: "random_patterns_verified_4k_lba",
            run: random_patterns_verified_4k_lba,
        },
        GuestTest {
            name: "random_patterns_verified_512_lba",
            run: random_patterns_verified_512_lba,
        },
        GuestTest {
            name: "bad_buffers_refused_with_typed_errors",
            run: bad_buffers_refused_with_typed_errors,
        },
        GuestTest {
            name: "two_queue_pairs_on_two_pinned_threads",
            run: two_queue_pairs_on_two_pinned_threads,
        },
        GuestTest {
            name: "queue_full_returns_busy_not_lost",
            run: queue_full_returns_busy_not_lost,
        },
        GuestTest {
            name: "flush_write_zeroes_deallocate",
            run: flush_write_zeroes_deallocate,
        },
        GuestTest {
            name: "lba_out_of_range_is_typed",
            run: lba_out_of_range_is_typed,
        },
        GuestTest {
            name: "media_error_on_one_lba_only",
            run: media_error_on_one_lba_only,
        },
        GuestTest {
            name: "shadow_doorbells_on_and_off",
            run: shadow_doorbells_on_and_off,
        },
        GuestTest {
            name: "controller_reset_mid_run",
            run: controller_reset_mid_run,
        },
        GuestTest {
            name: "stuck_commands_time_out_abort_reset",
            run: stuck_commands_time_out_abort_reset,
        },
        GuestTest {
            name: "deep_queues_verified_with_wraparound",
            run: deep_queues_verified_with_wraparound,
        },
        GuestTest {
            name: "shadow_doorbells_never_stall",
            run: shadow_doorbells_never_stall,
        },
    ];
    suite::main(&tests, || {
        let dir = std::env::temp_dir().join(format!("nvkv-driver-vm-{}", std::process::id()));
        let img = |n: &str| dir.join(n);
        Vm::builder()
            .controller(
                NvmeController::new("NVKV-FILE-4K")
                    .mdts(5)
                    .namespace(NvmeNamespace::file(img("c0n1.img"), 64 << 20, 4096))
                    .namespace(NvmeNamespace::null(256 << 20, 4096)),
            )
            .controller(NvmeController::new("NVKV-FILE-512").mdts(7).namespace(NvmeNamespace::file(
                img("c1n1.img"),
                32 << 20,
                512,
            )))
            .controller(NvmeController::new("NVKV-FAULT").namespace(
                NvmeNamespace::file(img("c2n1.img"), 16 << 20, 4096).with_blkdebug(
                    "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nsector = \"2048\"\nonce = \"off\"\n",
                ),
            ))
            .controller(
                NvmeController::new("NVKV-KERNEL")
                    .bind(Bind::Kernel)
                    .namespace(NvmeNamespace::file(img("c3n1.img"), 16 << 20, 4096)),
            )
            .controller(
                NvmeController::new("NVKV-SLOW").namespace(NvmeNamespace::null(64 << 20, 4096).with_throttle_iops(1)),
            )
    });
}

// ---------- helpers ----------

/// xorshift64*: deterministic data and offsets without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
}

/// Submits one request and polls until it finishes; returns its result and the buffer.
fn io(
    qp: &mut QueuePair,
    ns: &Namespace,
    op: Op,
    slba: u64,
    buf: DmaBuf,
    range: std::ops::Range<usize>,
) -> Result<(Result<(), IoError>, DmaBuf), Box<dyn StdError>> {
    let r = match op {
        Op::Read => qp.read(ns, slba, buf, range, 7),
        Op::Write => qp.write(ns, slba, buf, range, 7),
    };
    r.map_err(|e| format!("submit refused: {e}"))?;
    wait_one(qp)
}

fn wait_one(qp: &mut QueuePair) -> Result<(Result<(), IoError>, DmaBuf), Box<dyn StdError>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut done = None;
        qp.poll(1, |c| done = Some(c));
        if let Some(c) = done {
            return Ok((c.result, c.buf.ok_or("completion without its buffer")?));
        }
        if Instant::now() > deadline {
            return Err("request did not complete within 60 s".into());
        }
    }
}

fn wait_plain(qp: &mut QueuePair) -> Result<Result<(), IoError>, Box<dyn StdError>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut done = None;
        qp.poll(1, |c| done = Some(c.result));
        if let Some(r) = done {
            return Ok(r);
        }
        if Instant::now() > deadline {
            return Err("request did not complete within 60 s".into());
        }
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Writes random data of random sizes (1 block .. 3×max transfer) at random LBAs in [lo, hi), reads each back
/// into a different buffer at a dword-aligned, non-page-aligned offset, and compares.
fn verified_random_io(
    ctrl: &Controller,
    qp: &mut QueuePair,
    ns: &Namespace,
    lo: u64,
    hi: u64,
    rounds: usize,
    seed: u64,
) -> R {
    let mut rng = Rng(seed);
    let bs = ns.lba_size as usize;
    let max_blocks = (3 * qp.max_transfer() / bs) as u64;
    let mut wbuf = ctrl.alloc(3 * qp.max_transfer() + 4096)?;
    let mut rbuf = ctrl.alloc(3 * qp.max_transfer() + 4096)?;
    for round in 0..rounds {
        let nblocks = 1 + match round % 4 {
            0 => 0,
            1 => rng.below(8),
            _ => rng.below(max_blocks),
        };
        let nblocks = nblocks.min(hi - lo);
        let slba = lo + rng.below(hi - lo - nblocks + 1);
        let len = nblocks as usize * bs;
        let woff = (rng.below(1024) * 4) as usize;
        let roff = (rng.below(1024) * 4) as usize;
        rng.fill(&mut wbuf[woff..woff + len]);
        let (r, b) = io(qp, ns, Op::Write, slba, wbuf, woff..woff + len)?;
        wbuf = b;
        r.map_err(|e| format!("write of {nblocks} blocks at {slba}: {e}"))?;
        rbuf[roff..roff + len].fill(0xa5);
        let (r, b) = io(qp, ns, Op::Read, slba, rbuf, roff..roff + len)?;
        rbuf = b;
        r.map_err(|e| format!("read of {nblocks} blocks at {slba}: {e}"))?;
        if rbuf[roff..roff + len] != wbuf[woff..woff + len] {
            let first = (0..len)
                .find(|&i| rbuf[roff + i] != wbuf[woff + i])
                .unwrap_or(0);
            return Err(format!(
                "round {round}: {nblocks} blocks at LBA {slba} (offsets w {woff} r {roff}) differ first at byte {first}"
            )
            .into());
        }
    }
    Ok(())
}

// ---------- tests ----------

fn identify_reports_qemu_configuration() -> R {
    let c = Controller::open(C_4K)?;
    let i = c.info();
    check!(i.serial == "NVKV-FILE-4K", "serial {:?}", i.serial);
    check!(i.model == "QEMU NVMe Ctrl", "model {:?}", i.model);
    check!(i.vid == 0x1b36, "vendor {:#x}", i.vid);
    check!(i.mdts == 5, "mdts {}", i.mdts);
    check!(
        i.max_transfer == Some(128 << 10),
        "max transfer {:?}",
        i.max_transfer
    );
    let ns = c.namespaces();
    check!(ns.len() == 2, "namespace count {} ({:?})", ns.len(), ns);
    check!(
        ns[0].nsid == 1 && ns[0].lba_size == 4096 && ns[0].blocks == (64 << 20) / 4096,
        "ns1 {:?}",
        ns[0]
    );
    check!(
        ns[1].nsid == 2 && ns[1].lba_size == 4096 && ns[1].blocks == (256 << 20) / 4096,
        "ns2 {:?}",
        ns[1]
    );
    check!(
        c.max_queue_pairs() >= 2,
        "granted queue pairs {}",
        c.max_queue_pairs()
    );
    let c1 = Controller::open(C_512)?;
    check!(
        c1.info().serial == "NVKV-FILE-512",
        "serial {:?}",
        c1.info().serial
    );
    check!(c1.info().mdts == 7, "mdts {}", c1.info().mdts);
    let n = c1.namespace(1)?;
    check!(
        n.lba_size == 512 && n.blocks == (32 << 20) / 512,
        "512 ns {:?}",
        n
    );
    match c1.namespace(9) {
        Err(Error::NoSuchNamespace { nsid: 9, .. }) => {}
        other => return Err(format!("namespace 9: {other:?}").into()),
    }
    Ok(())
}

fn open_errors_name_the_address_and_fix() -> R {
    match Controller::open("0000:00:1e.0") {
        Err(e @ Error::NoSuchDevice { .. }) => {
            let m = e.to_string();
            check!(
                m.contains("0000:00:1e.0") && m.contains("nvkv-setup"),
                "message {m:?}"
            );
        }
        other => return Err(format!("nonexistent address: {other:?}").into()),
    }
    check!(
        guest::driver(C_KERNEL).as_deref() == Some("nvme"),
        "controller 3 should be on nvme, is on {:?}",
        guest::driver(C_KERNEL)
    );
    match Controller::open(C_KERNEL) {
        Err(e @ Error::NotBoundToVfio { .. }) => {
            let m = e.to_string();
            check!(
                m.contains(C_KERNEL) && m.contains("`nvme`") && m.contains("nvkv-setup bind"),
                "message {m:?}"
            );
        }
        other => return Err(format!("kernel-bound device: {other:?}").into()),
    }
    match Controller::open("not-an-address") {
        Err(Error::NoSuchDevice { .. }) => {}
        other => return Err(format!("garbage address: {other:?}").into()),
    }
    Ok(())
}

fn sh(cmd: &str) -> R {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()?;
    check!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn kernel_and_nvkv_read_each_others_data() -> R {
    // 1. The kernel writes; nvkv reads.
    let dev = guest::block_device(C_KERNEL).ok_or("controller 3 has no block device")?;
    let mut rng = Rng(0xc0ffee);
    let mut a = vec![0u8; 64 << 10];
    rng.fill(&mut a);
    std::fs::write("/tmp/a.bin", &a)?;
    sh(&format!(
        "dd if=/tmp/a.bin of={} bs=4096 seek=256 oflag=direct conv=fsync 2>/dev/null",
        dev.display()
    ))?;
    guest::bind_vfio(C_KERNEL)?;
    let mut b = vec![0u8; 128 << 10];
    {
        let c = Controller::open(C_KERNEL)?;
        let ns = c.namespace(1)?;
        let mut qp = c.queue_pair()?;
        let buf = c.alloc(a.len())?;
        let (r, buf) = io(&mut qp, &ns, Op::Read, 256, buf, 0..a.len())?;
        r?;
        check!(
            buf[..] == a[..],
            "nvkv read differs from what the kernel wrote"
        );
        // 2. nvkv writes (and flushes); the kernel reads.
        rng.fill(&mut b);
        let mut wbuf = c.alloc(b.len())?;
        wbuf.copy_from_slice(&b);
        let (r, _) = io(&mut qp, &ns, Op::Write, 1024, wbuf, 0..b.len())?;
        r?;
        qp.flush(&ns, 1).map_err(|e| e.to_string())?;
        wait_plain(&mut qp)??;
    } // controller shut down (CC.SHN) here
    let dev = guest::bind_kernel(C_KERNEL)?;
    sh(&format!(
        "dd if={} of=/tmp/b.bin bs=4096 skip=1024 count=32 iflag=direct 2>/dev/null",
        dev.display()
    ))?;
    let got = std::fs::read("/tmp/b.bin")?;
    check!(
        got == b,
        "the kernel read {} bytes that differ from what nvkv wrote",
        got.len()
    );
    Ok(())
}

fn random_patterns_verified_4k_lba() -> R {
    let c = Controller::open(C_4K)?;
    let ns = c.namespace(1)?;
    let mut qp = c.queue_pair()?;
    check!(
        qp.max_transfer() == 128 << 10,
        "max transfer {}",
        qp.max_transfer()
    );
    verified_random_io(&c, &mut qp, &ns, 0, ns.blocks, 60, 0x1234)?;
    check!(
        qp.stats().commands > qp.stats().requests,
        "no request was split at MDTS: {:?}",
        qp.stats()
    );
    Ok(())
}

fn random_patterns_verified_512_lba() -> R {
    let c = Controller::open(C_512)?;
    let ns = c.namespace(1)?;
    let mut qp = c.queue_pair()?;
    verified_random_io(&c, &mut qp, &ns, 0, ns.blocks, 40, 0x5678)
}

fn bad_buffers_refused_with_typed_errors() -> R {
    let c = Controller::open(C_4K)?;
    let ns = c.namespace(1)?;
    let mut qp = c.queue_pair()?;
    let buf = c.alloc(16 << 10)?;
    let e = qp
        .read(&ns, 0, buf, 0..0, 1)
        .err()
        .ok_or("zero length accepted")?;
    check!(e.kind == SubmitErrorKind::ZeroLength, "{:?}", e.kind);
    let buf = e.buf.ok_or("buffer not given back")?;
    let e = qp
        .read(&ns, 0, buf, 2..4098, 1)
        .err()
        .ok_or("misaligned offset accepted")?;
    check!(
        e.kind == SubmitErrorKind::Misaligned { offset: 2 },
        "{:?}",
        e.kind
    );
    let buf = e.buf.ok_or("buffer not given back")?;
    let e = qp
        .write(&ns, 0, buf, 0..1000, 1)
        .err()
        .ok_or("partial block accepted")?;
    check!(
        matches!(
            e.kind,
            SubmitErrorKind::NotBlockMultiple {
                len: 1000,
                lba_size: 4096
            }
        ),
        "{:?}",
        e.kind
    );
    let buf = e.buf.ok_or("buffer not given back")?;
    let e = qp
        .write(&ns, 0, buf, 0..(32 << 10), 1)
        .err()
        .ok_or("range past the buffer accepted")?;
    check!(
        matches!(e.kind, SubmitErrorKind::OutsideBuffer { .. }),
        "{:?}",
        e.kind
    );
    check!(
        qp.outstanding() == 0 && qp.stats().commands == 0,
        "a refused request reached the device"
    );
    // The buffer still works.
    let buf = e.buf.ok_or("buffer not given back")?;
    let (r, _) = io(&mut qp, &ns, Op::Read, 0, buf, 0..4096)?;
    r?;
    Ok(())
}

fn two_queue_pairs_on_two_pinned_threads() -> R {
    let c = Controller::open(C_4K)?;
    let ns = c.namespace(1)?;
    let half = ns.blocks / 2;
    let mut handles = Vec::new();
    for t in 0..2u64 {
        let c = c.clone();
        let mut qp = c.queue_pair()?;
        handles.push(std::thread::spawn(move || -> Result<(), String> {
            pin_to_cpu(t as usize);
            verified_random_io(&c, &mut qp, &ns, t * half, (t + 1) * half, 40, 99 + t)
                .map_err(|e| e.to_string())
        }));
    }
    for h in handles {
        h.join().map_err(|_| "thread panicked")??;
    }
    Ok(())
}

fn queue_full_returns_busy_not_lost() -> R {
    let c = Controller::open(C_4K)?;
    let ns = c.namespace(2)?;
    let mut qp = c.queue_pair_with(QueueConfig {
        sq_entries: 4,
        cq_entries: 8,
        ..QueueConfig::default()
    })?;
    let mut accepted = 0;
    let mut busy = 0;
    for i in 0..6u64 {
        let b = c.alloc(4096)?;
        match qp.read(&ns, i, b, 0..4096, i) {
            Ok(()) => accepted += 1,
            Err(e) if e.kind == SubmitErrorKind::Busy => {
                check!(e.buf.is_some(), "busy did not give the buffer back");
                busy += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    check!(
        accepted == 3 && busy == 3,
        "accepted {accepted}, busy {busy} (expected 3 and 3 with 4 SQ entries)"
    );
    let mut tags = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tags.len() < 3 && Instant::now() < deadline {
        qp.poll(8, |comp| tags.push((comp.tag, comp.result)));
    }
    tags.sort_by_key(|t| t.0);
    check!(
        tags.iter().map(|t| t.0).collect::<Vec<_>>() == vec![0, 1, 2],
        "completions {tags:?}"
    );
    check!(tags.iter().all(|t| t.1.is_ok()), "completions {tags:?}");
    // Many wrap-arounds of the tiny rings, verified.
    verified_random_io(&c, &mut qp, &c.namespace(1)?, 0, 1024, 40, 7)
}

fn flush_write_zeroes_deallocate() -> R {
    let c = Controller::open(C_4K)?;
    let ns = c.namespace(1)?;
    let mut qp = c.queue_pair()?;
    let mut buf = c.alloc(64 << 10)?;
    for (what, slba) in [("write zeroes", 4096u64), ("deallocate", 8192)] {
        buf.fill(0x5a);
        let (r, b) = io(&mut qp, &ns, Op::Write, slba, buf, 0..(64 << 10))?;
        r?;
        qp.flush(&ns, 2).map_err(|e| e.to_string())?;
        wait_plain(&mut qp)?.map_err(|e| format!("flush: {e}"))?;
        if what == "write zeroes" {
            qp.write_zeroes(&ns, slba, 16, 3)
                .map_err(|e| e.to_string())?;
        } else {
            check!(
                ns.deallocate,
                "QEMU's namespace should support Dataset Management"
            );
            qp.deallocate(&ns, slba, 16, 3).map_err(|e| e.to_string())?;
        }
        wait_plain(&mut qp)?.map_err(|e| format!("{what}: {e}"))?;
        let (r, b) = io(&mut qp, &ns, Op::Read, slba, b, 0..(64 << 10))?;
        r?;
        check!(b.iter().all(|&x| x == 0), "{what}: read back non-zero data");
        buf = b;
    }
    Ok(())
}

fn lba_out_of_range_is_typed() -> R {
    let c = Controller::open(C_4K)?;
    let ns = c.namespace(1)?;
    let mut qp = c.queue_pair()?;
    let buf = c.alloc(8192)?;
    let (r, buf) = io(&mut qp, &ns, Op::Read, ns.blocks - 1, buf, 0..8192)?;
    match r {
        Err(IoError::Status(s)) if s.is(sc::LBA_OUT_OF_RANGE) => {}
        other => return Err(format!("read across the end: {other:?}").into()),
    }
    let (r, buf) = io(&mut qp, &ns, Op::Write, ns.blocks + 100, buf, 0..4096)?;
    check!(
        matches!(r, Err(IoError::Status(s)) if s.is(sc::LBA_OUT_OF_RANGE)),
        "write past the end: {r:?}"
    );
    let (r, _) = io(&mut qp, &ns, Op::Read, ns.blocks - 1, buf, 0..4096)?;
    r.map_err(|e| format!("last block: {e}"))?;
    Ok(())
}

fn media_error_on_one_lba_only() -> R {
    let c = Controller::open(C_FAULT)?;
    let ns = c.namespace(1)?;
    let mut qp = c.queue_pair()?;
    let mut buf = c.alloc(4096)?;
    for lba in [FAULT_LBA - 1, FAULT_LBA, FAULT_LBA + 1, FAULT_LBA, 0] {
        let (r, b) = io(&mut qp, &ns, Op::Read, lba, buf, 0..4096)?;
        buf = b;
        if lba == FAULT_LBA {
            match r {
                Err(IoError::Status(s)) if s.is(sc::UNRECOVERED_READ_ERROR) => {}
                other => return Err(format!("read of the injected LBA: {other:?}").into()),
            }
        } else {
            r.map_err(|e| format!("read of LBA {lba}: {e}"))?;
        }
    }
    // Several requests in flight, one of them failing: only that one fails.
    let mut bufs = Vec::new();
    for _ in 0..8 {
        bufs.push(c.alloc(4096)?);
    }
    for (i, b) in bufs.into_iter().enumerate() {
        let lba = FAULT_LBA - 4 + i as u64;
        qp.read(&ns, lba, b, 0..4096, lba)
            .map_err(|e| e.to_string())?;
    }
    let mut results = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while results.len() < 8 && Instant::now() < deadline {
        qp.poll(8, |comp| results.push((comp.tag, comp.result.is_ok())));
    }
    results.sort();
    let failed: Vec<u64> = results.iter().filter(|r| !r.1).map(|r| r.0).collect();
    check!(
        results.len() == 8 && failed == vec![FAULT_LBA],
        "results {results:?}"
    );
    verified_random_io(&c, &mut qp, &ns, 512, 1024, 10, 3)
}
