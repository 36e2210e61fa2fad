//! What the system has and lacks for the userspace driver, for the current user.

use crate::sysfs::System;
use serde::Serialize;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::*;

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of `nvkv-setup check`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        write!(f, "[{s}] {:<10} {}", self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n       fix: {fix}")?;
        }
        Ok(())
    }
}

fn check(name: &'static str, status: Status, detail: String, fix: Option<&str>) -> Check {
    Check {
        name,
        status,
        detail,
        fix: fix.map(str::to_string),
    }
}

fn count_entries(p: &Path) -> usize {
    std::fs::read_dir(p).map(|r| r.count()).unwrap_or(0)
}

/// The effective uid, supplementary groups and CAP_IPC_LOCK of this process, from `/proc/self/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gids: Vec<u32>,
    pub cap_ipc_lock: bool,
}

/// Parses `/proc/self/status` for [`Credentials`].
pub fn parse_status(text: &str) -> Credentials {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    // Uid: real effective saved fs; Gid: likewise.
    let uid = field("Uid:")
        .get(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(u32::MAX);
    let mut gids: Vec<u32> = field("Gid:")
        .get(1)
        .and_then(|v| v.parse().ok())
        .into_iter()
        .collect();
    gids.extend(
        field("Groups:")
            .iter()
            .filter_map(|g| g.parse::<u32>().ok()),
    );
    let cap_eff = field("CapEff:")
        .first()
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0);
    Credentials {
        uid,
        gids,
        cap_ipc_lock: cap_eff & (1 << 14) != 0,
    }
}

/// Read-write access to a file for these credentials, by its mode bits (root always has it).
pub fn can_read_write(c: &Credentials, uid: u32, gid: u32, mode: u32) -> bool {
    c.uid == 0
        || (uid == c.uid && mode & 0o600 == 0o600)
        || (c.gids.contains(&gid) && mode & 0o060 == 0o060)
        || mode & 0o006 == 0o006
}

/// Parses the soft "Max locked memory" limit of `/proc/self/limits`: Some(bytes), None = unlimited.
pub fn parse_memlock(text: &str) -> Option<Option<u64>> {
    let line = text.lines().find(|l| l.starts_with("Max locked memory"))?;
    let soft = line
        .trim_start_matches("Max locked memory")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(None)
    } else {
        soft.parse().ok().map(Some)
    }
}

/// Parses a field of `/proc/meminfo` (the number only).
pub fn meminfo(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn mib(b: u64) -> String {
    format!("{} MiB", b >> 20)
}

/// Checks the system for what nvkv's userspace driver needs. `memlock_needed` is the DMA memory the driver
/// will pin, in bytes.
pub fn check_system(sys: &System, memlock_needed: u64) -> Vec<Check> {
    let mut out = Vec::new();

    // IOMMU: hardware units and groups.
    let units = count_entries(&sys.path("/sys/class/iommu"));
    let groups = count_entries(&sys.path("/sys/kernel/iommu_groups"));
    let cmdline = std::fs::read_to_string(sys.path("/proc/cmdline")).unwrap_or_default();
    let iommu_fix = "boot with the IOMMU on: `intel_iommu=on` (Intel) or `amd_iommu=on` (AMD) on the kernel command line, VT-d/AMD-Vi enabled in the firmware; in QEMU add `-device intel-iommu,intremap=on` to a q35 machine";
    if groups == 0 {
        out.push(check(
            "iommu",
            Status::Fail,
            format!(
                "no IOMMU groups in /sys/kernel/iommu_groups ({units} IOMMU units); kernel command line: {}",
                cmdline.trim()
            ),
            Some(iommu_fix),
        ));
    } else {
        out.push(check(
            "iommu",
            Status::Ok,
            format!("{units} IOMMU unit(s), {groups} group(s)"),
            None,
        ));
    }
    match sys.nvme_controllers() {
        Ok(cs) if cs.is_empty() => out.push(check(
            "nvme",
            Status::Warn,
            "no NVMe controllers on the PCI bus".into(),
            None,
        )),
        Ok(cs) => {
            for c in cs {
                let drv = c.driver.clone().unwrap_or_else(|| "no driver".into());
                match &c.iommu_group {
                    Some(g) => out.push(check(
                        "nvme",
                        Status::Ok,
                        format!("{} ({drv}) is in IOMMU group {g}", c.addr),
                        None,
                    )),
                    None => out.push(check(
                        "nvme",
                        Status::Fail,
                        format!("{} ({drv}) has no IOMMU group", c.addr),
                        Some(iommu_fix),
                    )),
                }
            }
        }
        Err(e) => out.push(check("nvme", Status::Fail, e.to_string(), None)),
    }

    // VFIO modules.
    let loaded = |m: &str| sys.path("/sys/module").join(m).exists();
    let mut missing = Vec::new();
    if !loaded("vfio") {
        missing.push("vfio");
    }
    if !loaded("vfio_iommu_type1") {
        missing.push("vfio_iommu_type1");
    }
    if !sys.path("/sys/bus/pci/drivers/vfio-pci").exists() {
        missing.push("vfio-pci");
    }
    if missing.is_empty() {
        out.push(check(
            "vfio",
            Status::Ok,
            "vfio, vfio_iommu_type1 and the vfio-pci driver are loaded".into(),
            None,
        ));
    } else {
        out.push(check(
            "vfio",
            Status::Fail,
            format!("not loaded: {}", missing.join(", ")),
            Some("`modprobe vfio-pci` (pulls in vfio and vfio_iommu_type1); `nvkv-setup bind` also loads it"),
        ));
    }

    // /dev/vfio permissions for this user.
    let creds =
        parse_status(&std::fs::read_to_string(sys.path("/proc/self/status")).unwrap_or_default());
    let mut nodes = vec![PathBuf::from("/dev/vfio/vfio")];
    let mut group_addrs = Vec::new();
    if let Ok(cs) = sys.nvme_controllers() {
        for c in cs {
            if let (Some("vfio-pci"), Some(g)) = (c.driver.as_deref(), c.iommu_group) {
                nodes.push(Path::new("/dev/vfio").join(&g));
                group_addrs.push((g, c.addr));
            }
        }
    }
    for n in nodes {
        let p = sys.path(&n.display().to_string());
        match std::fs::metadata(&p) {
            Ok(m) if can_read_write(&creds, m.uid(), m.gid(), m.mode()) => out.push(check(
                "/dev/vfio",
                Status::Ok,
                format!("{} is readable and writable by uid {}", n.display(), creds.uid),
                None,
            )),
            Ok(m) => {
                let user = id_name(sys, "/etc/passwd", creds.uid);
                let group = id_name(sys, "/etc/group", m.gid());
                let addr = n
                    .file_name()
                    .and_then(|g| group_addrs.iter().find(|(gr, _)| gr.as_str() == g))
                    .map_or("ADDR".to_string(), |(_, a)| a.clone());
                out.push(Check {
                    name: "/dev/vfio",
                    status: Status::Fail,
                    detail: format!(
                        "no access to {}: owner {}:{}, mode {:04o}; user {user} (uid {}) is in group(s) {}",
                        n.display(),
                        id_name(sys, "/etc/passwd", m.uid()),
                        group,
                        m.mode() & 0o7777,
                        creds.uid,
                        creds
                            .gids
                            .iter()
                            .map(|g| id_name(sys, "/etc/group", *g))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    fix: Some(format!(
                        "as root: `nvkv-setup bind {addr} --user {user}` (or `--group GROUP` for a group {user} is in), or join group {group} if it has read-write access; or run as root"
                    )),
                })
            }
            Err(e) => out.push(check(
                "/dev/vfio",
                Status::Fail,
                format!("{}: {e}", n.display()),
                Some("load vfio (`modprobe vfio-pci`) and bind a controller (`nvkv-setup bind ADDR`)"),
            )),
        }
    }

    // RLIMIT_MEMLOCK: VFIO type1 counts pinned pages against it unless the process has CAP_IPC_LOCK.
    let limits = std::fs::read_to_string(sys.path("/proc/self/limits")).unwrap_or_default();
    match parse_memlock(&limits) {
        _ if creds.cap_ipc_lock => out.push(check(
            "memlock",
            Status::Ok,
            "CAP_IPC_LOCK: VFIO does not count pinned memory against RLIMIT_MEMLOCK".into(),
            None,
        )),
        Some(None) => out.push(check(
            "memlock",
            Status::Ok,
            "RLIMIT_MEMLOCK is unlimited".into(),
            None,
        )),
        Some(Some(b)) if b >= memlock_needed => out.push(check(
            "memlock",
            Status::Ok,
            format!("RLIMIT_MEMLOCK {} covers the {} the driver pins", mib(b), mib(memlock_needed)),
            None,
        )),
        Some(Some(b)) => out.push(Check {
            name: "memlock",
            status: Status::Fail,
            detail: format!(
                "RLIMIT_MEMLOCK is {} KiB, the driver pins up to {}",
                b >> 10,
                mib(memlock_needed)
            ),
            fix: Some(format!(
                "`ulimit -l {kib}` (or `unlimited`; up to the hard limit), a line `{user} - memlock {kib}` in /etc/security/limits.d/nvkv.conf (next login), or `LimitMEMLOCK={mib}M` in a systemd unit",
                kib = memlock_needed.div_ceil(1 << 20) << 10,
                mib = memlock_needed.div_ceil(1 << 20),
                user = id_name(sys, "/etc/passwd", creds.uid),
            )),
        }),
        None => out.push(check(
            "memlock",
            Status::Warn,
            "cannot read RLIMIT_MEMLOCK from /proc/self/limits".into(),
            None,
        )),
    }

    // Hugepages.
    let mi = std::fs::read_to_string(sys.path("/proc/meminfo")).unwrap_or_default();
    let total = meminfo(&mi, "HugePages_Total").unwrap_or(0);
    let free = meminfo(&mi, "HugePages_Free").unwrap_or(0);
    let size_kb = meminfo(&mi, "Hugepagesize").unwrap_or(0);
    let mounts: Vec<String> = sys
        .mounts()
        .into_iter()
        .filter(|m| m.fstype == "hugetlbfs")
        .map(|m| m.mountpoint)
        .collect();
    if total == 0 {
        out.push(check(
            "hugepages",
            Status::Warn,
            "no hugepages reserved: the driver falls back to 4 KiB pages (works, more IOMMU entries)".into(),
            Some("`nvkv-setup hugepages 512` (1 GiB of 2 MiB pages)"),
        ));
    } else if mounts.is_empty() {
        out.push(check(
            "hugepages",
            Status::Warn,
            format!(
                "{total} hugepages of {size_kb} KiB ({free} free), but no hugetlbfs is mounted"
            ),
            Some("`nvkv-setup hugepages N` mounts one on /dev/hugepages"),
        ));
    } else {
        out.push(check(
            "hugepages",
            Status::Ok,
            format!(
                "{total} hugepages of {size_kb} KiB ({free} free), hugetlbfs on {}",
                mounts.join(", ")
            ),
            None,
        ));
    }
    out
}
