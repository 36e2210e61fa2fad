//! Hot-removal (issue 14): QEMU's monitor unplugs the NVMe controller (`device_del` over QMP, the controller
//! behind a PCIe root port) while two threads keep I/O in flight on their queue pairs. The driver gets VFIO's
//! request notification, declares the controller dead and releases the device; every in-flight and later
//! command fails with a typed `ControllerDead` (never `Busy`, never a hang), and the kernel finishes the removal.

use nvkv_qemu::monitor::Qmp;
use nvkv_qemu::suite::{self, GuestTest};
use nvkv_qemu::{check, NvmeController, NvmeNamespace, Vm};
use nvme_driver::{Controller, DeathCause, DmaBuf, IoError, SubmitErrorKind};
use std::error::Error;
use std::time::{Duration, Instant};

type R = Result<(), Box<dyn Error>>;

/// The hot-pluggable controller on the first root port's bus.
const ADDR: &str = "0000:01:00.0";
/// Printed by the guest when I/O is running: the host then sends `device_del`.
const MARKER: &str = "@@NVKV-HOTREMOVE-NOW";

fn main() {
    let tests = [GuestTest {
        name: "hot_remove_during_io_fails_everything_typed",
        run: hot_remove_during_io_fails_everything_typed,
    }];
    suite::main(&tests, || {
        let qmp = std::env::temp_dir().join(format!("nvkv-hotremove-{}.qmp", std::process::id()));
        let socket = qmp.clone();
        Vm::builder()
            .qmp(&qmp)
            .controller(
                NvmeController::new("NVKV-HOTPLUG")
                    .hotpluggable()
                    .namespace(NvmeNamespace::null(256 << 20, 4096)),
            )
            .on_line(move |line| {
                if line.trim_end().ends_with(MARKER) {
                    let socket = socket.clone();
                    std::thread::spawn(move || {
                        let r = Qmp::connect(&socket, Duration::from_secs(10))
                            .and_then(|mut m| m.device_del("nvme0"));
                        match r {
                            Ok(()) => eprintln!("host: device_del nvme0 sent"),
                            Err(e) => eprintln!("host: device_del failed: {e}"),
                        }
                    });
                }
            })
    });
}

/// What one I/O thread saw.
#[derive(Debug, Default)]
struct Seen {
    ok: u64,
    dead_completions: u64,
    dead_submits: u64,
    other: Vec<String>,
    first_dead: Option<Instant>,
    last_dead: Option<Instant>,
}

fn io_thread(c: Controller, seed: u64) -> Result<Seen, String> {
    let ns = c.namespace(1).map_err(|e| e.to_string())?;
    let mut qp = c.queue_pair().map_err(|e| e.to_string())?;
    let mut free: Vec<DmaBuf> = (0..16).filter_map(|_| c.alloc(4096).ok()).collect();
    // Kept for the last check: in-flight buffers of a dead controller are quarantined, not handed back.
    let spare = c.alloc(4096).map_err(|e| e.to_string())?;
    let mut seen = Seen::default();
    let mut rng = seed;
    let deadline = Instant::now() + Duration::from_secs(120);
    let dead_at = |s: &mut Seen| {
        let now = Instant::now();
        s.first_dead.get_or_insert(now);
        s.last_dead = Some(now);
    };
    loop {
        while let Some(b) = free.pop() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            match qp.read(&ns, rng % ns.blocks, b, 0..4096, 0) {
                Ok(()) => {}
                Err(e) => {
                    if let Some(b) = e.buf {
                        free.push(b);
                    }
                    match e.kind {
                        SubmitErrorKind::ControllerDead => {
                            seen.dead_submits += 1;
                            dead_at(&mut seen);
                        }
                        SubmitErrorKind::Busy => {}
                        k => seen.other.push(format!("submit: {k}")),
                    }
                    break;
                }
            }
        }
        qp.poll(usize::MAX, |comp| {
            match comp.result {
                Ok(()) => seen.ok += 1,
                Err(IoError::ControllerDead) => {
                    seen.dead_completions += 1;
                    dead_at(&mut seen);
                }
                Err(e) => seen.other.push(format!("completion: {e}")),
            }
            if let Some(b) = comp.buf {
                free.push(b);
            }
        });
        if qp.is_dead() && qp.outstanding() == 0 {
            // A dead queue pair says so (never Busy), with the buffer handed back.
            let e = qp
                .read(&ns, 0, spare, 0..4096, 0)
                .err()
                .ok_or("a dead queue pair accepted a read")?;
            if e.kind != SubmitErrorKind::ControllerDead || e.buf.is_none() {
                return Err(format!(
                    "dead queue pair refused with {:?} (buffer back: {})",
                    e.kind,
                    e.buf.is_some()
                ));
            }
            seen.dead_submits += 1;
            dead_at(&mut seen);
            return Ok(seen);
        }
        if Instant::now() > deadline {
            return Err(format!("no end after 120 s: {seen:?}, {qp:?}"));
        }
    }
}

fn hot_remove_during_io_fails_everything_typed() -> R {
    let c = Controller::open(ADDR)?;
    let workers: Vec<_> = (0..2u64)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || io_thread(c, 0x9e37_79b9 + i))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    println!("{MARKER}");
    let mut all = Vec::new();
    for w in workers {
        all.push(w.join().map_err(|_| "I/O thread panicked")??);
    }
    check!(
        c.dead() == Some(DeathCause::Removed),
        "controller state {:?}",
        c.dead()
    );
    for (i, s) in all.iter().enumerate() {
        check!(
            s.other.is_empty(),
            "thread {i}: untyped or unexpected errors: {:?}",
            s.other
        );
        check!(s.ok > 0, "thread {i}: no I/O before the removal: {s:?}");
    }
    let first = all
        .iter()
        .filter_map(|s| s.first_dead)
        .min()
        .ok_or("no typed error")?;
    let last = all
        .iter()
        .filter_map(|s| s.last_dead)
        .max()
        .ok_or("no typed error")?;
    println!(
        "hot-remove: {} reads ok, {} in-flight failed with ControllerDead, {} refused with ControllerDead; device_del asked → first typed error {} ms (the guest kernel's hotplug handling and VFIO's request), first → last typed error {} ms, {} buffers quarantined",
        all.iter().map(|s| s.ok).sum::<u64>(),
        all.iter().map(|s| s.dead_completions).sum::<u64>(),
        all.iter().map(|s| s.dead_submits).sum::<u64>(),
        first.duration_since(asked).as_millis(),
        last.duration_since(first).as_millis(),
        c.quarantined_buffers()
    );
    check!(
        c.queue_pair().is_err(),
        "a dead controller still made a queue pair"
    );
    drop(c);
    // The driver released the device: the kernel finishes the removal (bounded wait).
    let sysfs = format!("/sys/bus/pci/devices/{ADDR}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::path::Path::new(&sysfs).exists() {
        check!(
            Instant::now() < deadline,
            "{sysfs} still there 60 s after the driver let go"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "hot-remove: the kernel removed {ADDR} {} ms after device_del",
        asked.elapsed().as_millis()
    );
    Ok(())
}
