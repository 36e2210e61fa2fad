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
    /// Needs root; --user/--group give the device to a user who then runs nvkv without root.
    #[command(group = clap::ArgGroup::new("grantee").multiple(true).args(["user", "group"]))]
    Bind {
        /// PCI addresses, e.g. 0000:01:00.0 (see `nvkv-setup list`).
        #[arg(required = true)]
        addr: Vec<String>,
        /// Take the controller even though its namespaces are mounted, swap, held or open.
        #[arg(long)]
        force: bool,
        /// Give the controller's /dev/vfio/N to this user (owner, read-write), so it can run nvkv
        /// without root; prints the RLIMIT_MEMLOCK it needs and a udev rule that keeps the grant.
        #[arg(long)]
        user: Option<String>,
        /// Give /dev/vfio/N to this group (read-write, mode 0660): every member can run nvkv.
        #[arg(long)]
        group: Option<String>,
        /// Install the udev rule (in /etc/udev/rules.d/70-nvkv-vfio.rules) instead of only printing it.
        #[arg(long, requires = "grantee")]
        udev_rule: bool,
        /// Shards the user will run, for the RLIMIT_MEMLOCK figure (default: the CPUs online).
        #[arg(long)]
        shards: Option<usize>,
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
        /// DMA memory the driver will pin, in MiB, to compare with RLIMIT_MEMLOCK (default: what nvkv pins
        /// for --shards shards).
        #[arg(long)]
        memlock_mib: Option<u64>,
        /// Shards, for the default of --memlock-mib (default: the CPUs online).
        #[arg(long)]
        shards: Option<usize>,
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

/// CPUs online: the shards a database gets when its owner does not say.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Fails with the fix unless this process runs as root (sysfs writes, chown of /dev/vfio nodes).
fn require_root(what: &str) -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = setup::parse_status(&status).uid;
    if uid != 0 {
        bail!(
            "`nvkv-setup {what}` needs root (it writes sysfs and changes the owner of /dev/vfio nodes); you are uid {uid}: run it with sudo, e.g. `sudo nvkv-setup {what} ADDR --user $(id -un)`"
        );
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    let sys = System::real();
    match cli.cmd {
        Cmd::List { json } => list(&sys, json),
        Cmd::Bind {
            addr,
            force,
            user,
            group,
            udev_rule,
            shards,
        } => {
            require_root("bind")?;
            for a in &addr {
                let m = setup::bind_vfio(&sys, a, force)?;
                println!("{m}");
                if user.is_none() && group.is_none() {
                    continue;
                }
                let group_no = sys
                    .controller(a)?
                    .iommu_group
                    .with_context(|| format!("{a} has no IOMMU group"))?;
                let g = setup::grant(&sys, &group_no, user.as_deref(), group.as_deref())?;
                println!("  {g}");
                if udev_rule {
                    let path = setup::install_udev_rule(&sys, &g)?;
                    println!(
                        "  udev rule written to {path} (it applies when the node is next created; `udevadm trigger` to apply it now)"
                    );
                } else {
                    println!(
                        "  to keep this across reboots and re-binds, add this line to {} (or pass --udev-rule):\n    {}",
                        setup::UDEV_RULES,
                        g.udev_rule()
                    );
                }
            }
            // limits.conf names a group as @group.
            let who = match (&user, &group) {
                (Some(u), _) => Some(u.clone()),
                (None, Some(g)) => Some(format!("@{g}")),
                (None, None) => None,
            };
            if let Some(who) = who {
                let b = setup::memlock_budget(shards.unwrap_or_else(cpus));
                println!(
                    "RLIMIT_MEMLOCK: {who} needs at least {} MiB ({} KiB) of locked memory for {} shard(s): {}. Set it with one of:",
                    b.bytes >> 20,
                    b.kib(),
                    b.shards,
                    b.breakdown()
                );
                for l in b.how_to_set(&who) {
                    println!("    {l}");
                }
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
        Cmd::Check {
            memlock_mib,
            shards,
            json,
        } => {
            let needed = match memlock_mib {
                Some(m) => m << 20,
                None => setup::memlock_budget(shards.unwrap_or_else(cpus)).bytes,
            };
            let checks = setup::check_system(&sys, needed);
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
