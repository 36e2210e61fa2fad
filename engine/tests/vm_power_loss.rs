//! A real power loss between two boots of the test VM, on QEMU's NVMe through nvkv's driver.
//!
//! Boot 1 writes durable and non-durable puts, prints each durable put as it is acknowledged, and then cuts
//! the guest's power (`reboot(POWER_OFF)` with no close and no sync). Boot 2 reopens the same disk image:
//! every acknowledged durable put must be there with its value, and no key may read back a value that was
//! never written (non-durable puts may be present or not).

use nvkv::bdev::NvmeFactory;
use nvkv::{Db, Options, WriteOpts};
use nvkv_qemu::{NvmeController, NvmeNamespace, Vm};
use std::collections::BTreeSet;
use std::error::Error;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADDR: &str = "0000:00:10.0";

fn value_for(key: &str) -> Vec<u8> {
    let n: usize = key.bytes().map(|b| b as usize).sum();
    (0..(50 + n % 700))
        .map(|i| (i as u8).wrapping_mul(7) ^ key.as_bytes()[key.len() - 1])
        .collect()
}

fn options(create: bool) -> Options {
    let mut o = Options::file("/dev/null", None);
    o.shards = 2;
    o.create = create;
    o.buffer_bytes = 64 << 10;
    o.commit_interval = Duration::from_millis(3);
    o
}

fn phase1() -> Result<(), Box<dyn Error>> {
    let db = Db::open_with(options(true), Arc::new(NvmeFactory::open(ADDR, 1)?))?;
    let h = db.handle();
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(4) {
        let k = format!("d{i:06}");
        h.put(
            format!("n{i:06}").as_bytes(),
            &value_for(&format!("n{i:06}")),
        )?;
        h.put_opts(
            k.as_bytes(),
            &value_for(&k),
            WriteOpts {
                ts: None,
                durable: true,
            },
        )?;
        writeln!(out, "@@ACK {k} END")?;
        out.flush()?;
        i += 1;
    }
    // Power off now: no close, no sync. Buffered non-durable puts and the last cycle are cut.
    // SAFETY: reboot(2) with a valid command; the process does not continue past a successful call.
    unsafe {
        libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
    }
    Err("reboot(POWER_OFF) returned".into())
}

fn phase2() -> Result<(), Box<dyn Error>> {
    let acked: Vec<String> = std::fs::read_to_string("/etc/nvkv/acked")?
        .lines()
        .map(str::to_string)
        .collect();
    let db = Db::open_with(options(false), Arc::new(NvmeFactory::open(ADDR, 1)?))?;
    for r in db.recovery_reports() {
        println!("recovery: {r:?}");
    }
    let h = db.handle();
    let mut lost = 0;
    for k in &acked {
        if h.get(k.as_bytes())?.as_deref() != Some(&value_for(k)[..]) {
            println!("@@LOST {k}");
            lost += 1;
        }
    }
    let all = h.scan(b"", None, usize::MAX)?;
    let mut corrupt = 0;
    for (k, v) in &all {
        let k = String::from_utf8_lossy(k).to_string();
        if v != &value_for(&k) {
            println!("@@CORRUPT {k}");
            corrupt += 1;
        }
    }
    let nondurable = all.iter().filter(|(k, _)| k.starts_with(b"n")).count();
    println!(
        "@@SUMMARY acked {} lost {lost} corrupt {corrupt} keys {} non-durable present {nondurable}",
        acked.len(),
        all.len()
    );
    db.close()?;
    if lost + corrupt > 0 {
        return Err(
            format!("{lost} acknowledged durable puts lost, {corrupt} corrupt values").into(),
        );
    }
    Ok(())
}

fn main() {
    if nvkv_qemu::guest::in_guest() {
        let r = match std::env::args().nth(1).as_deref() {
            Some("phase1") => phase1(),
            Some("phase2") => phase2(),
            other => Err(format!("unknown phase {other:?}").into()),
        };
        if let Err(e) = r {
            println!("@@ERROR {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = host() {
        println!("test power_loss_keeps_acknowledged_durable_puts ... FAILED\n{e}");
        std::process::exit(101);
    }
    println!("test power_loss_keeps_acknowledged_durable_puts ... ok\n\ntest result: ok. 1 passed; 0 failed");
}

fn host() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty()
        && !filters
            .iter()
            .any(|f| "power_loss_keeps_acknowledged_durable_puts".contains(f.as_str()))
    {
        println!("running 0 tests");
        return Ok(());
    }
    if args.iter().any(|a| a == "--list") {
        println!("power_loss_keeps_acknowledged_durable_puts: test");
        return Ok(());
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !ci && std::env::var("NVKV_SKIP_VM").is_ok_and(|v| v == "1") {
        println!("SKIPPED (NVKV_SKIP_VM=1)");
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let img = std::env::temp_dir().join(format!("nvkv-power-loss-{}/disk.img", std::process::id()));
    let vm = |files: Option<Vec<u8>>| {
        let mut b = Vm::builder()
            .controller(
                NvmeController::new("NVKV-POWER").namespace(NvmeNamespace::file(
                    &img,
                    128 << 20,
                    4096,
                )),
            )
            .binary(&exe, "nvkv-guest-tests");
        if let Some(f) = files {
            b = b.file("/etc/nvkv/acked", f);
        }
        b
    };
    println!("running 1 test (two VM boots)");
    let one = vm(None)
        .expect_power_off(true)
        .run("/bin/nvkv-guest-tests phase1\n")?;
    if let Some(l) = one.output.lines().find(|l| l.starts_with("@@ERROR")) {
        return Err(format!("boot 1: {l}").into());
    }
    let acked: BTreeSet<String> = one
        .output
        .lines()
        .filter_map(|l| {
            l.trim_end()
                .strip_prefix("@@ACK ")?
                .strip_suffix(" END")
                .map(str::to_string)
        })
        .collect();
    println!(
        "boot 1: {} durable puts acknowledged before the power cut (exit {})",
        acked.len(),
        one.exit_code
    );
    if one.exit_code != -1 {
        return Err(format!("boot 1 did not end in a power cut (exit {})", one.exit_code).into());
    }
    if acked.len() < 10 {
        return Err(format!(
            "only {} acknowledged puts: the test proves nothing",
            acked.len()
        )
        .into());
    }
    let list: Vec<u8> = acked
        .iter()
        .flat_map(|k| format!("{k}\n").into_bytes())
        .collect();
    let two = vm(Some(list)).run("/bin/nvkv-guest-tests phase2\n")?;
    for l in two
        .output
        .lines()
        .filter(|l| l.starts_with("@@SUMMARY") || l.starts_with("recovery:"))
    {
        println!("boot 2: {l}");
    }
    let _ = std::fs::remove_dir_all(img.parent().unwrap_or(&img));
    if two.exit_code != 0 {
        let bad: Vec<&str> = two
            .output
            .lines()
            .filter(|l| l.starts_with("@@"))
            .take(20)
            .collect();
        return Err(format!(
            "boot 2 failed (exit {}):\n{}",
            two.exit_code,
            bad.join("\n")
        )
        .into());
    }
    Ok(())
}
