//! `vm`: the same benchmark inside the test VM, where each nvkv node has its own emulated NVMe controller
//! driven by nvkv's userspace driver, with the durable log in that controller's PMR, and etcd's three
//! members keep their data on ext4 on a fourth controller driven by the guest kernel's nvme driver. All
//! six processes and the bench share the guest's vCPUs, as they share the host's cores in `run`.
//!
//! The host boots the VM carrying this binary, nvkv-server, Debian's etcd and mke2fs; the guest
//! (`vm-guest`) mounts the ext4 file system and runs `run` with the arguments given after `--`, plus the
//! ones that place the data; its report comes back over the console and is written to `--dir` on the
//! host.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use nvkv_qemu::vm::Bind;
use nvkv_qemu::{Accel, NvmeController, NvmeNamespace, Vm};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Console prefix of the guest's report.json (one line).
const REPORT_PREFIX: &str = "@@NVKV-RAFT-BENCH-REPORT ";
/// The three nodes' controllers, then etcd's.
const NODES: usize = 3;
/// Where etcd's file system is mounted in the guest.
const MOUNT: &str = "/mnt";

#[derive(Debug, Args)]
pub struct VmArgs {
    /// Where report.json and the console log go on the host [default: /tmp/nvkv-raft-bench/vm-<UTC time>].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// QEMU's accelerator (KVM hangs Linux guests on the project's machines).
    #[arg(long, default_value = "tcg")]
    accel: String,
    /// Bound on the whole boot, seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_s: u64,
    /// Arguments of `run` in the guest (after `--`), e.g. `-- --quick`.
    #[arg(last = true)]
    run: Vec<String>,
}

/// The arguments `vm-guest` adds to `run`: the data's places, the guest's binaries, and timing that
/// suits an emulated CPU (the same election settings for both systems: heartbeat 100 ms, elections after
/// 1 s, etcd's own defaults).
fn guest_run_args() -> Vec<String> {
    let nvme: Vec<String> = (0..NODES).map(NvmeController::guest_address).collect();
    [
        "--nvme",
        &nvme.join(","),
        "--durable-log",
        "pmr",
        "--server",
        "/bin/nvkv-server",
        "--etcd",
        "/bin/etcd",
        "--dir",
        &format!("{MOUNT}/out"),
        "--startup-timeout-s",
        "600",
        "--server-arg=--heartbeat-ms=100",
        "--server-arg=--election-ms=1000",
        "--etcd-arg=--heartbeat-interval=100",
        "--etcd-arg=--election-timeout=1000",
    ]
    .map(String::from)
    .to_vec()
}

pub fn host(a: VmArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding the bench's own executable")?;
    let server = crate::nvkv::default_server()?;
    crate::nvkv::check_server(&server)?;
    let out = a.dir.clone().unwrap_or_else(|| {
        PathBuf::from("/tmp/nvkv-raft-bench")
            .join(format!("vm-{}", nvkv_bench::conditions::timestamp()))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let scratch = std::env::temp_dir().join(format!("nvkv-raft-bench-vm-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let _cleanup = crate::procs::DirGuard {
        path: scratch.clone(),
        keep: false,
    };
    let accel = match a.accel.as_str() {
        "tcg" => Accel::Tcg,
        "kvm" => Accel::Kvm,
        other => bail!("--accel {other}: tcg or kvm"),
    };
    let mut vm = Vm::builder()
        .accel(accel)
        .binary(&exe, "nvkv-raft-bench")
        .binary(&server, "nvkv-server")
        .binary("/usr/bin/etcd", "etcd")
        .binary("/usr/sbin/mke2fs", "mke2fs")
        .modules(&["crc32c_generic", "crc16", "mbcache", "jbd2", "ext4"])
        .timeout(Duration::from_secs(a.timeout_s))
        .echo(true);
    for i in 0..NODES {
        // The PMRs on the host's tmpfs: memory that outlives QEMU, as the main job's.
        vm = vm.controller(
            NvmeController::new(&format!("NVKV-RAFT-{i}"))
                .namespace(NvmeNamespace::file(
                    scratch.join(format!("node{i}.img")),
                    256 << 20,
                    4096,
                ))
                .pmr(
                    PathBuf::from(format!(
                        "/dev/shm/nvkv-raft-bench-pmr-{}-{i}",
                        std::process::id()
                    )),
                    16 << 20,
                ),
        );
    }
    vm = vm.controller(
        NvmeController::new("NVKV-RAFT-ETCD")
            .namespace(NvmeNamespace::file(scratch.join("etcd.img"), 2 << 30, 4096))
            .bind(Bind::Kernel),
    );
    let report: Arc<Mutex<Option<String>>> = Arc::default();
    let sink = report.clone();
    vm = vm.on_line(move |l| {
        if let Some(j) = l.strip_prefix(REPORT_PREFIX) {
            if let Ok(mut g) = sink.lock() {
                *g = Some(j.to_string());
            }
        }
    });
    let mut cmd = String::from("/bin/nvkv-raft-bench vm-guest --");
    for arg in &a.run {
        cmd.push_str(&format!(" '{}'", arg.replace('\'', "'\\''")));
    }
    let result = vm.run(&format!("{cmd}\n")).map_err(|e| anyhow!("{e}"));
    for i in 0..NODES {
        // Best effort: a PMR file left behind is only memory of the host's tmpfs until its reboot.
        let _ = std::fs::remove_file(format!(
            "/dev/shm/nvkv-raft-bench-pmr-{}-{i}",
            std::process::id()
        ));
    }
    let run = result?;
    std::fs::write(out.join("console.log"), &run.console)
        .with_context(|| format!("writing {}", out.join("console.log").display()))?;
    if run.exit_code != 0 {
        bail!(
            "the in-guest benchmark failed (exit {}); the console is in {}",
            run.exit_code,
            out.join("console.log").display()
        );
    }
    let json = report
        .lock()
        .map_err(|_| anyhow!("report collector poisoned"))?
        .take()
        .ok_or_else(|| anyhow!("the guest printed no report"))?;
    let path = out.join("report.json");
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    println!(
        "nvkv-raft-bench vm: boot {:.1} s, total {:.1} s; report: {}",
        run.boot_time.as_secs_f64(),
        run.total_time.as_secs_f64(),
        path.display()
    );
    Ok(())
}

/// In the guest: ext4 on the kernel-driven controller for etcd, then `run` with `args` and the placing
/// arguments; the report goes to the console.
pub fn guest(args: Vec<String>) -> Result<()> {
    let block = Path::new("/dev/nvme0n1");
    for _ in 0..100 {
        if block.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !block.exists() {
        bail!(
            "{} did not appear: is the kernel's nvme driver loaded?",
            block.display()
        );
    }
    nvkv_bench::runner::mount_ext4(Path::new("/bin/mke2fs"), block)?;
    let mut argv = vec!["nvkv-raft-bench".to_string(), "run".to_string()];
    argv.extend(args);
    argv.extend(guest_run_args());
    let a = crate::parse_run(argv)?;
    crate::run(a)?;
    let path = format!("{MOUNT}/out/report.json");
    let json = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let one_line: serde_json::Value = serde_json::from_str(&json)?;
    println!("{REPORT_PREFIX}{one_line}");
    Ok(())
}
