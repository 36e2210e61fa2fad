//! `nvkv-setup`: prepare a machine for nvkv's userspace NVMe driver (SPDK's `scripts/setup.sh` is the model).

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use nvkv_tools::identify::human_size;
use nvkv_tools::setup::{self, Status};
use nvkv_tools::sysfs::{PciController, System, Usage};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "nvkv-setup",
    version,
    about = "Bind NVMe controllers to vfio-pci for nvkv, give them back to the kernel, set up hugepages, check the system",
    long_about = "Prepares a machine for nvkv's userspace NVMe driver, like SPDK's scripts/setup.sh.\n\n\
        A controller taken by vfio-pci disappears from the kernel: its namespaces' block devices go away. \
        `bind` therefore refuses while a namespace (or a partition of it) is mounted, used as swap, held by \
        device-mapper or md, or open by a process; each refusal says what uses it and how to stop that. \
        `--force` takes the device anyway."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List NVMe controllers: PCI address, vendor:device, driver, IOMMU group, namespaces, what uses them.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Bind controllers to vfio-pci (for nvkv). Refuses while a namespace is in use, unless --force.
    Bind {
        /// PCI addresses, e.g. 0000:01:00.0 (see `nvkv-setup list`).
        #[arg(required = true)]
        addr: Vec<String>,
        /// Take the controller even though its namespaces are mounted, swap, held or open.
        #[arg(long)]
        force: bool,
    },
    /// Give controllers back to the kernel's nvme driver. Refuses while a program has the VFIO group open,
    /// unless --force.
    #[command(visible_alias = "unbind")]
    Release {
        /// PCI addresses, e.g. 0000:01:00.0.
        #[arg(required = true)]
        addr: Vec<String>,
        /// Release even though a program has the device's VFIO group open.
        #[arg(long)]
        force: bool,
    },
    /// Reserve N hugepages of 2 MiB and mount hugetlbfs on /dev/hugepages if it is not mounted.
    Hugepages {
        /// Number of 2 MiB pages (0 frees them).
        n: u64,
    },
    /// Check the IOMMU, the VFIO modules, /dev/vfio permissions, RLIMIT_MEMLOCK and hugepages.
    Check {
        /// DMA memory the driver will pin, in MiB (queues plus I/O buffers), to compare with RLIMIT_MEMLOCK.
        #[arg(long, default_value_t = 256)]
        memlock_mib: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct ListEntry {
    #[serde(flatten)]
    controller: PciController,
    in_use: Vec<Usage>,
    /// Programs that have the VFIO group open (pid, command).
    vfio_users: Vec<nvkv_tools::sysfs::Process>,
}

fn list(sys: &System, json: bool) -> Result<()> {
    let cs = sys.nvme_controllers()?;
    let entries: Vec<ListEntry> = cs
        .into_iter()
        .map(|c| {
            let in_use = sys.usage(&c);
            let vfio_users = match (c.driver.as_deref(), &c.iommu_group) {
                (Some("vfio-pci"), Some(g)) => sys.vfio_users(g),
                _ => Vec::new(),
            };
            ListEntry {
                controller: c,
                in_use,
                vfio_users,
            }
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    let status = std::fs::read_to_string(sys.path("/proc/self/status")).unwrap_or_default();
    if setup::parse_status(&status).uid != 0 {
        eprintln!(
            "note: not running as root: other users' open files cannot be inspected, so IN USE may miss some"
        );
    }
    if entries.is_empty() {
        println!("no NVMe controllers (PCI class 010802) found");
        return Ok(());
    }
    println!(
        "{:<14} {:<10} {:<10} {:<6} {:<28} IN USE",
        "PCI ADDRESS", "VID:DID", "DRIVER", "GROUP", "NAMESPACES"
    );
    for e in &entries {
        let c = &e.controller;
        let ns = if c.namespaces.is_empty() {
            "-".to_string()
        } else {
            c.namespaces
                .iter()
                .map(|n| match n.size_bytes {
                    Some(b) => format!("{} ({})", n.name, human_size(b)),
                    None => n.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut uses: Vec<String> = e.in_use.iter().map(Usage::short).collect();
        uses.extend(
            e.vfio_users
                .iter()
                .map(|p| format!("VFIO group open by pid {} ({})", p.pid, p.command)),
        );
        println!(
            "{:<14} {:<10} {:<10} {:<6} {:<28} {}",
            c.addr,
            format!("{:04x}:{:04x}", c.vendor, c.device),
            c.driver.as_deref().unwrap_or("-"),
            c.iommu_group.as_deref().unwrap_or("-"),
            ns,
            if uses.is_empty() {
                "no".to_string()
            } else {
                uses.join("; ")
            }
        );
    }
    Ok(())
}

/// Prints the error and its causes on one line, without a backtrace (operators need the fix, not our stack).
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nvkv-setup: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let sys = System::real();
    match cli.cmd {
        Cmd::List { json } => list(&sys, json),
        Cmd::Bind { addr, force } => {
            for a in &addr {
                let m = setup::bind_vfio(&sys, a, force)?;
                println!("{m}");
            }
            Ok(())
        }
        Cmd::Release { addr, force } => {
            for a in &addr {
                let m = setup::release(&sys, a, force)?;
                println!("{m}");
            }
            Ok(())
        }
        Cmd::Hugepages { n } => {
            let h = setup::hugepages(&sys, n)?;
            println!(
                "{} hugepages of 2 MiB reserved ({} MiB); hugetlbfs {} {}",
                h.granted,
                h.granted * 2,
                if h.mounted_now {
                    "mounted on"
                } else {
                    "already on"
                },
                h.mountpoint
            );
            Ok(())
        }
        Cmd::Check { memlock_mib, json } => {
            let checks = setup::check_system(&sys, memlock_mib << 20);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&checks).context("serialising the checks")?
                );
            } else {
                for c in &checks {
                    println!("{c}");
                }
            }
            let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
            if failed > 0 {
                bail!("{failed} check(s) failed; see the fixes above");
            }
            Ok(())
        }
    }
}
