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

/// Random 4 KiB reads at queue depth `qd`. With `ring_each`, the SQ doorbell is rung after every submission
/// (an application that does not batch), which is where shadow doorbells save MMIO writes.
fn run_reads(
    c: &Controller,
    qp: &mut QueuePair,
    ns: &Namespace,
    total: u64,
    qd: usize,
    ring_each: bool,
) -> R {
    let mut free: Vec<DmaBuf> = Vec::new();
    for _ in 0..qd {
        free.push(c.alloc(4096)?);
    }
    let mut rng = Rng(42);
    let (mut submitted, mut done) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(120);
    while done < total {
        while submitted < total {
            let Some(b) = free.pop() else { break };
            let lba = rng.below(ns.blocks);
            match qp.read(ns, lba, b, 0..4096, lba) {
                Ok(()) => {
                    submitted += 1;
                    if ring_each {
                        qp.ring();
                    }
                }
                Err(e) => {
                    free.push(e.buf.ok_or("buffer lost")?);
                    break;
                }
            }
        }
        let mut err = None;
        qp.poll(usize::MAX, |comp| {
            if let Err(e) = comp.result {
                err = Some(e);
            }
            if let Some(b) = comp.buf {
                free.push(b);
            }
            done += 1;
        });
        if let Some(e) = err {
            return Err(format!(
                "read failed: {e} after {done} of {total}; {:?} outstanding {}",
                qp.stats(),
                qp.outstanding()
            )
            .into());
        }
        check!(Instant::now() < deadline, "reads stalled: {done}/{total}");
    }
    Ok(())
}

fn shadow_doorbells_on_and_off() -> R {
    let ns;
    let n = 3000;
    let s_on = {
        let opts = nvme_driver::ControllerOptions {
            shadow_doorbells: true,
            ..Default::default()
        };
        let c = Controller::open_with(C_512, opts)?;
        check!(
            c.info().oacs & nvme_driver::spec::OACS_DBBUF != 0,
            "QEMU 7.2 should advertise Doorbell Buffer Config"
        );
        check!(c.shadow_doorbells(), "shadow doorbells not configured");
        ns = c.namespace(1)?;
        let mut on = c.queue_pair()?;
        check!(on.shadow_doorbells(), "queue pair without shadow slots");
        run_reads(&c, &mut on, &ns, n, 32, true)?;
        verified_random_io(&c, &mut on, &ns, 0, ns.blocks, 10, 11)?;
        on.stats()
    };
    let s_off = {
        let opts = nvme_driver::ControllerOptions {
            shadow_doorbells: false,
            ..Default::default()
        };
        let c = Controller::open_with(C_512, opts)?;
        check!(
            !c.shadow_doorbells(),
            "shadow doorbells were not switched off"
        );
        let mut off = c.queue_pair()?;
        check!(!off.shadow_doorbells(), "queue pair has shadow slots");
        run_reads(&c, &mut off, &ns, n, 32, true)?;
        verified_random_io(&c, &mut off, &ns, 0, ns.blocks, 10, 12)?;
        off.stats()
    };
    println!("shadow on: {s_on:?}\nshadow off: {s_off:?}");
    check!(
        s_on.sq_shadow_updates > 0,
        "no shadow updates with shadow on: {s_on:?}"
    );
    check!(
        s_off.sq_shadow_updates == 0,
        "shadow updates with shadow off: {s_off:?}"
    );
    check!(
        s_on.mmio_writes() < s_off.mmio_writes(),
        "MMIO writes with shadow {} >= without {}",
        s_on.mmio_writes(),
        s_off.mmio_writes()
    );
    Ok(())
}

fn controller_reset_mid_run() -> R {
    let c = Controller::open(C_512)?;
    let ns = c.namespace(1)?;
    let worker = {
        let c = c.clone();
        let mut qp = c.queue_pair()?;
        std::thread::spawn(move || -> Result<(u64, u64, u64), String> {
            let mut free: Vec<DmaBuf> = (0..16).filter_map(|_| c.alloc(4096).ok()).collect();
            let (mut ok, mut reset_errs, mut other) = (0u64, 0u64, 0u64);
            let start = Instant::now();
            let mut lba = 512u64;
            while start.elapsed() < Duration::from_secs(6) {
                while let Some(b) = free.pop() {
                    lba = 512 + (lba + 1) % 1024;
                    if let Err(e) = qp.read(&ns, lba, b, 0..4096, lba) {
                        free.push(e.buf.ok_or("buffer lost")?);
                        break;
                    }
                }
                qp.poll(usize::MAX, |comp| {
                    match comp.result {
                        Ok(()) => ok += 1,
                        Err(IoError::ControllerReset) => reset_errs += 1,
                        Err(_) => other += 1,
                    }
                    if let Some(b) = comp.buf {
                        free.push(b);
                    }
                });
            }
            qp.drain(|_| {});
            if qp.stats().resets_seen != 1 {
                return Err(format!("queue pair saw {} resets", qp.stats().resets_seen));
            }
            // New I/O works after the reset, verified.
            verified_random_io(&c, &mut qp, &ns, 2048, 4096, 10, 5).map_err(|e| e.to_string())?;
            Ok((ok, reset_errs, other))
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    c.reset()?;
    check!(c.resets() == 1, "reset count {}", c.resets());
    let (ok, reset_errs, other) = worker.join().map_err(|_| "worker panicked")??;
    println!(
        "reset mid-run: {ok} ok, {reset_errs} failed with ControllerReset, {other} other errors"
    );
    check!(
        other == 0,
        "{other} requests failed with errors other than ControllerReset"
    );
    check!(ok > 0, "no I/O completed");
    Ok(())
}

/// Commands the device sits on (a throttle of 1 I/O per second against a 300 ms timeout): the queue pair
/// aborts them (together), then recovers on its own — Delete and Create I/O SQ/CQ, the controller untouched —
/// or, when the controller does not finish the deletion within a second (QEMU cancels throttled requests only
/// as the throttle lets them through), resets the controller; either way they complete with
/// `IoError::Timeout`, and new I/O works after.
fn stuck_commands_time_out_abort_reset() -> R {
    let c = Controller::open(C_SLOW)?;
    let ns = c.namespace(1)?;
    let mut qp = c.queue_pair_with(QueueConfig {
        io_timeout: Duration::from_millis(300),
        ..QueueConfig::default()
    })?;
    for i in 0..4u64 {
        qp.read(&ns, i, c.alloc(4096)?, 0..4096, i)
            .map_err(|e| e.to_string())?;
    }
    let mut results = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while results.len() < 4 {
        qp.poll(8, |comp| results.push((comp.tag, comp.result)));
        check!(
            Instant::now() < deadline,
            "only {} of 4 completed: {results:?}",
            results.len()
        );
    }
    let timeouts = results
        .iter()
        .filter(|r| r.1 == Err(IoError::Timeout))
        .count();
    let others = results
        .iter()
        .filter(|r| matches!(r.1, Err(e) if e != IoError::Timeout))
        .count();
    let s = qp.stats();
    println!(
        "stuck commands: {results:?}; {s:?}; controller resets {}",
        c.resets()
    );
    check!(timeouts >= 1, "no command timed out: {results:?}");
    check!(others == 0, "unexpected errors: {results:?}");
    check!(s.aborts_sent >= 1, "no Abort was completed: {s:?}");
    check!(
        (s.queue_resets == 1 && s.resets_seen == 0 && c.resets() == 0)
            || (s.resets_seen == 1 && c.resets() == 1),
        "recovery: queue pair reset itself {} times, saw {} controller resets, controller did {}",
        s.queue_resets,
        s.resets_seen,
        c.resets()
    );
    check!(
        c.dead().is_none(),
        "controller declared dead: {:?}",
        c.dead()
    );
    drop(qp);
    // After the recovery: a queue pair with the default timeout reads (slowly, at 1 I/O per second).
    let mut qp = c.queue_pair()?;
    let (r, _) = io(&mut qp, &ns, Op::Read, 7, c.alloc(4096)?, 0..4096)?;
    r.map_err(|e| format!("read after the recovery: {e}"))?;
    Ok(())
}

/// Keeps `qd` requests in flight on `qp` until `target` commands were submitted: slot `i` owns LBA `lba0 + i`
/// and cycles write → read → compare with a new pattern each time, so the rings wrap many times with data
/// checked at depth. A wait of `stall` without any completion is a stall and fails (bounded: never a hang).
/// Returns the reads verified.
#[allow(clippy::too_many_arguments)]
fn slot_cycles(
    c: &Controller,
    qp: &mut QueuePair,
    ns: &Namespace,
    qd: usize,
    lba0: u64,
    target: u64,
    stall: Duration,
    what: &str,
) -> Result<u64, Box<dyn StdError>> {
    // Slot i: tag i << 1 for its write, i << 1 | 1 for its read.
    let mut wbufs: Vec<Option<DmaBuf>> = Vec::new();
    let mut rbufs: Vec<Option<DmaBuf>> = Vec::new();
    for _ in 0..qd {
        wbufs.push(Some(c.alloc(4096)?));
        rbufs.push(Some(c.alloc(4096)?));
    }
    let mut gen = vec![0u32; qd];
    let fill = |b: &mut [u8], slot: usize, g: u32| {
        for (k, w) in b.chunks_mut(4).enumerate() {
            w.copy_from_slice(&((slot as u32) << 20 ^ g << 12 ^ k as u32).to_le_bytes());
        }
    };
    let start_commands = qp.stats().commands;
    let submitted = |qp: &QueuePair| qp.stats().commands - start_commands;
    for (slot, w) in wbufs.iter_mut().enumerate() {
        let mut b = w.take().ok_or("buffer")?;
        fill(&mut b, slot, 0);
        qp.write(ns, lba0 + slot as u64, b, 0..4096, (slot as u64) << 1)
            .map_err(|e| format!("{what}: {e}"))?;
    }
    let mut verified = 0u64;
    let mut last_progress = Instant::now();
    let mut err: Option<String> = None;
    while submitted(qp) < target || qp.outstanding() > 0 {
        let mut done = Vec::new();
        qp.poll(usize::MAX, |comp| done.push(comp));
        if !done.is_empty() {
            last_progress = Instant::now();
        }
        for comp in done {
            let (slot, is_read) = ((comp.tag >> 1) as usize, comp.tag & 1 == 1);
            if let Err(e) = comp.result {
                err.get_or_insert(format!("{what}: slot {slot}: {e}"));
                continue;
            }
            let b = comp.buf.ok_or("buffer lost")?;
            let more = submitted(qp) < target;
            if !is_read {
                wbufs[slot] = Some(b);
                let mut r = rbufs[slot].take().ok_or("read buffer")?;
                r.fill(0xee);
                qp.read(ns, lba0 + slot as u64, r, 0..4096, (slot as u64) << 1 | 1)
                    .map_err(|e| format!("{what}: {e}"))?;
            } else {
                let w = wbufs[slot].as_ref().ok_or("write buffer")?;
                if b[..] != w[..] {
                    err.get_or_insert(format!(
                        "{what}: slot {slot} generation {} read back wrong data",
                        gen[slot]
                    ));
                }
                verified += 1;
                rbufs[slot] = Some(b);
                if more {
                    gen[slot] += 1;
                    let mut w = wbufs[slot].take().ok_or("write buffer")?;
                    fill(&mut w, slot, gen[slot]);
                    qp.write(ns, lba0 + slot as u64, w, 0..4096, (slot as u64) << 1)
                        .map_err(|e| format!("{what}: {e}"))?;
                }
            }
        }
        if let Some(e) = err {
            return Err(e.into());
        }
        check!(
            last_progress.elapsed() < stall,
            "{what}: stalled: no completion for {} s with {} commands outstanding, after {} commands; {:?}",
            stall.as_secs(),
            qp.outstanding(),
            submitted(qp),
            qp.stats()
        );
    }
    Ok(verified)
}

/// Queue depths 1, 32 and 1023, without and with shadow doorbells: see [`slot_cycles`].
fn deep_queues_verified_with_wraparound() -> R {
    for (qd, shadow) in [
        (1usize, false),
        (32, false),
        (1023, false),
        (1, true),
        (32, true),
        (1023, true),
    ] {
        let opts = nvme_driver::ControllerOptions {
            shadow_doorbells: shadow,
            ..Default::default()
        };
        let c = Controller::open_with(C_4K, opts)?;
        let ns = c.namespace(1)?;
        let sq = (qd + 1).max(2);
        let mqes = c.cap().mqes() as usize;
        check!(sq <= mqes, "QD {qd} needs {sq} entries, MQES is {mqes}");
        let cq = (4 * sq).max(256).min(mqes);
        let mut qp = c.queue_pair_with(QueueConfig {
            sq_entries: sq as u16,
            cq_entries: cq as u16,
            ..QueueConfig::default()
        })?;
        check!(
            qp.max_outstanding() == qd,
            "max outstanding {} for QD {qd}",
            qp.max_outstanding()
        );
        let target = (10 * sq).max(3000) as u64;
        let what = format!("QD {qd} shadow {shadow}");
        let verified = slot_cycles(
            &c,
            &mut qp,
            &ns,
            qd,
            100,
            target,
            Duration::from_secs(20),
            &what,
        )?;
        let s = qp.stats();
        let wraps = s.commands / sq as u64;
        println!("{what}: {verified} verified reads, {} commands, SQ wrapped {wraps} times, {:.4} MMIO writes per command", s.commands, s.mmio_writes() as f64 / s.commands as f64);
        check!(wraps >= 8, "QD {qd}: the SQ wrapped only {wraps} times");
        check!(
            verified >= s.commands / 2 - 1,
            "QD {qd}: only {verified} reads verified of {} commands",
            s.commands
        );
    }
    Ok(())
}

/// Issue 17: with shadow doorbells on, runs at QD 1, 32 and 128 one after another on one controller, each on a
/// new queue pair (the same queue id again, sized as the benchmark sizes them), every write read back and
/// compared. Before the fix the second run stalled: the Doorbell Buffer slots kept the CQ head of the previous
/// queue with that id, the controller read it as the new queue's head and saw the CQ full after a few entries,
/// while the driver waited for `cq - sq` completions before it would write the head. A run with no completion
/// for 10 s fails the test (the driver's own stall handling starts at 30 s).
fn shadow_doorbells_never_stall() -> R {
    let opts = nvme_driver::ControllerOptions {
        shadow_doorbells: true,
        ..Default::default()
    };
    let c = Controller::open_with(C_4K, opts)?;
    check!(c.shadow_doorbells(), "shadow doorbells not configured");
    let ns = c.namespace(1)?;
    let mqes = c.cap().mqes() as usize;
    let mut runs = 0;
    for round in 0..3u64 {
        for qd in [1usize, 32, 128] {
            let sq = (qd + 1).max(32).min(mqes);
            let cq = (4 * sq).min(mqes);
            let mut qp = c.queue_pair_with(QueueConfig {
                sq_entries: sq as u16,
                cq_entries: cq as u16,
                ..QueueConfig::default()
            })?;
            check!(qp.shadow_doorbells(), "queue pair without shadow slots");
            let what = format!("round {round} QD {qd} (sq {sq} cq {cq}, qid {})", qp.qid());
            let target = 3000 + 1000 * round + 7 * qd as u64;
            let verified = slot_cycles(
                &c,
                &mut qp,
                &ns,
                qd,
                4096,
                target,
                Duration::from_secs(10),
                &what,
            )?;
            let s = qp.stats();
            println!(
                "{what}: {verified} reads verified, {:.4} MMIO writes per command (SQ {}, CQ {}), {} SQ shadow updates",
                s.mmio_writes() as f64 / s.commands as f64,
                s.sq_doorbell_writes,
                s.cq_doorbell_writes,
                s.sq_shadow_updates
            );
            runs += 1;
        }
    }
    println!("{runs} runs with shadow doorbells, none stalled");
    Ok(())
}
