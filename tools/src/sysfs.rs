//! The kernel's view of NVMe controllers, read from sysfs and procfs: PCI identity, driver, IOMMU group, the
//! namespaces' block devices, and everything that makes a block device "in use" (mounts, swap, device-mapper
//! or md holders, open file descriptors).
//!
//! Every path goes through a [`System`], whose root is `/` on a real machine and a temporary directory in the
//! unit tests (a fake sysfs/procfs tree).

use serde::Serialize;
use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// PCI class code of an NVMe controller (mass storage, non-volatile memory, NVM Express).
pub const NVME_CLASS: u32 = 0x010802;

/// Errors of reading the system's state.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("PCI device {addr} does not exist (no {path}); `nvkv-setup list` shows the NVMe controllers")]
    NoSuchDevice { addr: String, path: String },
    #[error("PCI device {addr} is not an NVMe controller (class {class:#08x}, not {NVME_CLASS:#08x}); nvkv-setup only handles NVMe controllers")]
    NotNvme { addr: String, class: u32 },
    #[error("cannot read {path}: {source}{}", hint(source))]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (run as root)"
    } else {
        ""
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SysfsError + '_ {
    move |source| SysfsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A device number (major:minor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    /// Parses sysfs's `dev` attribute and mountinfo's field 3 (`259:0`).
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.trim().split_once(':')?;
        Some(Self {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }

    /// Splits a Linux `dev_t` (as `st_rdev`) the way glibc's `major()`/`minor()` do.
    pub fn from_dev_t(d: u64) -> Self {
        Self {
            major: (((d >> 8) & 0xfff) | ((d >> 32) & !0xfff)) as u32,
            minor: ((d & 0xff) | ((d >> 12) & !0xff)) as u32,
        }
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// A partition of a namespace's block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    pub name: String,
    pub dev: Option<DevNum>,
}

/// A namespace as the kernel's nvme driver shows it: a block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockNamespace {
    /// Block device name (`nvme0n1`).
    pub name: String,
    pub nsid: Option<u32>,
    pub dev: Option<DevNum>,
    /// Size in bytes (sysfs `size` is in 512-byte sectors).
    pub size_bytes: Option<u64>,
    pub partitions: Vec<Partition>,
}

/// One NVMe controller on the PCI bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciController {
    pub addr: String,
    pub vendor: u16,
    pub device: u16,
    /// The driver bound now (`nvme`, `vfio-pci`), if any.
    pub driver: Option<String>,
    pub driver_override: Option<String>,
    pub iommu_group: Option<String>,
    pub numa_node: Option<i32>,
    /// The kernel's controller name (`nvme0`) while bound to `nvme`.
    pub kernel_name: Option<String>,
    pub namespaces: Vec<BlockNamespace>,
    /// The namespaces' generic character devices (`ng0n1`, NVMe passthrough, e.g. fio's io_uring_cmd).
    pub generic: Vec<CharDevice>,
}

/// A character device of the kernel's nvme driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CharDevice {
    pub name: String,
    pub dev: Option<DevNum>,
}

/// A process, as far as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    pub command: String,
}

/// Why a controller cannot be taken away from the kernel safely. Each says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Usage {
    Mounted {
        device: String,
        mountpoint: String,
        fstype: String,
    },
    Swap {
        device: String,
    },
    Held {
        device: String,
        holder: String,
    },
    Open {
        device: String,
        pid: u32,
        command: String,
    },
}

impl Usage {
    /// A short form for tables: `mounted on /data`.
    pub fn short(&self) -> String {
        match self {
            Usage::Mounted {
                device, mountpoint, ..
            } => format!("{device} mounted on {mountpoint}"),
            Usage::Swap { device } => format!("{device} is swap"),
            Usage::Held { device, holder } => format!("{device} held by {holder}"),
            Usage::Open {
                device,
                pid,
                command,
            } => format!("{device} open by pid {pid} ({command})"),
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Usage::Mounted {
                device,
                mountpoint,
                fstype,
            } => write!(
                f,
                "/dev/{device} is mounted on {mountpoint} ({fstype}): unmount it first (`umount {mountpoint}`)"
            ),
            Usage::Swap { device } => write!(
                f,
                "/dev/{device} is in use as swap: turn it off first (`swapoff /dev/{device}`)"
            ),
            Usage::Held { device, holder } => {
                let what = if holder.starts_with("dm-") {
                    "device-mapper (LVM, dm-crypt, multipath): remove the mapping first (`dmsetup ls`, `dmsetup remove`, `vgchange -an`)"
                } else if holder.starts_with("md") {
                    "an md RAID array: stop it first (`mdadm --stop /dev/HOLDER`)"
                } else {
                    "another kernel device: release it first"
                };
                write!(
                    f,
                    "/dev/{device} is held by {holder}, {}",
                    what.replace("HOLDER", holder)
                )
            }
            Usage::Open {
                device,
                pid,
                command,
            } => write!(
                f,
                "/dev/{device} is open by process {pid} ({command}): stop that process or make it close the device"
            ),
        }
    }
}

/// The root of the sysfs/procfs/devfs tree the tools read and write.
#[derive(Debug, Clone)]
pub struct System {
    root: PathBuf,
}

impl Default for System {
    fn default() -> Self {
        Self::real()
    }
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().to_string()))
}

fn parse_hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// `nvme0n1` → Some, `nvme0c1n1` (a multipath path) → Some, `nvme0` / `ng0n1` / `nvme0n1p1` → None. Returns
/// the block device's name: a path's head drops the `c<ctrl>` part.
pub fn namespace_block_name(entry: &str) -> Option<String> {
    let rest = entry.strip_prefix("nvme")?;
    let digits = |s: &str| -> usize { s.bytes().take_while(u8::is_ascii_digit).count() };
    let n = digits(rest);
    if n == 0 {
        return None;
    }
    let (subsys, mut rest) = rest.split_at(n);
    if let Some(r) = rest.strip_prefix('c') {
        let m = digits(r);
        if m == 0 {
            return None;
        }
        rest = &r[m..];
    }
    let ns = rest.strip_prefix('n')?;
    if ns.is_empty() || digits(ns) != ns.len() {
        return None;
    }
    Some(format!("nvme{subsys}n{ns}"))
}

impl System {
    /// The running system.
    pub fn real() -> Self {
        Self { root: "/".into() }
    }

    /// A tree rooted somewhere else (tests).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// True for the running system: only then is this process's own pid meaningful in `/proc`.
    pub fn is_real(&self) -> bool {
        self.root == Path::new("/")
    }

    /// An absolute system path inside this tree.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    pub fn pci_device(&self, addr: &str) -> PathBuf {
        self.path("/sys/bus/pci/devices").join(addr)
    }

    /// All NVMe controllers on the PCI bus, sorted by address.
    pub fn nvme_controllers(&self) -> Result<Vec<PciController>, SysfsError> {
        let dir = self.path("/sys/bus/pci/devices");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let class = read_trim(&e.path().join("class")).and_then(|c| parse_hex(&c));
            if class == Some(NVME_CLASS) {
                out.push(self.read_controller(&e.file_name().to_string_lossy())?);
            }
        }
        out.sort_by(|a, b| a.addr.cmp(&b.addr));
        Ok(out)
    }

    /// The NVMe controller at `addr`; refuses other PCI devices.
    pub fn controller(&self, addr: &str) -> Result<PciController, SysfsError> {
        let p = self.pci_device(addr);
        if !p.exists() {
            return Err(SysfsError::NoSuchDevice {
                addr: addr.into(),
                path: p.display().to_string(),
            });
        }
        let class = read_trim(&p.join("class"))
            .and_then(|c| parse_hex(&c))
            .unwrap_or(0);
        if class != NVME_CLASS {
            return Err(SysfsError::NotNvme {
                addr: addr.into(),
                class,
            });
        }
        self.read_controller(addr)
    }

    /// The driver `addr` is bound to now.
    pub fn driver(&self, addr: &str) -> Option<String> {
        link_name(&self.pci_device(addr).join("driver"))
    }

    fn read_controller(&self, addr: &str) -> Result<PciController, SysfsError> {
        let p = self.pci_device(addr);
        let hex16 = |f: &str| {
            read_trim(&p.join(f))
                .and_then(|v| parse_hex(&v))
                .unwrap_or(0) as u16
        };
        let driver_override =
            read_trim(&p.join("driver_override")).filter(|s| !s.is_empty() && s != "(null)");
        let mut kernel_name = None;
        let mut namespaces: Vec<BlockNamespace> = Vec::new();
        let mut generic: Vec<CharDevice> = Vec::new();
        if let Ok(rd) = std::fs::read_dir(p.join("nvme")) {
            let mut ctrls: Vec<_> = rd.flatten().collect();
            ctrls.sort_by_key(|e| e.file_name());
            for c in ctrls {
                let cname = c.file_name().to_string_lossy().to_string();
                kernel_name.get_or_insert_with(|| cname.clone());
                let Ok(entries) = std::fs::read_dir(c.path()) else {
                    continue;
                };
                for e in entries.flatten() {
                    let ename = e.file_name().to_string_lossy().to_string();
                    if ename.starts_with("ng") && e.path().join("dev").exists() {
                        generic.push(CharDevice {
                            dev: read_trim(&e.path().join("dev")).and_then(|d| DevNum::parse(&d)),
                            name: ename,
                        });
                        continue;
                    }
                    let Some(block) = namespace_block_name(&ename) else {
                        continue;
                    };
                    if namespaces.iter().any(|n| n.name == block) {
                        continue;
                    }
                    let nsid = read_trim(&e.path().join("nsid")).and_then(|v| v.parse().ok());
                    namespaces.push(self.block_namespace(&block, nsid));
                }
            }
        }
        namespaces.sort_by_key(|n| (n.nsid, n.name.clone()));
        generic.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(PciController {
            addr: addr.into(),
            vendor: hex16("vendor"),
            device: hex16("device"),
            driver: self.driver(addr),
            driver_override,
            iommu_group: link_name(&p.join("iommu_group")),
            numa_node: read_trim(&p.join("numa_node")).and_then(|v| v.parse().ok()),
            kernel_name,
            namespaces,
            generic,
        })
    }

    fn block_namespace(&self, name: &str, nsid: Option<u32>) -> BlockNamespace {
        let b = self.path("/sys/class/block").join(name);
        let mut partitions = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&b) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(name) && e.path().join("partition").exists() {
                    partitions.push(Partition {
                        dev: read_trim(&e.path().join("dev")).and_then(|d| DevNum::parse(&d)),
                        name: n,
                    });
                }
            }
        }
        partitions.sort_by(|a, b| a.name.cmp(&b.name));
        BlockNamespace {
            name: name.into(),
            nsid: nsid.or_else(|| read_trim(&b.join("nsid")).and_then(|v| v.parse().ok())),
            dev: read_trim(&b.join("dev")).and_then(|d| DevNum::parse(&d)),
            size_bytes: read_trim(&b.join("size"))
                .and_then(|v| v.parse::<u64>().ok())
                .map(|s| s * 512),
            partitions,
        }
    }

    /// Everything that uses the controller's namespaces (and their partitions): mounts, swap, holders, open
    /// file descriptors. Empty when the controller may be taken away from the kernel.
    pub fn usage(&self, c: &PciController) -> Vec<Usage> {
        // (name, dev) of every block device of the controller, plus its character device.
        let mut devs: Vec<(String, Option<DevNum>)> = Vec::new();
        for ns in &c.namespaces {
            devs.push((ns.name.clone(), ns.dev));
            for p in &ns.partitions {
                devs.push((p.name.clone(), p.dev));
            }
        }
        let mut out = Vec::new();
        out.extend(self.mounts_of(&devs));
        out.extend(self.swaps_of(&devs));
        for ns in &c.namespaces {
            let base = self.path("/sys/class/block").join(&ns.name);
            out.extend(self.holders(&base, &ns.name));
            for p in &ns.partitions {
                out.extend(self.holders(&base.join(&p.name), &p.name));
            }
        }
        if let Some(k) = &c.kernel_name {
            let dev = read_trim(&self.path("/sys/class/nvme").join(k).join("dev"))
                .and_then(|d| DevNum::parse(&d));
            devs.push((k.clone(), dev));
        }
        devs.extend(c.generic.iter().map(|g| (g.name.clone(), g.dev)));
        for (device, p) in self.openers(|target, rdev| {
            devs.iter().find_map(|(n, d)| {
                let by_name = target == Path::new("/dev").join(n);
                let by_dev = rdev.is_some() && rdev == *d;
                (by_name || by_dev).then(|| n.clone())
            })
        }) {
            out.push(Usage::Open {
                device,
                pid: p.pid,
                command: p.command,
            });
        }
        out
    }

    fn holders(&self, dir: &Path, name: &str) -> Vec<Usage> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("holders"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v.into_iter()
            .map(|holder| Usage::Held {
                device: name.into(),
                holder,
            })
            .collect()
    }

    fn mounts_of(&self, devs: &[(String, Option<DevNum>)]) -> Vec<Usage> {
        let Some(text) = read_trim(&self.path("/proc/self/mountinfo")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in parse_mountinfo(&text) {
            let hit = devs
                .iter()
                .find(|(n, d)| (d.is_some() && *d == m.dev) || m.source == format!("/dev/{n}"));
            if let Some((n, _)) = hit {
                out.push(Usage::Mounted {
                    device: n.clone(),
                    mountpoint: m.mountpoint,
                    fstype: m.fstype,
                });
            }
        }
        out
    }

    fn swaps_of(&self, devs: &[(String, Option<DevNum>)]) -> Vec<Usage> {
        let Some(text) = read_trim(&self.path("/proc/swaps")) else {
            return Vec::new();
        };
        text.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|f| {
                let name = f.strip_prefix("/dev/")?;
                devs.iter().any(|(n, _)| n == name).then(|| Usage::Swap {
                    device: name.into(),
                })
            })
            .collect()
    }

    /// Processes with an open file descriptor that `matches` (given the fd's link target and, for device
    /// nodes, their device number); returns each distinct match with its process. This process is left out.
    pub fn openers<T: PartialEq>(
        &self,
        matches: impl Fn(&Path, Option<DevNum>) -> Option<T>,
    ) -> Vec<(T, Process)> {
        let own = std::process::id();
        let proc = self.path("/proc");
        let Ok(rd) = std::fs::read_dir(&proc) else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
            .collect();
        pids.sort_unstable();
        let mut out = Vec::new();
        for pid in pids {
            if self.is_real() && pid == own {
                continue;
            }
            let dir = proc.join(pid.to_string());
            let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
                continue; // gone, or not ours to look at
            };
            let mut found: Vec<T> = Vec::new();
            for fd in fds.flatten() {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let rdev = std::fs::metadata(fd.path())
                    .ok()
                    .filter(|m| m.file_type().is_block_device() || m.file_type().is_char_device())
                    .map(|m| DevNum::from_dev_t(m.rdev()));
                if let Some(t) = matches(&target, rdev) {
                    if !found.contains(&t) {
                        found.push(t);
                    }
                }
            }
            if !found.is_empty() {
                let command = read_trim(&dir.join("comm")).unwrap_or_else(|| "?".into());
                out.extend(found.into_iter().map(|t| {
                    (
                        t,
                        Process {
                            pid,
                            command: command.clone(),
                        },
                    )
                }));
            }
        }
        out
    }

    /// Processes that have `/dev/vfio/<group>` open (a userspace driver using the device).
    pub fn vfio_users(&self, group: &str) -> Vec<Process> {
        let node = Path::new("/dev/vfio").join(group);
        self.openers(|target, _| (target == node).then_some(()))
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    /// The devices of an IOMMU group with their drivers.
    pub fn iommu_group_devices(&self, group: &str) -> Vec<(String, Option<String>)> {
        let dir = self
            .path("/sys/kernel/iommu_groups")
            .join(group)
            .join("devices");
        let mut v: Vec<(String, Option<String>)> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let a = e.file_name().to_string_lossy().to_string();
                        let d = self.driver(&a);
                        (a, d)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Mounts of this system.
    pub fn mounts(&self) -> Vec<Mount> {
        read_trim(&self.path("/proc/self/mountinfo"))
            .map(|t| parse_mountinfo(&t))
            .unwrap_or_default()
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub dev: Option<DevNum>,
    pub mountpoint: String,
    pub fstype: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && s.is_char_boundary(i + 4) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/<pid>/mountinfo`: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split_whitespace().collect();
            let r: Vec<&str> = right.split_whitespace().collect();
            Some(Mount {
                dev: DevNum::parse(f.get(2)?),
                mountpoint: unescape_octal(f.get(4)?),
                fstype: r.first()?.to_string(),
                source: unescape_octal(r.get(1).unwrap_or(&"")),
            })
        })
        .collect()
}

/// A fake sysfs/procfs tree in a temporary directory, for the unit tests of this crate.
#[cfg(test)]
pub(crate) mod fake {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    pub struct Tree {
        pub root: PathBuf,
    }

    impl Tree {
        pub fn new(tag: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let root = std::env::temp_dir().join(format!(
                "nvkv-tools-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).expect("create the fake tree");
            Self { root }
        }

        pub fn p(&self, abs: &str) -> PathBuf {
            self.root.join(abs.trim_start_matches('/'))
        }

        pub fn file(&self, abs: &str, text: &str) -> &Self {
            let p = self.p(abs);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, text).expect("write");
            self
        }

        pub fn dir(&self, abs: &str) -> &Self {
            std::fs::create_dir_all(self.p(abs)).expect("mkdir");
            self
        }

        /// A symlink at `abs` pointing to `target` (taken literally, as in /proc/PID/fd).
        pub fn link(&self, abs: &str, target: impl AsRef<Path>) -> &Self {
            let p = self.p(abs);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::os::unix::fs::symlink(target, &p).expect("symlink");
            self
        }

        /// A PCI NVMe controller, optionally bound to `driver`, in IOMMU group `group`.
        pub fn controller(&self, addr: &str, driver: Option<&str>, group: &str) -> &Self {
            let d = format!("/sys/bus/pci/devices/{addr}");
            self.file(&format!("{d}/class"), "0x010802\n")
                .file(&format!("{d}/vendor"), "0x1b36\n")
                .file(&format!("{d}/device"), "0x0010\n")
                .file(&format!("{d}/numa_node"), "-1\n")
                .file(&format!("{d}/driver_override"), "(null)\n")
                .dir(&format!("/sys/kernel/iommu_groups/{group}/devices"))
                .link(
                    &format!("{d}/iommu_group"),
                    self.p(&format!("/sys/kernel/iommu_groups/{group}")),
                )
                .link(
                    &format!("/sys/kernel/iommu_groups/{group}/devices/{addr}"),
                    self.p(&d),
                );
            if let Some(drv) = driver {
                self.dir(&format!("/sys/bus/pci/drivers/{drv}")).link(
                    &format!("{d}/driver"),
                    self.p(&format!("/sys/bus/pci/drivers/{drv}")),
                );
            }
            self
        }

        /// A namespace block device `name` (entry `entry` under controller `ctrl` of `addr`).
        pub fn namespace(
            &self,
            addr: &str,
            ctrl: &str,
            entry: &str,
            name: &str,
            nsid: u32,
            dev: &str,
        ) -> &Self {
            self.file(
                &format!("/sys/bus/pci/devices/{addr}/nvme/{ctrl}/{entry}/nsid"),
                &format!("{nsid}\n"),
            )
            .file(&format!("/sys/class/block/{name}/dev"), &format!("{dev}\n"))
            .file(&format!("/sys/class/block/{name}/size"), "131072\n")
            .dir(&format!("/sys/class/block/{name}/holders"))
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Tree;
    use super::*;

    const A: &str = "0000:00:10.0";
    const B: &str = "0000:00:11.0";

    fn two_controllers() -> Tree {
        let t = Tree::new("sysfs");
        t.controller(A, Some("nvme"), "3")
            .namespace(A, "nvme0", "nvme0n1", "nvme0n1", 1, "259:0")
            .namespace(A, "nvme0", "nvme0n2", "nvme0n2", 2, "259:1")
            .file("/sys/class/nvme/nvme0/dev", "241:0\n")
            .controller(B, Some("vfio-pci"), "4")
            // Not NVMe: must not be listed.
            .file("/sys/bus/pci/devices/0000:00:01.0/class", "0x030000\n")
            .file(
                "/proc/self/mountinfo",
                "22 1 0:21 / /proc rw - proc proc rw\n",
            )
            .file("/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n");
        t
    }

    #[test]
    fn lists_nvme_controllers_with_driver_group_and_namespaces() {
        let t = two_controllers();
        let sys = System::at(&t.root);
        let cs = sys.nvme_controllers().expect("list");
        assert_eq!(cs.len(), 2, "{cs:?}");
        let a = &cs[0];
        assert_eq!(a.addr, A);
        assert_eq!((a.vendor, a.device), (0x1b36, 0x0010));
        assert_eq!(a.driver.as_deref(), Some("nvme"));
        assert_eq!(a.driver_override, None);
        assert_eq!(a.iommu_group.as_deref(), Some("3"));
        assert_eq!(a.numa_node, Some(-1));
        assert_eq!(a.kernel_name.as_deref(), Some("nvme0"));
        let names: Vec<_> = a
            .namespaces
            .iter()
            .map(|n| (n.name.as_str(), n.nsid))
            .collect();
        assert_eq!(names, [("nvme0n1", Some(1)), ("nvme0n2", Some(2))]);
        assert_eq!(
            a.namespaces[0].dev,
            Some(DevNum {
                major: 259,
                minor: 0
            })
        );
        assert_eq!(a.namespaces[0].size_bytes, Some(64 << 20));
        assert_eq!(cs[1].driver.as_deref(), Some("vfio-pci"));
        assert!(cs[1].namespaces.is_empty());
        assert!(sys.usage(a).is_empty(), "{:?}", sys.usage(a));
    }

    #[test]
    fn refuses_unknown_and_non_nvme_devices_by_name() {
        let t = two_controllers();
        let sys = System::at(&t.root);
        let e = sys.controller("0000:00:1f.0").expect_err("missing");
        assert!(
            e.to_string().contains("0000:00:1f.0") && e.to_string().contains("nvkv-setup list"),
            "{e}"
        );
        let e = sys.controller("0000:00:01.0").expect_err("not nvme");
        assert!(
            matches!(
                e,
                SysfsError::NotNvme {
                    class: 0x030000,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn multipath_path_entries_map_to_the_head_device() {
        assert_eq!(namespace_block_name("nvme0n1").as_deref(), Some("nvme0n1"));
        assert_eq!(
            namespace_block_name("nvme1c3n12").as_deref(),
            Some("nvme1n12")
        );
        for bad in [
            "nvme0",
            "ng0n1",
            "nvme0n1p1",
            "nvmen1",
            "nvme0c0",
            "nvme0cxn1",
            "subsysnqn",
        ] {
            assert_eq!(namespace_block_name(bad), None, "{bad}");
        }
        let t = Tree::new("mpath");
        t.controller(A, Some("nvme"), "1").namespace(
            A,
            "nvme0",
            "nvme0c0n1",
            "nvme0n1",
            1,
            "259:3",
        );
        let c = System::at(&t.root).controller(A).expect("controller");
        assert_eq!(c.namespaces.len(), 1);
        assert_eq!(c.namespaces[0].name, "nvme0n1");
    }

    #[test]
    fn detects_mounts_by_devnum_and_source_with_escapes() {
        let t = two_controllers();
        t.dir("/sys/class/block/nvme0n2/nvme0n2p1")
            .file("/sys/class/block/nvme0n2/nvme0n2p1/partition", "1\n")
            .file("/sys/class/block/nvme0n2/nvme0n2p1/dev", "259:7\n")
            .file(
                "/proc/self/mountinfo",
                "22 1 0:21 / /proc rw - proc proc rw\n\
                 40 1 259:0 / /data\\040dir rw,relatime shared:1 - ext4 /dev/nvme0n1 rw\n\
                 41 1 0:55 / /btr rw - btrfs /dev/nvme0n2p1 rw\n",
            );
        let sys = System::at(&t.root);
        let c = sys.controller(A).expect("controller");
        assert_eq!(c.namespaces[1].partitions.len(), 1);
        let u = sys.usage(&c);
        assert_eq!(
            u,
            vec![
                Usage::Mounted {
                    device: "nvme0n1".into(),
                    mountpoint: "/data dir".into(),
                    fstype: "ext4".into()
                },
                Usage::Mounted {
                    device: "nvme0n2p1".into(),
                    mountpoint: "/btr".into(),
                    fstype: "btrfs".into()
                },
            ]
        );
        let text = u[0].to_string();
        assert!(text.contains("umount /data dir"), "{text}");
    }

    #[test]
    fn detects_swap_holders_and_open_descriptors() {
        let t = two_controllers();
        t.file(
            "/proc/swaps",
            "Filename\t\t\t\tType\t\tSize\tUsed\tPriority\n/dev/nvme0n2 partition 1048572 0 -2\n",
        )
        .dir("/sys/class/block/nvme0n1/holders/dm-0")
        .file("/proc/4242/comm", "sleep\n")
        .link("/proc/4242/fd/0", "/dev/nvme0n1")
        .link("/proc/4242/fd/1", "/dev/null")
        .file("/proc/77/comm", "smartd\n")
        .link("/proc/77/fd/5", "/dev/nvme0")
        .file(
            "/sys/bus/pci/devices/0000:00:10.0/nvme/nvme0/ng0n1/dev",
            "240:0\n",
        )
        .link("/proc/4242/fd/3", "/dev/ng0n1")
        .link("/proc/4242/fd/4", "/dev/nvme0n1")
        .file("/proc/78/comm", "bash\n")
        .link("/proc/78/fd/0", "/dev/pts/0");
        let sys = System::at(&t.root);
        let c = sys.controller(A).expect("controller");
        let u = sys.usage(&c);
        assert!(
            u.contains(&Usage::Swap {
                device: "nvme0n2".into()
            }),
            "{u:?}"
        );
        assert!(
            u.contains(&Usage::Held {
                device: "nvme0n1".into(),
                holder: "dm-0".into()
            }),
            "{u:?}"
        );
        assert!(
            u.contains(&Usage::Open {
                device: "nvme0n1".into(),
                pid: 4242,
                command: "sleep".into()
            }),
            "{u:?}"
        );
        assert!(
            u.contains(&Usage::Open {
                device: "nvme0".into(),
                pid: 77,
                command: "smartd".into()
            }),
            "{u:?}"
        );
        assert!(
            u.contains(&Usage::Open {
                device: "ng0n1".into(),
                pid: 4242,
                command: "sleep".into()
            }),
            "{u:?}"
        );
        assert_eq!(c.generic.len(), 1, "{:?}", c.generic);
        // One entry per device and process, however many descriptors point at it.
        assert_eq!(u.len(), 5, "{u:?}");
        let held = u
            .iter()
            .find(|x| matches!(x, Usage::Held { .. }))
            .expect("held")
            .to_string();
        assert!(
            held.contains("device-mapper") && held.contains("dmsetup"),
            "{held}"
        );
        assert!(
            u[0].to_string().contains("swapoff /dev/nvme0n2"),
            "{}",
            u[0]
        );
    }

    #[test]
    fn finds_vfio_group_users() {
        let t = two_controllers();
        t.file("/proc/900/comm", "nvkv-bench\n")
            .link("/proc/900/fd/7", "/dev/vfio/4");
        let sys = System::at(&t.root);
        assert_eq!(
            sys.vfio_users("4"),
            vec![Process {
                pid: 900,
                command: "nvkv-bench".into()
            }]
        );
        assert!(sys.vfio_users("3").is_empty());
    }

    #[test]
    fn dev_t_split_matches_glibc() {
        // makedev(259, 0) and a large minor: makedev(8, 300).
        assert_eq!(
            DevNum::from_dev_t(0x10300),
            DevNum {
                major: 259,
                minor: 0
            }
        );
        let d = (8u64 << 8) | (300 & 0xff) | ((300u64 & !0xff) << 12);
        assert_eq!(
            DevNum::from_dev_t(d),
            DevNum {
                major: 8,
                minor: 300
            }
        );
        assert_eq!(
            DevNum::parse("259:12\n"),
            Some(DevNum {
                major: 259,
                minor: 12
            })
        );
        assert_eq!(DevNum::parse("x:1"), None);
    }
}
