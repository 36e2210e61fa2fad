//! Giving a user or group a bound controller's VFIO group node, the udev rule that keeps it, and the
//! RLIMIT_MEMLOCK the user needs.

use crate::sysfs::System;
use serde::Serialize;
use std::fmt;
use std::os::unix::fs::MetadataExt;

use super::*;

/// An `/etc/passwd` or `/etc/group` entry: name, id and (passwd only) primary group.
fn id_entry(sys: &System, file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    let text = std::fs::read_to_string(sys.path(file)).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 || f[0] != name {
            return None;
        }
        Some((f[2].parse().ok()?, f.get(3).and_then(|g| g.parse().ok())))
    })
}

/// The name of a uid or gid from `/etc/passwd` or `/etc/group`, or the number.
pub fn id_name(sys: &System, file: &str, id: u32) -> String {
    std::fs::read_to_string(sys.path(file))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 3 && f[2].parse::<u32>().ok() == Some(id)).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| id.to_string())
}

/// What `bind --user/--group` did to a VFIO group node.
#[derive(Debug, Clone, Serialize)]
pub struct Granted {
    pub node: String,
    /// IOMMU group number (the node's name).
    pub group_no: String,
    pub user: Option<String>,
    pub group: Option<String>,
    pub mode: u32,
    /// Owner, group and mode before.
    pub was: String,
}

impl Granted {
    /// A udev rule that gives the node to the same user and group whenever it is created (boot, re-bind).
    pub fn udev_rule(&self) -> String {
        let mut r = format!("SUBSYSTEM==\"vfio\", KERNEL==\"{}\"", self.group_no);
        if let Some(u) = &self.user {
            r.push_str(&format!(", OWNER=\"{u}\""));
        }
        if let Some(g) = &self.group {
            r.push_str(&format!(", GROUP=\"{g}\""));
        }
        r.push_str(&format!(", MODE=\"{:04o}\"", self.mode));
        r
    }
}

impl fmt::Display for Granted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: owner {}:{}, mode {:04o} (was {})",
            self.node,
            self.user.as_deref().unwrap_or("root"),
            self.group.as_deref().unwrap_or("root"),
            self.mode,
            self.was
        )
    }
}

/// Where `bind --udev-rule` writes the rule.
pub const UDEV_RULES: &str = "/etc/udev/rules.d/70-nvkv-vfio.rules";

/// Gives `/dev/vfio/<group_no>` to `user` (owner, read-write) and/or `group` (group, read-write): mode 0600
/// for a user alone, 0660 with a group. The owner or group not named is root (an earlier grant is replaced).
pub fn grant(
    sys: &System,
    group_no: &str,
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Granted, SetupError> {
    let uid = user
        .map(|u| {
            id_entry(sys, "/etc/passwd", u)
                .map(|(id, _)| id)
                .ok_or_else(|| SetupError::NoSuchUser { name: u.into() })
        })
        .transpose()?;
    let gid = group
        .map(|g| {
            id_entry(sys, "/etc/group", g)
                .map(|(id, _)| id)
                .ok_or_else(|| SetupError::NoSuchGroup { name: g.into() })
        })
        .transpose()?;
    let node = format!("/dev/vfio/{group_no}");
    let path = sys.path(&node);
    let who = [user, group]
        .iter()
        .flatten()
        .copied()
        .collect::<Vec<_>>()
        .join(":");
    let fail = |source| SetupError::Grant {
        path: node.clone(),
        who: who.clone(),
        source,
    };
    let m = std::fs::metadata(&path).map_err(fail)?;
    let was = format!(
        "{}:{} {:04o}",
        id_name(sys, "/etc/passwd", m.uid()),
        id_name(sys, "/etc/group", m.gid()),
        m.mode() & 0o7777
    );
    // The grant replaces an earlier one: what is not given to the user or group goes back to root.
    std::os::unix::fs::chown(&path, Some(uid.unwrap_or(0)), Some(gid.unwrap_or(0)))
        .map_err(fail)?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    Ok(Granted {
        node,
        group_no: group_no.into(),
        user: user.map(str::to_string),
        group: group.map(str::to_string),
        mode,
        was,
    })
}

/// Writes the udev rule of `g` to [`UDEV_RULES`] (replacing a rule there for the same IOMMU group).
pub fn install_udev_rule(sys: &System, g: &Granted) -> Result<String, SetupError> {
    let path = sys.path(UDEV_RULES);
    let key = format!("KERNEL==\"{}\"", g.group_no);
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains(&key))
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        lines.push(
            "# Written by nvkv-setup bind --udev-rule: VFIO group nodes for nvkv's driver.".into(),
        );
    }
    lines.push(g.udev_rule());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| SetupError::Write {
            path: dir.display().to_string(),
            value: "(directory)".into(),
            source,
        })?;
    }
    write(&path, &(lines.join("\n") + "\n"))?;
    Ok(UDEV_RULES.into())
}

/// The DMA memory nvkv pins for `shards` shards with the engine's default buffers, and how it adds up.
#[derive(Debug, Clone, Serialize)]
pub struct MemlockBudget {
    pub shards: usize,
    pub bytes: u64,
    pub parts: Vec<(String, u64)>,
}

/// What the driver pins for one controller and `shards` queue pairs, plus each shard's write buffers (the
/// active one, one per persistence cycle in flight) and one more buffer for a read, a GC move or a
/// checkpoint block, with the engine's defaults; rounded up to whole MiB.
pub fn memlock_budget(shards: usize) -> MemlockBudget {
    use nvme_driver::dma::budget;
    let shards = shards.max(1);
    let o = nvkv::Options::file("/dev/null", None);
    let ctrl = budget::controller(false) as u64;
    let qp = budget::queue_pair(&nvme_driver::QueueConfig::default()) as u64;
    let bufs = ((o.max_inflight_cycles.max(1) + 2) * o.buffer_bytes) as u64;
    let parts = vec![
        ("controller (admin queues)".to_string(), ctrl),
        (
            format!("{shards} I/O queue pair(s) (rings, PRP lists)"),
            qp * shards as u64,
        ),
        (
            format!("{shards} shard(s) of write and I/O buffers"),
            bufs * shards as u64,
        ),
    ];
    let total: u64 = parts.iter().map(|p| p.1).sum();
    MemlockBudget {
        shards,
        bytes: total.next_multiple_of(1 << 20),
        parts,
    }
}

impl MemlockBudget {
    pub fn kib(&self) -> u64 {
        self.bytes >> 10
    }

    /// How the figure adds up, in one line.
    pub fn breakdown(&self) -> String {
        self.parts
            .iter()
            .map(|(what, b)| format!("{what} {} KiB", b.div_ceil(1024)))
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// The three ways to set it for `user`, one a line.
    pub fn how_to_set(&self, user: &str) -> Vec<String> {
        vec![
            format!(
                "ulimit -l {}   (in the shell that starts nvkv; up to the hard limit, `ulimit -H -l`)",
                self.kib()
            ),
            format!(
                "/etc/security/limits.d/nvkv.conf: `{user} - memlock {}`   (soft and hard, from the next login)",
                self.kib()
            ),
            format!("systemd unit: `LimitMEMLOCK={}M`", self.bytes >> 20),
        ]
    }
}
