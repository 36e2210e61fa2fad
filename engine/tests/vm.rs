//! The engine on the `nvme` backend: nvkv's own driver on QEMU's emulated NVMe, in the test VM.
//!
//! Controller 0 (0000:00:10.0): 256 MiB raw file, 4 KiB LBAs; controller 1 (0000:00:11.0): 64 MiB raw file,
//! 512 B LBAs.

use nvkv::bdev::NvmeFactory;
use nvkv::{Db, Options, WriteOpts};
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
                NvmeController::new("NVKV-ENGINE-512").namespace(NvmeNamespace::file(
                    dir.join("b.img"),
                    64 << 20,
                    512,
                )),
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
