//! The engine on the `nvme` backend: nvkv's own driver on QEMU's emulated NVMe, in the test VM.
//!
//! Controller 0 (0000:00:10.0): 256 MiB raw file, 4 KiB LBAs, no PMR; controller 1 (0000:00:11.0): 64 MiB raw
//! file, 512 B LBAs, a 4 MiB PMR (a host file beside the images).

use nvkv::bdev::NvmeFactory;
use nvkv::{Db, DurableLogDevice, Options, WriteOpts};
use nvkv_qemu::suite::{self, GuestTest};
use nvkv_qemu::{NvmeController, NvmeNamespace, Vm};
use std::collections::BTreeMap;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

type R = Result<(), Box<dyn Error>>;

use nvkv_qemu::check;

fn main() {
    let tests = [
        GuestTest {
            name: "model_ops_and_reopen_on_nvme_4k",
            run: model_ops_and_reopen_on_nvme_4k,
        },
        GuestTest {
            name: "model_ops_and_reopen_on_nvme_512",
            run: model_ops_and_reopen_on_nvme_512,
        },
        GuestTest {
            name: "durable_puts_and_concurrent_clients",
            run: durable_puts_and_concurrent_clients,
        },
        GuestTest {
            name: "pmr_log_acknowledges_falls_back_when_full_and_is_refused_without_a_pmr",
            run: pmr_log_acknowledges_falls_back_when_full_and_is_refused_without_a_pmr,
        },
    ];
    suite::main(&tests, || {
        let dir = std::env::temp_dir().join(format!("nvkv-engine-vm-{}", std::process::id()));
        Vm::builder()
            .controller(
                NvmeController::new("NVKV-ENGINE-4K").namespace(NvmeNamespace::file(
                    dir.join("a.img"),
                    256 << 20,
                    4096,
                )),
            )
            .controller(
                NvmeController::new("NVKV-ENGINE-512")
                    .namespace(NvmeNamespace::file(dir.join("b.img"), 64 << 20, 512))
                    .pmr(dir.join("pmr"), 4 << 20),
            )
    });
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn options(shards: usize, create: bool) -> Options {
    // The backend field is not used by open_with; the factory decides.
    let mut o = Options::file("/dev/null", None);
    o.shards = shards;
    o.create = create;
    o.buffer_bytes = 64 << 10;
    o.commit_interval = Duration::from_millis(2);
    o
}

/// Random puts, deletes, increments and reads against a BTreeMap model; then close, reopen (recovery from the
/// device) and compare everything, by point reads and by a full ordered scan.
fn model_ops(addr: &str, seed: u64) -> R {
    let factory = Arc::new(NvmeFactory::open(addr, 1)?);
    let db = Db::open_with(options(2, true), factory.clone())?;
    let h = db.handle();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut rng = Rng(seed);
    for i in 0..4000u64 {
        let k = format!("key{:04}", rng.next() % 500).into_bytes();
        match rng.next() % 10 {
            0 => {
                h.delete(&k)?;
                model.remove(&k);
            }
            1 => {
                let got = h.get(&k)?;
                check!(
                    got == model.get(&k).cloned(),
                    "op {i}: get {:?}: {:?} vs model {:?}",
                    String::from_utf8_lossy(&k),
                    got,
                    model.get(&k)
                );
            }
            _ => {
                let len = (rng.next() % 3000) as usize;
                let v: Vec<u8> = (0..len).map(|j| (j as u64 ^ i) as u8).collect();
                h.put(&k, &v)?;
                model.insert(k, v);
            }
        }
    }
    db.close()?;
    let db = Db::open_with(options(2, false), factory)?;
    let keys: u64 = db.recovery_reports().iter().map(|r| r.keys).sum();
    check!(
        keys == model.len() as u64,
        "recovered {keys} keys, model has {}",
        model.len()
    );
    let h = db.handle();
    for (k, v) in &model {
        check!(
            h.get(k)?.as_ref() == Some(v),
            "after reopen: {:?} differs",
            String::from_utf8_lossy(k)
        );
    }
    let all = h.scan(b"", None, usize::MAX)?;
    let want: Vec<(Vec<u8>, Vec<u8>)> = model.into_iter().collect();
    check!(
        all == want,
        "ordered scan after reopen differs ({} vs {} pairs)",
        all.len(),
        want.len()
    );
    db.close()?;
    Ok(())
}

fn model_ops_and_reopen_on_nvme_4k() -> R {
    model_ops("0000:00:10.0", 1)
}

fn model_ops_and_reopen_on_nvme_512() -> R {
    model_ops("0000:00:11.0", 2)
}

/// Four client threads doing durable puts of their own keys and reading them back at once.
fn durable_puts_and_concurrent_clients() -> R {
    let factory = Arc::new(NvmeFactory::open("0000:00:10.0", 1)?);
    let db = Db::open_with(options(2, true), factory.clone())?;
    let mut threads = Vec::new();
    for t in 0..4u32 {
        let h = db.handle();
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            for i in 0..200u32 {
                let k = format!("t{t}-{i:04}");
                let v = format!("value {t} {i}");
                h.put_opts(
                    k.as_bytes(),
                    v.as_bytes(),
                    WriteOpts {
                        ts: None,
                        durable: i % 4 == 0,
                    },
                )
                .map_err(|e| e.to_string())?;
                let got = h.get(k.as_bytes()).map_err(|e| e.to_string())?;
                if got.as_deref() != Some(v.as_bytes()) {
                    return Err(format!("{k}: read {got:?} right after writing it"));
                }
            }
            Ok(())
        }));
    }
    for t in threads {
        t.join().map_err(|_| "client thread panicked")??;
    }
    db.close()?;
    let db = Db::open_with(options(2, false), factory)?;
    check!(
        db.get(b"t3-0199")?.as_deref() == Some(&b"value 3 199"[..]),
        "t3-0199 lost"
    );
    db.close()?;
    Ok(())
}

/// The durable log in a controller's PMR: durable puts acknowledged by it (no cycle needed), a log too
/// small for the load falling back to cycles without a hang, a clean close detaching it; on a
/// controller without a PMR, asking for a PMR log is refused by name.
fn pmr_log_acknowledges_falls_back_when_full_and_is_refused_without_a_pmr() -> R {
    let mut o = options(1, true);
    o.durable_log = DurableLogDevice::Pmr;
    match Db::open_with(o, Arc::new(NvmeFactory::open("0000:00:10.0", 1)?)) {
        Err(nvkv::Error::DurableLog(why)) => {
            check!(
                why.contains("Persistent Memory Region"),
                "refused, but why? {why}"
            )
        }
        Err(e) => return Err(format!("a PMR log without a PMR: {e}").into()),
        Ok(_) => return Err("a PMR log opened on a controller without a PMR".into()),
    }
    let factory = Arc::new(NvmeFactory::open("0000:00:11.0", 1)?);
    let durable = WriteOpts {
        ts: None,
        durable: true,
    };
    // Long commit interval: only the log acknowledges.
    let mut o = options(2, true);
    o.durable_log = DurableLogDevice::Pmr;
    o.commit_interval = Duration::from_secs(60);
    let db = Db::open_with(o, factory.clone())?;
    for i in 0..300u32 {
        db.put_opts(format!("p{i:04}").as_bytes(), &[i as u8; 100], durable)?;
    }
    let st = db.stats()?;
    let (by_log, by_cycle) = st.iter().fold((0, 0), |(l, c), s| {
        (l + s.durable_log_writes, c + s.durable_cycle_writes)
    });
    check!(
        st.iter().all(|s| s.durable_log == Some("pmr")),
        "{:?}",
        st[0].durable_log
    );
    check!(
        by_log == 300 && by_cycle == 0,
        "by log {by_log}, by cycle {by_cycle}"
    );
    db.close()?;
    // Detached by the close: opens without it.
    let db = Db::open_with(options(2, false), factory.clone())?;
    check!(
        db.get(b"p0299")?.as_deref() == Some(&[43u8; 100][..]),
        "p0299 lost"
    );
    db.close()?;
    // A log of 8 KiB per shard under a short commit interval: full now and then, never a hang.
    let mut o = options(2, false);
    o.durable_log = DurableLogDevice::Pmr;
    o.durable_log_bytes = 8192 + 256;
    let db = Db::open_with(o, factory.clone())?;
    for i in 0..1500u32 {
        db.put_opts(
            format!("q{:04}", i % 400).as_bytes(),
            &[i as u8; 100],
            durable,
        )?;
    }
    let st = db.stats()?;
    let (by_log, by_cycle, round) = st.iter().fold((0, 0, 0), |(l, c, a), s| {
        (
            l + s.durable_log_writes,
            c + s.durable_cycle_writes,
            a + s.durable_log_appended_bytes / s.durable_log_capacity.max(1),
        )
    });
    check!(
        by_log + by_cycle == 1500,
        "by log {by_log}, by cycle {by_cycle}"
    );
    check!(
        by_log > 0 && round >= 4,
        "by log {by_log}; the logs went round {round} times"
    );
    println!("small PMR log: {by_log} acknowledged by it, {by_cycle} by cycles, went round {round} times");
    db.close()?;
    Ok(())
}
