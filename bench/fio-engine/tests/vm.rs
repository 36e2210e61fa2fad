//! fio through the nvkv engine inside the test VM, and the same jobs through the kernel's nvme driver with
//! io_uring, in one boot (see `nvkv_qemu::suite`). Needs the engine: `cargo test -p nvkv-fio --features fio`.
//!
//! | controller | address | set-up |
//! | --- | --- | --- |
//! | 0 | 0000:00:10.0 | serial NVKV-FIO; ns 1: 64 MiB file, 4 KiB LBAs; ns 2: 1 GiB null-co (read-zeroes), 4 KiB LBAs |
//! | 1 | 0000:00:11.0 | serial NVKV-FIO-FAULT; ns 1: 16 MiB file, 4 KiB LBAs, blkdebug read error at LBA 256 |
//!
//! The IOPS test prints lines starting with `nvkv-fio:` (fio's own IOPS, nvkv engine against io_uring, the same
//! boot); the host copies them to its output. Build with `--release` for figures worth quoting.

use nvkv_qemu::suite::{self, GuestTest};
use nvkv_qemu::{guest, NvmeController, NvmeNamespace, Vm};
use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type R = Result<(), Box<dyn StdError>>;

const CTRL: &str = "0000:00:10.0";
/// The engine in the guest (carried as a "binary" so that its shared libraries come along).
const ENGINE: &str = "/bin/libnvkv_fio.so";
const FIO: &str = "/bin/fio";
const REPORT: &str = "nvkv-fio: ";
/// Seconds of each IOPS run.
const RUNTIME: u32 = 4;

use nvkv_qemu::check;

fn main() {
    let tests = [
        GuestTest {
            name: "verify_crc32c_through_nvkv",
            run: verify_crc32c_through_nvkv,
        },
        GuestTest {
            name: "trim_and_flush_through_nvkv",
            run: trim_and_flush_through_nvkv,
        },
        GuestTest {
            name: "corrupted_block_fails_verify",
            run: corrupted_block_fails_verify,
        },
        GuestTest {
            name: "nvme_error_status_reaches_fio",
            run: nvme_error_status_reaches_fio,
        },
        GuestTest {
            name: "jobs_share_a_controller_and_reopen_it",
            run: jobs_share_a_controller_and_reopen_it,
        },
        GuestTest {
            name: "bad_filename_and_no_thread_refused",
            run: bad_filename_and_no_thread_refused,
        },
        GuestTest {
            name: "same_job_on_kernel_io_uring_and_iops",
            run: same_job_on_kernel_io_uring_and_iops,
        },
    ];
    suite::main(&tests, || {
        let dir = std::env::temp_dir().join(format!("nvkv-fio-vm-{}", std::process::id()));
        let img = |n: &str| dir.join(n);
        let engine = engine_path();
        Vm::builder()
            .controller(
                NvmeController::new("NVKV-FIO")
                    .namespace(NvmeNamespace::file(img("c0n1.img"), 64 << 20, 4096))
                    .namespace(NvmeNamespace::null(1 << 30, 4096)),
            )
            .controller(NvmeController::new("NVKV-FIO-FAULT").namespace(
                NvmeNamespace::file(img("c1n1.img"), 16 << 20, 4096).with_blkdebug(
                    "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nsector = \"2048\"\nonce = \"off\"\n",
                ),
            ))
            .binary(&engine, "libnvkv_fio.so")
            .binary("/usr/bin/fio", "fio")
            .timeout(Duration::from_secs(900))
            .on_line(|l| {
                if let Some(i) = l.find(REPORT) {
                    println!("{}", l[i..].trim_end());
                }
            })
    });
}

/// The engine built with this test: `libnvkv_fio.so` beside the test executable (target/<profile>/deps) or one
/// level up.
fn engine_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for _ in 0..2 {
        let p = dir.join("libnvkv_fio.so");
        if p.is_file() {
            return p;
        }
        dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    // Let the VM builder report the missing file.
    PathBuf::from("libnvkv_fio.so (not found beside the test executable)")
}

// ---------- helpers ----------

struct Out {
    ok: bool,
    text: String,
}

/// Runs fio with `args`, killing it after `limit`. Returns its exit status and stdout+stderr.
fn fio(args: &[String], limit: Duration) -> Result<Out, Box<dyn StdError>> {
    let mut child = Command::new(FIO)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {FIO}: {e}"))?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut o, &mut text);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut text);
    }
    match status {
        Some(s) => Ok(Out {
            ok: s.success(),
            text,
        }),
        None => Err(format!(
            "fio {} did not finish within {limit:?}; output:\n{text}",
            args.join(" ")
        )
        .into()),
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The options that put a job on the nvkv engine.
fn nvkv(filename: &str) -> Vec<String> {
    args(&[
        "--thread=1",
        &format!("--ioengine=external:{ENGINE}"),
        &format!("--filename={filename}"),
    ])
}

fn kernel(dev: &Path) -> Vec<String> {
    args(&[
        "--ioengine=io_uring",
        "--direct=1",
        &format!("--filename={}", dev.display()),
    ])
}

/// The verify job, for either engine: random writes of 4-64 KiB at depth 16 over 32 MiB, each block read back
/// and checked against its crc32c header.
fn verify_job() -> Vec<String> {
    args(&[
        "--name=verify",
        "--rw=randwrite",
        "--bsrange=4k-64k",
        "--iodepth=16",
        "--size=32M",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--randrepeat=1",
    ])
}

fn run_ok(what: &str, a: Vec<String>, limit: Duration) -> Result<String, Box<dyn StdError>> {
    let o = fio(&a, limit)?;
    check!(o.ok, "{what}: fio failed: fio {}\n{}", a.join(" "), o.text);
    Ok(o.text)
}

/// fio reports its verify reads as reads: a verify that read nothing checked nothing.
fn verified(out: &str) -> R {
    check!(
        out.contains("READ: bw="),
        "fio's verify phase read nothing:\n{out}"
    );
    Ok(())
}

fn cat(mut a: Vec<String>, b: Vec<String>) -> Vec<String> {
    a.extend(b);
    a
}

// ---------- tests ----------

fn verify_crc32c_through_nvkv() -> R {
    let out = run_ok(
        "verify through nvkv",
        cat(nvkv("0000.00.10.0/1"), verify_job()),
        Duration::from_secs(300),
    )?;
    verified(&out)?;
    // The short form and SPDK's form name the same namespace.
    run_ok(
        "verify through nvkv, SPDK-style filename",
        cat(
            nvkv("trtype=PCIe traddr=0000.00.10.0 ns=1"),
            args(&[
                "--name=spdkname",
                "--rw=write",
                "--bs=128k",
                "--iodepth=4",
                "--size=4M",
                "--offset=40M",
                "--verify=crc32c",
            ]),
        ),
        Duration::from_secs(120),
    )?;
    Ok(())
}

fn trim_and_flush_through_nvkv() -> R {
    // Two jobs in one run: random writes with a Flush (fsync) after every 4, and random trims (Deallocate).
    let out = run_ok(
        "trim and flush through nvkv",
        cat(
            nvkv("0000.00.10.0-ns1"),
            args(&[
                "--bs=16k",
                "--iodepth=8",
                "--size=8M",
                "--offset=48M",
                "--output-format=json",
                "--name=flush",
                "--rw=randwrite",
                "--fsync=4",
                "--name=trim",
                "--rw=randtrim",
            ]),
        ),
        Duration::from_secs(120),
    )?;
    let v = fio_json(&out)?;
    let (flush, trim) = (&v["jobs"][0], &v["jobs"][1]);
    let write = flush["write"]["total_ios"].as_u64().unwrap_or(0);
    let sync = flush["sync"]["total_ios"].as_u64().unwrap_or(0);
    let trims = trim["trim"]["total_ios"].as_u64().unwrap_or(0);
    let err = flush["error"].as_u64().unwrap_or(1) + trim["error"].as_u64().unwrap_or(1);
    check!(
        trims > 0 && write > 0 && sync > 0 && err == 0,
        "expected writes, flushes and trims without error, got write {write}, sync {sync}, trim {trims}, \
         errors {err}:\n{out}"
    );
    Ok(())
}

fn corrupted_block_fails_verify() -> R {
    let region = ["--offset=16M", "--size=4M"];
    let write = cat(
        nvkv("0000.00.10.0/1"),
        args(&[
            "--name=corrupt",
            "--rw=write",
            "--bs=4k",
            "--iodepth=8",
            region[0],
            region[1],
            "--verify=crc32c",
        ]),
    );
    let mut write_only = write.clone();
    write_only.push("--do_verify=0".into());
    run_ok(
        "write for verify_only",
        write_only,
        Duration::from_secs(120),
    )?;
    // verify_only: the same job with its writes skipped and its verify reads done.
    let mut verify_only = write;
    verify_only.push("--verify_only=1".into());
    // Untouched: passes.
    verified(&run_ok(
        "verify_only of untouched data",
        verify_only.clone(),
        Duration::from_secs(120),
    )?)?;
    // Overwrite one block in the middle of the region behind fio's back, with the driver itself.
    {
        let ctrl = nvme_driver::Controller::open(CTRL)?;
        let ns = ctrl.namespace(1)?;
        let mut qp = ctrl.queue_pair()?;
        let mut buf = ctrl.alloc(4096)?;
        buf.fill(0x5a);
        let lba = ((16u64 << 20) + (1 << 20)) >> ns.lba_shift;
        qp.write(&ns, lba, buf, 0..4096, 1).map_err(|e| e.kind)?;
        let mut res = None;
        let t = Instant::now();
        while res.is_none() && t.elapsed() < Duration::from_secs(10) {
            qp.poll(1, |c| res = Some(c.result));
        }
        res.ok_or("the corrupting write did not complete")??;
    }
    let o = fio(&verify_only, Duration::from_secs(120))?;
    let tail = &o.text[o.text.len().saturating_sub(6000)..];
    check!(
        !o.ok,
        "verify_only passed over a corrupted block:\n{}",
        tail
    );
    check!(
        o.text.contains("verify") && o.text.contains("offset 17825792"),
        "fio failed, but not with a verify error at the corrupted block (offset 17825792):\n{}",
        o.text
    );
    Ok(())
}

fn nvme_error_status_reaches_fio() -> R {
    // blkdebug fails reads of sector 2048 (512-byte sectors) = byte 1 MiB = 4 KiB LBA 256.
    let o = fio(
        &cat(
            nvkv("0000.00.11.0/1"),
            args(&[
                "--name=fault",
                "--rw=read",
                "--bs=4k",
                "--offset=1M",
                "--size=16k",
            ]),
        ),
        Duration::from_secs(60),
    )?;
    check!(!o.ok, "a read of the failing LBA succeeded:\n{}", o.text);
    check!(
        o.text.contains("Input/output error") && o.text.contains("SCT 0x2, SC 0x81"),
        "fio's message lacks EIO or the NVMe status (SCT 0x2, SC 0x81):\n{}",
        o.text
    );
    Ok(())
}

fn jobs_share_a_controller_and_reopen_it() -> R {
    // Two jobs at once on one controller (one queue pair each, two namespaces), then a stonewalled job that
    // opens the controller again after the first two shut it down.
    let out = run_ok(
        "three jobs",
        cat(
            // No global filename: a job inherits the global section's files and adds its own.
            nvkv("")[..2].to_vec(),
            args(&[
                "--bs=4k",
                "--iodepth=8",
                "--size=8M",
                "--output-format=json",
                "--name=a",
                "--filename=0000.00.10.0/2",
                "--rw=randread",
                "--numjobs=2",
                "--name=b",
                "--stonewall",
                "--filename=0000.00.10.0/1",
                "--rw=randwrite",
                "--offset=60M",
                "--size=2M",
                "--verify=crc32c",
            ]),
        ),
        Duration::from_secs(120),
    )?;
    let v = fio_json(&out)?;
    let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
    check!(jobs.len() == 3, "expected 3 jobs in fio's JSON:\n{out}");
    for j in &jobs {
        let ios = j["read"]["total_ios"].as_u64().unwrap_or(0)
            + j["write"]["total_ios"].as_u64().unwrap_or(0);
        check!(
            j["error"].as_u64() == Some(0) && ios > 0,
            "job {} did no I/O or failed:\n{out}",
            j["jobname"]
        );
    }
    Ok(())
}

fn bad_filename_and_no_thread_refused() -> R {
    let bad = fio(
        &cat(
            nvkv("0000.00.10.0/x"),
            args(&["--name=bad", "--rw=read", "--size=4k"]),
        ),
        Duration::from_secs(30),
    )?;
    check!(
        !bad.ok && bad.text.contains("bad filename") && bad.text.contains("0000.00.10.0/1"),
        "bad filename not refused clearly:\n{}",
        bad.text
    );
    let missing = fio(
        &cat(
            nvkv("0000.00.10.0/9"),
            args(&["--name=nons", "--rw=read", "--size=4k"]),
        ),
        Duration::from_secs(30),
    )?;
    check!(
        !missing.ok && missing.text.contains("namespace 9"),
        "missing namespace not refused clearly:\n{}",
        missing.text
    );
    let mut forked = nvkv("0000.00.10.0/1");
    forked[0] = "--thread=0".into();
    let forked = fio(
        &cat(forked, args(&["--name=fork", "--rw=read", "--size=4k"])),
        Duration::from_secs(30),
    )?;
    check!(
        !forked.ok && forked.text.contains("thread=1"),
        "thread=0 not refused clearly:\n{}",
        forked.text
    );
    Ok(())
}

// ---------- the kernel path, and the figures ----------

fn group_type_path(addr: &str) -> Result<PathBuf, Box<dyn StdError>> {
    Ok(PathBuf::from(format!(
        "/sys/kernel/iommu_groups/{}/type",
        guest::iommu_group(addr)?
    )))
}

fn unbind(addr: &str) -> R {
    let p = PathBuf::from(format!("/sys/bus/pci/devices/{addr}/driver/unbind"));
    if p.exists() {
        std::fs::write(&p, addr)?;
    }
    Ok(())
}

/// Sets the IOMMU group's domain type (the device must be unbound): `identity` for the fair kernel baseline
/// (QEMU.md trap 2), `DMA` for vfio-pci.
fn set_group_type(addr: &str, ty: &str) -> R {
    let p = group_type_path(addr)?;
    let cur = std::fs::read_to_string(&p).unwrap_or_default();
    if cur.trim() == ty || (ty == "DMA" && cur.trim().starts_with("DMA")) {
        return Ok(());
    }
    std::fs::write(&p, ty).map_err(|e| format!("setting {} to {ty}: {e}", p.display()))?;
    Ok(())
}

/// Moves the controller to the kernel's nvme driver (identity domain) and returns its namespaces' block devices.
fn to_kernel(addr: &str) -> Result<Vec<PathBuf>, Box<dyn StdError>> {
    if guest::driver(addr).as_deref() != Some("nvme") {
        unbind(addr)?;
        set_group_type(addr, "identity")?;
        guest::bind_kernel(addr)?;
    }
    let first = guest::block_device(addr).ok_or("no block device after binding nvme")?;
    // /dev/nvmeXnY: the controller's namespaces are nvmeXn1, nvmeXn2.
    let name = first.to_string_lossy().to_string();
    let base = &name[..name.rfind('n').unwrap_or(name.len())];
    let devs: Vec<PathBuf> = (1..=2)
        .map(|n| PathBuf::from(format!("{base}n{n}")))
        .collect();
    let t = Instant::now();
    while !devs.iter().all(|d| d.exists()) {
        check!(
            t.elapsed() < Duration::from_secs(20),
            "{devs:?} did not all appear"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(devs)
}

fn to_vfio(addr: &str) -> R {
    if guest::driver(addr).as_deref() == Some("vfio-pci") {
        return Ok(());
    }
    unbind(addr)?;
    set_group_type(addr, "DMA")?;
    guest::bind_vfio(addr)?;
    Ok(())
}

fn fio_json(json: &str) -> Result<serde_json::Value, Box<dyn StdError>> {
    // fio may print notes before the JSON object, and stderr follows it.
    let start = json
        .find('{')
        .ok_or_else(|| format!("no JSON in fio's output:\n{json}"))?;
    let mut de =
        serde_json::Deserializer::from_str(&json[start..]).into_iter::<serde_json::Value>();
    match de.next() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(format!("fio's JSON: {e}\n{json}").into()),
        None => Err(format!("no JSON in fio's output:\n{json}").into()),
    }
}

/// 4 KiB random reads at `qd` for RUNTIME seconds, pinned to vCPU 0; fio's own IOPS.
fn randread_iops(target: Vec<String>, qd: u32, extra: &[&str]) -> Result<f64, Box<dyn StdError>> {
    let mut a = target;
    a.extend(args(&[
        "--name=randread",
        "--rw=randread",
        "--bs=4k",
        &format!("--iodepth={qd}"),
        "--time_based=1",
        &format!("--runtime={RUNTIME}"),
        "--ramp_time=1",
        "--cpus_allowed=0",
        "--norandommap=1",
        "--output-format=json",
    ]));
    a.extend(args(extra));
    let out = run_ok("randread", a, Duration::from_secs(RUNTIME as u64 + 60))?;
    let v = fio_json(&out)?;
    let job = &v["jobs"][0];
    let iops = job["read"]["iops"].as_f64().unwrap_or(0.0);
    let err = job["error"].as_u64().unwrap_or(1);
    check!(iops > 0.0 && err == 0, "no IOPS (error {err}):\n{out}");
    Ok(iops)
}

fn same_job_on_kernel_io_uring_and_iops() -> R {
    // The verify job through the kernel path, on the namespace nvkv wrote before; then the kernel reads back,
    // with fio's verify_only, a region this test writes through nvkv (an independent read of nvkv's writes).
    let cross = args(&[
        "--name=cross",
        "--rw=write",
        "--bs=8k",
        "--iodepth=8",
        "--offset=56M",
        "--size=4M",
        "--verify=crc32c",
    ]);
    to_vfio(CTRL)?;
    let mut cross_write = cat(nvkv("0000.00.10.0/1"), cross.clone());
    cross_write.push("--do_verify=0".into());
    run_ok(
        "cross-check write through nvkv",
        cross_write,
        Duration::from_secs(120),
    )?;
    let devs = to_kernel(CTRL)?;
    verified(&run_ok(
        "verify job through io_uring",
        cat(kernel(&devs[0]), verify_job()),
        Duration::from_secs(300),
    )?)?;
    let mut cross_verify = cat(kernel(&devs[0]), cross);
    cross_verify.push("--verify_only=1".into());
    verified(&run_ok(
        "io_uring verify_only of what nvkv wrote",
        cross_verify,
        Duration::from_secs(120),
    )?)?;
    println!("{REPORT}verify=crc32c job passed through nvkv and through io_uring on {}, same boot; io_uring verified data nvkv wrote", devs[0].display());

    // IOPS: 4 KiB random reads on the null namespace (2), A B A B in this boot.
    let poll = std::fs::read_to_string(format!(
        "/sys/block/{}/queue/io_poll",
        devs[1].file_name().unwrap_or_default().to_string_lossy()
    ))
    .unwrap_or_default();
    let mut rows: Vec<(String, u32, Vec<f64>)> = Vec::new();
    let mut add =
        |name: &str, qd: u32, v: f64| match rows.iter_mut().find(|r| r.0 == name && r.1 == qd) {
            Some(r) => r.2.push(v),
            None => rows.push((name.to_string(), qd, vec![v])),
        };
    for round in 0..2 {
        to_vfio(CTRL)?;
        for qd in [1, 32] {
            add(
                "nvkv engine",
                qd,
                randread_iops(nvkv("0000.00.10.0/2"), qd, &[])?,
            );
        }
        let devs = to_kernel(CTRL)?;
        for qd in [1, 32] {
            add("io_uring", qd, randread_iops(kernel(&devs[1]), qd, &[])?);
        }
        add(
            "io_uring --hipri",
            32,
            randread_iops(kernel(&devs[1]), 32, &["--hipri=1"])?,
        );
        let _ = round;
    }
    to_vfio(CTRL)?;
    println!(
        "{REPORT}fio 4 KiB randread, {RUNTIME} s + 1 s ramp, one job pinned to vCPU 0, 1 GiB null-co namespace \
         (read-zeroes), TCG; kernel: identity IOMMU domain, poll queue io_poll={}; nvkv engine built {}",
        poll.trim(),
        if cfg!(debug_assertions) {
            "in debug (use --release for figures)"
        } else {
            "in release"
        }
    );
    for (name, qd, v) in &rows {
        let list: Vec<String> = v.iter().map(|x| format!("{:.1}K", x / 1000.0)).collect();
        println!("{REPORT}{name:<18} QD {qd:>2}: {} IOPS", list.join(", "));
    }
    Ok(())
}
