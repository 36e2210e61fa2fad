//! RLIMIT_MEMLOCK and what the driver pins against it, and who may open a VFIO group node.
//!
//! VFIO's type1 IOMMU pins every page it maps (`VFIO_IOMMU_MAP_DMA`) and counts it in the process's locked
//! memory (`mm->locked_vm`, `VmLck` in `/proc/self/status`); unless the process has `CAP_IPC_LOCK`, a mapping
//! that would take it past the soft RLIMIT_MEMLOCK fails with ENOMEM. The driver checks the limit itself before
//! each mapping, so the error can say what the limit is, what is locked already and what is needed
//! ([`Shortfall`]) instead of a bare ENOMEM.

use std::fmt;
use std::sync::Mutex;

/// The part of the limit that matters: `None` when pinned memory is not limited for this process
/// (RLIMIT_MEMLOCK is unlimited or it has CAP_IPC_LOCK), else the soft limit in bytes.
pub fn counted_limit() -> Option<u64> {
    let limit = soft_limit()?;
    if has_cap_ipc_lock() {
        return None;
    }
    Some(limit)
}

/// The soft RLIMIT_MEMLOCK in bytes, `None` when unlimited.
pub fn soft_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `struct rlimit` to the valid pointer it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) };
    if rc != 0 || r.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(r.rlim_cur)
}

fn status_field(name: &str) -> Option<String> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
}

/// `CAP_IPC_LOCK` (linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;

fn has_cap_ipc_lock() -> bool {
    status_field("CapEff:")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Bytes of this process's locked memory (`VmLck`), which VFIO's pinned pages are part of.
pub fn locked_bytes() -> u64 {
    status_field("VmLck:")
        .and_then(|v| {
            v.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib << 10)
}

/// A mapping RLIMIT_MEMLOCK does not leave room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// The soft RLIMIT_MEMLOCK, bytes.
    pub limit: u64,
    /// Locked already (pinned DMA memory among it), bytes.
    pub locked: u64,
    /// What the mapping needed, bytes.
    pub needed: u64,
}

impl Shortfall {
    /// The smallest limit that lets this mapping through.
    pub fn minimum(&self) -> u64 {
        self.locked + self.needed
    }
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kib = |b: u64| b.div_ceil(1024);
        write!(
            f,
            "RLIMIT_MEMLOCK is too low for DMA memory: the limit is {} KiB, {} KiB are locked already and the \
             driver needs {} KiB more (at least {} KiB in all). Raise it to what a whole run pins \
             (`nvkv-setup check --shards N` prints that figure; `unlimited` also works): `ulimit -l KIB` in the \
             shell that starts the program (up to the hard limit, `ulimit -H -l`), a line `USER - memlock KIB` \
             in /etc/security/limits.d/nvkv.conf (next login), or `LimitMEMLOCK=` in a systemd unit",
            kib(self.limit),
            kib(self.locked),
            kib(self.needed),
            kib(self.minimum()),
        )
    }
}

/// Checks that pinning `needed` more bytes stays within RLIMIT_MEMLOCK.
pub fn check(needed: u64) -> Result<(), Shortfall> {
    let Some(limit) = counted_limit() else {
        return Ok(());
    };
    let locked = locked_bytes();
    if locked.saturating_add(needed) > limit {
        let s = Shortfall {
            limit,
            locked,
            needed,
        };
        record(s);
        return Err(s);
    }
    Ok(())
}

static LAST: Mutex<Option<Shortfall>> = Mutex::new(None);

pub(crate) fn record(s: Shortfall) {
    if let Ok(mut l) = LAST.lock() {
        *l = Some(s);
    }
}

/// The last mapping this process was refused for RLIMIT_MEMLOCK, if any. For callers whose error path
/// (a layer above the driver that keeps only an errno, say) lost the typed [`crate::Error::Memlock`].
pub fn last_shortfall() -> Option<Shortfall> {
    LAST.lock().ok().and_then(|l| *l)
}

/// Who owns a file and who is asking: for the error of a VFIO node this process may not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub path: String,
    pub owner: String,
    pub group: String,
    pub mode: u32,
    /// `name (uid N)` of this process's effective user.
    pub user: String,
    /// The user name alone (for the command that grants access), or the uid.
    pub user_name: String,
    /// Names of this process's groups.
    pub groups: Vec<String>,
}

/// Names of ids from an `/etc/passwd`- or `/etc/group`-shaped file (name:x:id:...).
fn name_of(file: &str, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _ = f.next()?;
        (f.next()?.parse::<u32>().ok()? == id).then(|| name.to_string())
    })
}

fn user_name(uid: u32) -> String {
    name_of("/etc/passwd", uid).unwrap_or_else(|| uid.to_string())
}

fn group_name(gid: u32) -> String {
    name_of("/etc/group", gid).unwrap_or_else(|| gid.to_string())
}

/// Describes `path` and this process's credentials.
pub fn access(path: &str) -> Access {
    use std::os::unix::fs::MetadataExt;
    let (owner, group, mode) = match std::fs::metadata(path) {
        Ok(m) => (user_name(m.uid()), group_name(m.gid()), m.mode() & 0o7777),
        Err(_) => ("?".into(), "?".into(), 0),
    };
    let ids = |name: &str| -> Vec<u32> {
        status_field(name)
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    // Uid: real effective saved fs.
    let uid = ids("Uid:").get(1).copied().unwrap_or(u32::MAX);
    let mut gids: Vec<u32> = ids("Gid:").get(1).copied().into_iter().collect();
    for g in ids("Groups:") {
        if !gids.contains(&g) {
            gids.push(g);
        }
    }
    let name = user_name(uid);
    Access {
        path: path.into(),
        owner,
        group,
        mode,
        user: format!("{name} (uid {uid})"),
        user_name: name,
        groups: gids.into_iter().map(group_name).collect(),
    }
}

impl Access {
    /// How to get access to the node of the controller at `addr`.
    pub fn fix(&self, addr: &str) -> String {
        let u = &self.user_name;
        let mut s = format!(
            "ask an administrator to grant it: `nvkv-setup bind {addr} --user {u}` (or `--group GROUP` for a group {u} is in)"
        );
        if self.mode & 0o060 == 0o060 && self.group != "root" {
            s.push_str(&format!(
                ", or join the group that owns it: `adduser {u} {}`, then log in again",
                self.group
            ));
        }
        s
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is owned by {}:{} with mode {:04o}; user {} is in group(s) {}",
            self.path,
            self.owner,
            self.group,
            self.mode,
            self.user,
            if self.groups.is_empty() {
                "none".to_string()
            } else {
                self.groups.join(", ")
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortfall_names_the_limit_what_is_locked_and_the_fix() {
        let s = Shortfall {
            limit: 64 << 10,
            locked: 12 << 10,
            needed: 1 << 20,
        };
        let m = s.to_string();
        for want in [
            "limit is 64 KiB",
            "12 KiB are locked",
            "1024 KiB more",
            "at least 1036 KiB",
            "nvkv-setup check --shards N",
            "ulimit -l KIB",
            "limits.d",
            "LimitMEMLOCK=",
        ] {
            assert!(m.contains(want), "{want:?} missing in: {m}");
        }
    }

    #[test]
    fn this_process_has_credentials_and_a_limit_reading() {
        let a = access("/");
        assert!(a.user.contains("uid "), "{a}");
        assert!(a.mode & 0o755 != 0, "{a}");
        // Whatever the limit, a zero-byte mapping always fits.
        assert!(check(0).is_ok());
    }
}
