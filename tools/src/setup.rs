//! What `nvkv-setup` does: move controllers between the kernel's `nvme` driver and `vfio-pci`, reserve
//! hugepages, and check the system for what the userspace driver needs. SPDK's `scripts/setup.sh` is the model.

use crate::sysfs::{io_err, PciController, Process, SysfsError, System, Usage};
use serde::Serialize;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Errors of the set-up operations. Each names the device and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error("refusing to take {addr} from the kernel: it is in use\n{}\nFix the above, or pass --force to take it anyway (the kernel loses the device under whatever uses it: mounted file systems, swap and mappings break, data may be lost)", list(uses))]
    InUse { addr: String, uses: Vec<Usage> },
    #[error("refusing to release {addr}: /dev/vfio/{group} is open by {}; stop that program first, or pass --force", procs(users))]
    VfioInUse {
        addr: String,
        group: String,
        users: Vec<Process>,
    },
    #[error("{addr} has no IOMMU group, so vfio-pci cannot take it: turn the IOMMU on (kernel command line `intel_iommu=on` or `amd_iommu=on`, and VT-d/AMD-Vi in the firmware; in QEMU add `-device intel-iommu,intremap=on`), then check with `nvkv-setup check`")]
    NoIommuGroup { addr: String },
    #[error("the {driver} driver is not available and `modprobe {module}` failed ({why}); load the module (`modprobe {module}`) or build it into the kernel")]
    DriverMissing {
        driver: &'static str,
        module: &'static str,
        why: String,
    },
    #[error("cannot write {value:?} to {path}: {source}{}", write_hint(source))]
    Write {
        path: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: {what} did not happen within {secs} s; see `dmesg` for the kernel's reason")]
    Timeout {
        addr: String,
        what: String,
        secs: u64,
    },
    #[error("{addr} is bound to {driver} after probing, not {wanted}; unbind it from {driver} (`nvkv-setup release {addr}` / `bind {addr}`) and see `dmesg`")]
    WrongDriver {
        addr: String,
        driver: String,
        wanted: &'static str,
    },
    #[error("no user {name:?} in /etc/passwd: create it first (`adduser {name}`) or name an existing one")]
    NoSuchUser { name: String },
    #[error("no group {name:?} in /etc/group: create it first (`addgroup {name}`) and add the users to it (`adduser USER {name}`)")]
    NoSuchGroup { name: String },
    #[error("cannot give {path} to {who}: {source}{}", write_hint(source))]
    Grant {
        path: String,
        who: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hugepages: asked for {wanted} pages of 2 MiB, the kernel granted {granted} (not enough free contiguous memory); free memory or reserve them at boot (`hugepages=N` on the kernel command line)")]
    HugepagesShort { wanted: u64, granted: u64 },
    #[error("cannot mount hugetlbfs on {path}: {why}; mount it yourself: `mount -t hugetlbfs -o pagesize=2M nodev {path}`")]
    HugetlbfsMount { path: String, why: String },
}

fn list(uses: &[Usage]) -> String {
    uses.iter()
        .map(|u| format!("  - {u}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn procs(p: &[Process]) -> String {
    p.iter()
        .map(|p| format!("pid {} ({})", p.pid, p.command))
        .collect::<Vec<_>>()
        .join(", ")
}

fn write_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => " (run as root)",
        _ => "",
    }
}

fn write(path: &Path, value: &str) -> Result<(), SetupError> {
    std::fs::write(path, value).map_err(|source| SetupError::Write {
        path: path.display().to_string(),
        value: value.trim_end().to_string(),
        source,
    })
}

/// What a bind or release did.
#[derive(Debug, Clone, Serialize)]
pub struct Moved {
    pub addr: String,
    pub from: Option<String>,
    pub to: String,
    /// `/dev/vfio/N` after a bind; the block devices after a release.
    pub nodes: Vec<String>,
    /// Uses that --force overrode.
    pub forced_over: Vec<Usage>,
    /// Notes for the operator (other devices in the IOMMU group, ...).
    pub notes: Vec<String>,
}

impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.from {
            Some(from) if from == &self.to => write!(f, "{}: already on {}", self.addr, self.to)?,
            Some(from) => write!(f, "{}: {} -> {}", self.addr, from, self.to)?,
            None => write!(f, "{}: (no driver) -> {}", self.addr, self.to)?,
        }
        if !self.nodes.is_empty() {
            write!(f, " ({})", self.nodes.join(", "))?;
        }
        for u in &self.forced_over {
            write!(f, "\n  forced despite: {u}")?;
        }
        for n in &self.notes {
            write!(f, "\n  note: {n}")?;
        }
        Ok(())
    }
}

/// Makes sure a PCI driver is registered, loading its module if needed.
fn ensure_driver(
    sys: &System,
    driver: &'static str,
    module: &'static str,
) -> Result<(), SetupError> {
    let dir = sys.path("/sys/bus/pci/drivers").join(driver);
    if dir.exists() {
        return Ok(());
    }
    let why = match Command::new("modprobe").arg(module).output() {
        Ok(o) if o.status.success() => {
            if dir.exists() {
                return Ok(());
            }
            "the module loaded but the driver did not register".to_string()
        }
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run modprobe: {e}"),
    };
    Err(SetupError::DriverMissing {
        driver,
        module,
        why,
    })
}

fn wait_until(
    addr: &str,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), SetupError> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return Err(SetupError::Timeout {
                addr: addr.into(),
                what: what.into(),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn unbind(sys: &System, c: &PciController) -> Result<(), SetupError> {
    if let Some(d) = &c.driver {
        let p = sys.pci_device(&c.addr).join("driver/unbind");
        write(&p, &c.addr)?;
        let addr = c.addr.clone();
        wait_until(
            &c.addr,
            &format!("unbinding from {d}"),
            Duration::from_secs(20),
            || sys.driver(&addr).is_none(),
        )?;
    }
    Ok(())
}

/// Checks that `c` can be taken from the kernel: the reasons it cannot, empty when it can.
pub fn bind_blockers(sys: &System, c: &PciController) -> Vec<Usage> {
    if c.driver.as_deref() == Some("vfio-pci") {
        return Vec::new();
    }
    sys.usage(c)
}

/// Binds the controller at `addr` to vfio-pci. Refuses when one of its namespaces is in use, unless `force`.
pub fn bind_vfio(sys: &System, addr: &str, force: bool) -> Result<Moved, SetupError> {
    let c = sys.controller(addr)?;
    let from = c.driver.clone();
    let group = c
        .iommu_group
        .clone()
        .ok_or_else(|| SetupError::NoIommuGroup { addr: addr.into() })?;
    let node = format!("/dev/vfio/{group}");
    let mut notes = Vec::new();
    for (other, drv) in sys.iommu_group_devices(&group) {
        if other != addr && !matches!(drv.as_deref(), None | Some("vfio-pci") | Some("pcieport")) {
            notes.push(format!(
                "{other} shares IOMMU group {group} and is bound to {}; the group is not viable until it is bound to vfio-pci or unbound",
                drv.unwrap_or_default()
            ));
        }
    }
    if from.as_deref() == Some("vfio-pci") {
        return Ok(Moved {
            addr: addr.into(),
            from,
            to: "vfio-pci".into(),
            nodes: vec![node],
            forced_over: Vec::new(),
            notes,
        });
    }
    let uses = bind_blockers(sys, &c);
    if !uses.is_empty() && !force {
        return Err(SetupError::InUse {
            addr: addr.into(),
            uses,
        });
    }
    ensure_driver(sys, "vfio-pci", "vfio-pci")?;
    unbind(sys, &c)?;
    let dev = sys.pci_device(addr);
    write(&dev.join("driver_override"), "vfio-pci")?;
    write(&sys.path("/sys/bus/pci/drivers_probe"), addr)?;
    wait_until(addr, "binding to vfio-pci", Duration::from_secs(10), || {
        sys.driver(addr).is_some()
    })?;
    match sys.driver(addr) {
        Some(d) if d == "vfio-pci" => {}
        Some(d) => {
            return Err(SetupError::WrongDriver {
                addr: addr.into(),
                driver: d,
                wanted: "vfio-pci",
            })
        }
        None => no_driver_bound(addr)?,
    }
    let devnode = sys.path(&node);
    wait_until(
        addr,
        &format!("{node} appearing"),
        Duration::from_secs(10),
        || devnode.exists(),
    )?;
    Ok(Moved {
        addr: addr.into(),
        from,
        to: "vfio-pci".into(),
        nodes: vec![node],
        forced_over: uses,
        notes,
    })
}

fn no_driver_bound(addr: &str) -> Result<(), SetupError> {
    Err(SetupError::Timeout {
        addr: addr.into(),
        what: "binding a driver".into(),
        secs: 10,
    })
}

/// Gives the controller at `addr` back to the kernel's nvme driver. Refuses while a process has its VFIO
/// group open (a userspace driver is using it), unless `force`.
pub fn release(sys: &System, addr: &str, force: bool) -> Result<Moved, SetupError> {
    let c = sys.controller(addr)?;
    let from = c.driver.clone();
    if from.as_deref() == Some("nvme") {
        return Ok(Moved {
            addr: addr.into(),
            from,
            to: "nvme".into(),
            nodes: c
                .namespaces
                .iter()
                .map(|n| format!("/dev/{}", n.name))
                .collect(),
            forced_over: Vec::new(),
            notes: Vec::new(),
        });
    }
    if let (Some("vfio-pci"), Some(group)) = (from.as_deref(), &c.iommu_group) {
        let users = sys.vfio_users(group);
        if !users.is_empty() && !force {
            return Err(SetupError::VfioInUse {
                addr: addr.into(),
                group: group.clone(),
                users,
            });
        }
    }
    ensure_driver(sys, "nvme", "nvme")?;
    unbind(sys, &c)?;
    let dev = sys.pci_device(addr);
    // An empty line clears driver_override.
    write(&dev.join("driver_override"), "\n")?;
    write(&sys.path("/sys/bus/pci/drivers_probe"), addr)?;
    wait_until(addr, "binding to nvme", Duration::from_secs(20), || {
        sys.driver(addr).is_some()
    })?;
    match sys.driver(addr) {
        Some(d) if d == "nvme" => {}
        Some(d) => {
            return Err(SetupError::WrongDriver {
                addr: addr.into(),
                driver: d,
                wanted: "nvme",
            })
        }
        None => no_driver_bound(addr)?,
    }
    // The nvme driver probes asynchronously and scans namespaces one by one: wait until the controller is
    // live and its set of block devices has not changed for a second.
    let mut nodes: Vec<String> = Vec::new();
    let mut since = Instant::now();
    wait_until(
        addr,
        "the namespaces' block devices appearing",
        Duration::from_secs(30),
        || {
            let Ok(c) = sys.controller(addr) else {
                return false;
            };
            let live = c.kernel_name.as_ref().is_some_and(|k| {
                std::fs::read_to_string(sys.path("/sys/class/nvme").join(k).join("state"))
                    .map(|s| s.trim() == "live")
                    .unwrap_or(true)
            });
            let now: Vec<String> = c
                .namespaces
                .iter()
                .map(|n| format!("/dev/{}", n.name))
                .collect();
            if now != nodes {
                nodes = now;
                since = Instant::now();
            }
            live && !nodes.is_empty()
                && nodes.iter().all(|n| sys.path(n).exists())
                && since.elapsed() >= Duration::from_secs(1)
        },
    )?;
    Ok(Moved {
        addr: addr.into(),
        from,
        to: "nvme".into(),
        nodes,
        forced_over: Vec::new(),
        notes: Vec::new(),
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::fake::Tree;

    const A: &str = "0000:00:10.0";
    const B: &str = "0000:00:11.0";

    fn tree() -> Tree {
        let t = Tree::new("setup");
        t.controller(A, Some("nvme"), "3")
            .namespace(A, "nvme0", "nvme0n1", "nvme0n1", 1, "259:0")
            .controller(B, Some("vfio-pci"), "4")
            .file(
                "/proc/self/mountinfo",
                "22 1 0:21 / /proc rw - proc proc rw\n",
            )
            .file("/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n");
        t
    }

    #[test]
    fn bind_refuses_an_open_namespace_and_explains_the_override() {
        let t = tree();
        t.file("/proc/4242/comm", "sleep\n")
            .link("/proc/4242/fd/0", "/dev/nvme0n1")
            .file(
                "/proc/self/mountinfo",
                "40 1 259:0 / /mnt rw - ext4 /dev/nvme0n1 rw\n",
            );
        let sys = System::at(&t.root);
        let e = bind_vfio(&sys, A, false).expect_err("must refuse");
        let msg = e.to_string();
        for want in [
            A,
            "/dev/nvme0n1 is mounted on /mnt",
            "umount /mnt",
            "process 4242 (sleep)",
            "--force",
        ] {
            assert!(msg.contains(want), "{want:?} missing in: {msg}");
        }
        // Nothing was written: the controller is still on nvme, no override.
        let c = sys.controller(A).expect("controller");
        assert_eq!(c.driver.as_deref(), Some("nvme"));
        assert_eq!(c.driver_override, None);
    }

    #[test]
    fn bind_of_a_bound_controller_is_a_no_op_and_group_neighbours_are_noted() {
        let t = tree();
        // A second function in B's group, still on a kernel driver.
        t.dir("/sys/bus/pci/drivers/ahci")
            .dir("/sys/bus/pci/devices/0000:00:11.1")
            .link(
                "/sys/bus/pci/devices/0000:00:11.1/driver",
                t.p("/sys/bus/pci/drivers/ahci"),
            )
            .link(
                "/sys/kernel/iommu_groups/4/devices/0000:00:11.1",
                t.p("/sys/bus/pci/devices/0000:00:11.1"),
            );
        let m = bind_vfio(&System::at(&t.root), B, false).expect("no-op");
        assert_eq!(m.from.as_deref(), Some("vfio-pci"));
        assert_eq!(m.nodes, ["/dev/vfio/4"]);
        assert!(m.to_string().contains("already on vfio-pci"), "{m}");
        assert_eq!(m.notes.len(), 1, "{:?}", m.notes);
        assert!(
            m.notes[0].contains("0000:00:11.1") && m.notes[0].contains("ahci"),
            "{:?}",
            m.notes
        );
    }

    #[test]
    fn bind_without_iommu_group_names_the_fix() {
        let t = tree();
        std::fs::remove_file(t.p(&format!("/sys/bus/pci/devices/{A}/iommu_group"))).expect("rm");
        let e = bind_vfio(&System::at(&t.root), A, true).expect_err("no group");
        assert!(matches!(e, SetupError::NoIommuGroup { .. }), "{e}");
        assert!(e.to_string().contains("intel_iommu=on"), "{e}");
    }

    #[test]
    fn release_refuses_while_the_vfio_group_is_open() {
        let t = tree();
        t.file("/proc/900/comm", "nvkv-bench\n")
            .link("/proc/900/fd/7", "/dev/vfio/4");
        let e = release(&System::at(&t.root), B, false).expect_err("in use");
        let msg = e.to_string();
        assert!(
            msg.contains("/dev/vfio/4")
                && msg.contains("pid 900 (nvkv-bench)")
                && msg.contains("--force"),
            "{msg}"
        );
        // Already on nvme: nothing to do, the block devices are named.
        let m = release(&System::at(&t.root), A, false).expect("no-op");
        assert_eq!(m.nodes, ["/dev/nvme0n1"]);
    }

    #[test]
    fn parses_credentials_limits_and_meminfo() {
        let st = "Name:\tx\nUid:\t1000\t1001\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t27 44 \nCapEff:\t0000000000004000\n";
        let c = parse_status(st);
        assert_eq!(
            c,
            Credentials {
                uid: 1001,
                gids: vec![100, 27, 44],
                cap_ipc_lock: true
            }
        );
        assert!(can_read_write(&c, 0, 44, 0o660));
        assert!(!can_read_write(&c, 0, 0, 0o600));
        assert!(can_read_write(&c, 1001, 0, 0o600));
        assert!(can_read_write(&c, 0, 0, 0o666));
        let root = parse_status("Uid:\t0\t0\t0\t0\nCapEff:\t0\n");
        assert!(can_read_write(&root, 5, 5, 0));
        assert!(!root.cap_ipc_lock);

        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max locked memory         8388608              16777216             bytes     \n";
        assert_eq!(parse_memlock(limits), Some(Some(8 << 20)));
        assert_eq!(
            parse_memlock(
                "Max locked memory         unlimited            unlimited            bytes\n"
            ),
            Some(None)
        );
        assert_eq!(parse_memlock("nothing\n"), None);
        let mi = "MemTotal:  1000 kB\nHugePages_Total:      16\nHugePages_Free:       12\nHugepagesize:       2048 kB\n";
        assert_eq!(meminfo(mi, "HugePages_Total"), Some(16));
        assert_eq!(meminfo(mi, "HugePages_Free"), Some(12));
        assert_eq!(meminfo(mi, "Hugepagesize"), Some(2048));
        assert_eq!(meminfo(mi, "HugePages_Rsvd"), None);
    }

    #[test]
    fn check_fails_without_iommu_and_with_a_small_memlock() {
        let t = tree();
        t.file(
            "/proc/self/status",
            "Uid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nCapEff:\t0\n",
        )
        .file(
            "/proc/self/limits",
            "Max locked memory         65536                65536                bytes\n",
        )
        .file(
            "/proc/meminfo",
            "HugePages_Total:       0\nHugePages_Free:        0\nHugepagesize:       2048 kB\n",
        )
        .file("/proc/cmdline", "console=ttyS0 quiet\n");
        // The fake tree has groups 3 and 4 but no IOMMU units; remove the groups to make the check fail.
        std::fs::remove_dir_all(t.p("/sys/kernel/iommu_groups")).expect("rm");
        let checks = check_system(&System::at(&t.root), 256 << 20);
        let get = |name: &str| {
            checks
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("{name} missing: {checks:?}"))
        };
        let iommu = get("iommu");
        assert_eq!(iommu.status, Status::Fail);
        assert!(iommu.detail.contains("console=ttyS0"), "{iommu}");
        assert!(
            iommu
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("intel_iommu=on")),
            "{iommu}"
        );
        let mem = get("memlock");
        assert_eq!(mem.status, Status::Fail, "{mem}");
        assert!(
            mem.detail.contains("64 KiB") && mem.detail.contains("256 MiB"),
            "{mem}"
        );
        assert!(
            mem.fix.as_deref().is_some_and(|f| f.contains("ulimit -l")),
            "{mem}"
        );
        assert_eq!(get("vfio").status, Status::Fail);
        assert_eq!(get("hugepages").status, Status::Warn);
        // /dev/vfio/vfio does not exist in the fake tree.
        assert_eq!(get("/dev/vfio").status, Status::Fail);
    }

    #[test]
    fn check_passes_on_a_prepared_system() {
        let t = tree();
        t.file(
            "/proc/self/status",
            "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n",
        )
        .file(
            "/proc/self/limits",
            "Max locked memory         unlimited            unlimited            bytes\n",
        )
        .file(
            "/proc/meminfo",
            "HugePages_Total:      64\nHugePages_Free:       64\nHugepagesize:       2048 kB\n",
        )
        .file(
            "/proc/self/mountinfo",
            "50 1 0:40 / /dev/hugepages rw - hugetlbfs nodev rw,pagesize=2M\n",
        )
        .dir("/sys/class/iommu/dmar0")
        .dir("/sys/module/vfio")
        .dir("/sys/module/vfio_iommu_type1")
        .file("/dev/vfio/vfio", "")
        .file("/dev/vfio/4", "");
        let checks = check_system(&System::at(&t.root), 256 << 20);
        let bad: Vec<_> = checks.iter().filter(|c| c.status != Status::Ok).collect();
        assert!(bad.is_empty(), "{bad:?}");
        // Both controllers' groups and the group node of the vfio-bound one were looked at.
        assert_eq!(checks.iter().filter(|c| c.name == "nvme").count(), 2);
        assert!(
            checks.iter().any(|c| c.detail.contains("/dev/vfio/4")),
            "{checks:?}"
        );
    }

    #[test]
    fn grant_gives_the_node_to_a_user_and_group_and_writes_the_udev_rule() {
        use std::os::unix::fs::PermissionsExt;
        let t = tree();
        t.file(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnvkvuser:x:1000:1000::/tmp:/bin/sh\n",
        )
        .file("/etc/group", "root:x:0:\nnvkv:x:1001:nvkvuser\n")
        .file("/dev/vfio/4", "");
        let sys = System::at(&t.root);
        let e = grant(&sys, "4", Some("nobody"), None).expect_err("no such user");
        assert!(e.to_string().contains("adduser nobody"), "{e}");
        let e = grant(&sys, "4", None, Some("nogroup")).expect_err("no such group");
        assert!(e.to_string().contains("addgroup nogroup"), "{e}");
        let may_chown =
            parse_status(&std::fs::read_to_string("/proc/self/status").unwrap_or_default()).uid
                == 0;
        if !may_chown {
            return; // chown to another user needs root; the rest is covered in the VM.
        }
        let g = grant(&sys, "4", Some("nvkvuser"), Some("nvkv")).expect("grant");
        let m = std::fs::metadata(t.p("/dev/vfio/4")).expect("stat");
        assert_eq!(
            (m.uid(), m.gid(), m.permissions().mode() & 0o777),
            (1000, 1001, 0o660)
        );
        assert_eq!(
            g.udev_rule(),
            r#"SUBSYSTEM=="vfio", KERNEL=="4", OWNER="nvkvuser", GROUP="nvkv", MODE="0660""#
        );
        assert!(
            g.to_string().contains("owner nvkvuser:nvkv, mode 0660"),
            "{g}"
        );
        install_udev_rule(&sys, &g).expect("rule");
        install_udev_rule(&sys, &g).expect("rule again");
        let rules = std::fs::read_to_string(t.p(UDEV_RULES)).expect("rules");
        assert_eq!(rules.matches("KERNEL==\"4\"").count(), 1, "{rules}");
        // A user alone: 0600, root's group kept.
        let g = grant(&sys, "4", Some("nvkvuser"), None).expect("grant");
        assert_eq!(g.mode, 0o600);
    }

    #[test]
    fn memlock_budget_adds_queues_and_buffers() {
        let one = memlock_budget(1);
        let two = memlock_budget(2);
        assert!(one.bytes >= 2 << 20 && one.bytes <= 8 << 20, "{one:?}");
        assert!(two.bytes > one.bytes, "{two:?}");
        assert_eq!(one.bytes % (1 << 20), 0);
        let how = one.how_to_set("nvkvuser").join("\n");
        for want in [
            "ulimit -l",
            "limits.d/nvkv.conf: `nvkvuser - memlock",
            "LimitMEMLOCK=",
        ] {
            assert!(how.contains(want), "{want:?} missing: {how}");
        }
    }

    #[test]
    fn hugepages_writes_the_count_and_keeps_an_existing_mount() {
        let t = tree();
        t.file(
            "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
            "0\n",
        )
        .file(
            "/proc/self/mountinfo",
            "50 1 0:40 / /dev/hugepages rw - hugetlbfs nodev rw\n",
        );
        let h = hugepages(&System::at(&t.root), 32).expect("hugepages");
        assert_eq!((h.requested, h.granted, h.mounted_now), (32, 32, false));
        let v =
            std::fs::read_to_string(t.p("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"))
                .expect("read");
        assert_eq!(v, "32");
    }
}
