//! Reserving 2 MiB hugepages and mounting hugetlbfs.

use crate::sysfs::{io_err, System};
use serde::Serialize;
use std::path::PathBuf;
use std::process::Command;

use super::*;

/// Where hugetlbfs is mounted by default.
pub const HUGEPAGES_MOUNT: &str = "/dev/hugepages";

/// What `hugepages N` did.
#[derive(Debug, Clone, Serialize)]
pub struct Hugepages {
    pub requested: u64,
    pub granted: u64,
    pub mountpoint: String,
    pub mounted_now: bool,
}

fn nr_hugepages_path(sys: &System) -> PathBuf {
    let p = sys.path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages");
    if p.exists() {
        p
    } else {
        sys.path("/proc/sys/vm/nr_hugepages")
    }
}

/// Reserves `n` hugepages of 2 MiB and mounts hugetlbfs on /dev/hugepages unless a hugetlbfs is mounted there.
pub fn hugepages(sys: &System, n: u64) -> Result<Hugepages, SetupError> {
    let p = nr_hugepages_path(sys);
    write(&p, &n.to_string())?;
    let granted: u64 = std::fs::read_to_string(&p)
        .map_err(io_err(&p))
        .map_err(SetupError::from)?
        .trim()
        .parse()
        .unwrap_or(0);
    if granted < n {
        return Err(SetupError::HugepagesShort { wanted: n, granted });
    }
    let mounted = sys
        .mounts()
        .iter()
        .any(|m| m.fstype == "hugetlbfs" && m.mountpoint == HUGEPAGES_MOUNT);
    let mut mounted_now = false;
    if !mounted && n > 0 {
        let dir = sys.path(HUGEPAGES_MOUNT);
        std::fs::create_dir_all(&dir).map_err(|e| SetupError::HugetlbfsMount {
            path: HUGEPAGES_MOUNT.into(),
            why: format!("cannot create the directory: {e}"),
        })?;
        let out = Command::new("mount")
            .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "nodev"])
            .arg(&dir)
            .output()
            .map_err(|e| SetupError::HugetlbfsMount {
                path: HUGEPAGES_MOUNT.into(),
                why: format!("cannot run mount: {e}"),
            })?;
        if !out.status.success() {
            return Err(SetupError::HugetlbfsMount {
                path: HUGEPAGES_MOUNT.into(),
                why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        mounted_now = true;
    }
    Ok(Hugepages {
        requested: n,
        granted,
        mountpoint: HUGEPAGES_MOUNT.into(),
        mounted_now,
    })
}
