//! Hot-removal under the engine (issue 14): a two-shard database on QEMU's NVMe through nvkv's driver,
//! clients writing durable puts on both shards, and QEMU's monitor unplugs the controller (`device_del`
//! over QMP). Every request after that fails with a typed error (`Io(Gone)`, or the failure that made
//! the shard read-only), never hangs; stats say which shard failed and why; `close` returns in bounded
//! time and the process exits cleanly.

use nvkv::bdev::{IoError, NvmeFactory};
use nvkv::{Db, Error, Options, WriteOpts};
use nvkv_qemu::monitor::Qmp;
use nvkv_qemu::suite::{self, GuestTest};
use nvkv_qemu::{check, NvmeController, NvmeNamespace, Vm};
use std::sync::Arc;
use std::time::{Duration, Instant};

type R = Result<(), Box<dyn std::error::Error>>;

/// The hot-pluggable controller on the first root port's bus.
const ADDR: &str = "0000:01:00.0";
/// Printed by the guest when writes are running: the host then sends `device_del`.
const MARKER: &str = "@@NVKV-ENGINE-HOTREMOVE-NOW";

fn main() {
    let tests = [GuestTest {
        name: "hot_remove_under_the_engine_fails_requests_typed_and_close_returns",
        run: hot_remove_under_the_engine,
    }];
    suite::main(&tests, || {
        let qmp =
            std::env::temp_dir().join(format!("nvkv-engine-hotremove-{}.qmp", std::process::id()));
        let socket = qmp.clone();
        Vm::builder()
            .qmp(&qmp)
            .controller(
                NvmeController::new("NVKV-ENG-HOTPLUG")
                    .hotpluggable()
                    // A file: the engine reads back what it writes (null-co reads zeroes).
                    .namespace(NvmeNamespace::file(
                        std::env::temp_dir()
                            .join(format!("nvkv-engine-hotremove-{}.img", std::process::id())),
                        128 << 20,
                        4096,
                    )),
            )
            .on_line(move |line| {
                if line.trim_end().ends_with(MARKER) {
                    let socket = socket.clone();
                    std::thread::spawn(move || {
                        let r = Qmp::connect(&socket, Duration::from_secs(10))
                            .and_then(|mut m| m.device_del("nvme0"));
                        if let Err(e) = r {
                            eprintln!("host: device_del failed: {e}");
                        }
                    });
                }
            })
    });
}

/// Whether an error is one a removed device may give: the device gone, or the shard read-only since.
fn typed_after_removal(e: &Error) -> bool {
    matches!(e, Error::Io(IoError::Gone) | Error::Io(IoError::Device(_)))
}

fn hot_remove_under_the_engine() -> R {
    let mut o = Options::file("/dev/null", None);
    o.shards = 2;
    o.buffer_bytes = 64 << 10;
    o.commit_interval = Duration::from_millis(2);
    let db = Db::open_with(o, Arc::new(NvmeFactory::open(ADDR, 1)?))?;
    let durable = WriteOpts {
        ts: None,
        durable: true,
    };
    let clients: Vec<_> = (0..2u64)
        .map(|c| {
            let h = db.handle();
            std::thread::spawn(move || {
                let (mut ok, mut typed, mut other) = (0u64, 0u64, Vec::new());
                let deadline = Instant::now() + Duration::from_secs(90);
                let mut last_err = None;
                for i in 0u64.. {
                    let k = format!("c{c}-{i}");
                    match h.put_opts(k.as_bytes(), &[7u8; 300], durable) {
                        Ok(_) => ok += 1,
                        Err(e) if typed_after_removal(&e) => {
                            typed += 1;
                            last_err = Some(Instant::now());
                            // Both shards have answered with an error for a while: done.
                            if typed >= 200 {
                                break;
                            }
                        }
                        Err(e) => other.push(e.to_string()),
                    }
                    if Instant::now() > deadline {
                        other.push("no end after 90 s".into());
                        break;
                    }
                }
                (ok, typed, other, last_err)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let asked = Instant::now();
    println!("{MARKER}");
    let mut results = Vec::new();
    for c in clients {
        results.push(c.join().map_err(|_| "client panicked")?);
    }
    let stats = db.stats();
    let t = Instant::now();
    let closed = db.close();
    let close_time = t.elapsed();
    let ok: u64 = results.iter().map(|r| r.0).sum();
    let typed: u64 = results.iter().map(|r| r.1).sum();
    let other: Vec<&String> = results.iter().flat_map(|r| r.2.iter()).collect();
    let last = results.iter().filter_map(|r| r.3).max();
    println!(
        "before removal {ok} durable puts; after it {typed} typed errors, other errors {}; last typed \
         error {:?} after device_del; close {:?} in {close_time:?}",
        other.len(),
        last.map(|l| l - asked),
        closed.as_ref().map(|_| ()).map_err(|e| e.to_string())
    );
    match &stats {
        Ok(s) => {
            for st in s {
                println!("shard {}: failed = {:?}", st.shard, st.failed);
            }
            check!(
                s.iter().all(|st| st.failed.is_some()),
                "a shard on the removed device does not say it failed: {s:?}"
            );
        }
        // The stats call itself may fail typed once the shards refuse: acceptable, said.
        Err(e) => println!("stats after removal: {e}"),
    }
    check!(
        ok > 10,
        "only {ok} puts before the removal: the test proves little"
    );
    check!(other.is_empty(), "untyped errors after removal: {other:?}");
    check!(closed.is_err(), "close after the removal reported success");
    check!(
        close_time < Duration::from_secs(10),
        "close took {close_time:?}"
    );
    Ok(())
}
