//! What `nvkv-setup` does: move controllers between the kernel's `nvme` driver and `vfio-pci`, reserve
//! hugepages, and check the system for what the userspace driver needs. SPDK's `scripts/setup.sh` is the model.
//!
//! One module per operation: `binding` (bind and release), `grant` (a user's access and its memlock
//! figure), `hugepages`, `check` (what the system lacks).

mod binding;
mod check;
mod grant;
mod hugepages;

pub use binding::*;
pub use check::*;
pub use grant::*;
pub use hugepages::*;

use crate::sysfs::{Process, SysfsError, Usage};
use std::path::Path;

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

pub(crate) fn list(uses: &[Usage]) -> String {
    uses.iter()
        .map(|u| format!("  - {u}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn procs(p: &[Process]) -> String {
    p.iter()
        .map(|p| format!("pid {} ({})", p.pid, p.command))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn write_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => " (run as root)",
        _ => "",
    }
}

pub(crate) fn write(path: &Path, value: &str) -> Result<(), SetupError> {
    std::fs::write(path, value).map_err(|source| SetupError::Write {
        path: path.display().to_string(),
        value: value.trim_end().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::fake::Tree;
    use crate::sysfs::System;
    use std::os::unix::fs::MetadataExt;

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
