//! The host side: the Debian packages the VM needs, and the guest kernel with its modules.

use crate::{io_err, Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the VM harness and the in-guest baselines need, with the file that proves each installed.
pub const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("linux-image-amd64", "/boot"),
    ("busybox-static", "/bin/busybox"),
    ("fio", "/usr/bin/fio"),
    ("nvme-cli", "/usr/sbin/nvme"),
    ("cpio", "/usr/bin/cpio"),
    // The key-value peer of the bench (db_bench) and the ext4 it runs on in the guest.
    ("rocksdb-tools", "/usr/bin/db_bench"),
    ("e2fsprogs", "/usr/sbin/mke2fs"),
    // The C API's tests compile C programs against libnvkv with cc and pkg-config.
    ("gcc", "/usr/bin/gcc"),
    ("pkg-config", "/usr/bin/pkg-config"),
    // libFuzzer, which the fuzz targets (fuzz/run.sh, run by CI) build from its C++ source.
    ("g++", "/usr/bin/g++"),
    // The benchmark's report page is opened and screenshotted in a headless browser by a test
    // (bench/tests/report_page.rs); its libfontconfig1 brings a font (fonts-dejavu-core).
    ("chromium", "/usr/bin/chromium"),
];

/// VFIO modules, in load order (from `../shared/QEMU.md`).
pub const VFIO_MODULES: &[&str] = &[
    "irqbypass",
    "vfio",
    "vfio_iommu_type1",
    "vfio_virqfd",
    "vfio-pci-core",
    "vfio-pci",
];

/// The kernel NVMe driver's modules, in load order; `nvme` comes last and gets its parameters.
pub const NVME_MODULES: &[&str] = &[
    "crct10dif_common",
    "crc-t10dif",
    "crc64",
    "crc64-rocksoft",
    "crc64_rocksoft_generic",
    "t10-pi",
    "nvme-core",
    "nvme",
];

fn package_present(pkg: &str, proof: &str) -> bool {
    if pkg == "linux-image-amd64" {
        return find_kernel().is_ok();
    }
    Path::new(proof).exists()
}

/// Packages of [`PACKAGES`] that are missing on this host.
pub fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .filter(|(p, proof)| !package_present(p, proof))
        .map(|(p, _)| *p)
        .collect()
}

/// Installs the missing packages with apt-get (idempotent: does nothing when all are present).
/// Prints what it installs. Needs root.
pub fn setup() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        eprintln!(
            "nvkv-qemu: host set-up: all packages present ({})",
            pkg_names()
        );
        return Ok(());
    }
    eprintln!("nvkv-qemu: host set-up: installing {}", missing.join(" "));
    let is_root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let sudo: &[&str] = if is_root { &[] } else { &["sudo"] };
    let run = |args: &[&str]| -> Result<()> {
        let mut all: Vec<&str> = sudo.to_vec();
        all.extend_from_slice(args);
        let status = Command::new(all[0])
            .args(&all[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| Error::Setup(format!("cannot run {}: {e}", all.join(" "))))?;
        if !status.success() {
            return Err(Error::Setup(format!(
                "`{}` failed with {status}",
                all.join(" ")
            )));
        }
        Ok(())
    };
    run(&["apt-get", "update", "-qq"])?;
    let mut args = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    run(&args)?;
    let still = missing_packages();
    if !still.is_empty() {
        return Err(Error::Setup(format!(
            "still missing after install: {}",
            still.join(" ")
        )));
    }
    Ok(())
}

fn pkg_names() -> String {
    PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The guest kernel: `NVKV_KERNEL` if set, else the newest `/boot/vmlinuz-*` that has a module tree.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub image: PathBuf,
    pub version: String,
    pub modules: PathBuf,
}

pub fn find_kernel() -> Result<Kernel> {
    let fix =
        "run `cargo run -p nvkv-qemu -- setup` (installs Debian's linux-image-amd64)".to_string();
    if let Ok(p) = std::env::var("NVKV_KERNEL") {
        let image = PathBuf::from(&p);
        let version = image
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .ok_or_else(|| {
                Error::Config(format!(
                    "NVKV_KERNEL={p} is not a /boot/vmlinuz-VERSION path"
                ))
            })?
            .to_string();
        let modules = PathBuf::from(format!("/lib/modules/{version}/kernel"));
        return Ok(Kernel {
            image,
            version,
            modules,
        });
    }
    let mut found: Vec<Kernel> = std::fs::read_dir("/boot")
        .map_err(io_err("/boot"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            let modules = PathBuf::from(format!("/lib/modules/{version}/kernel"));
            modules.is_dir().then(|| Kernel {
                image: e.path(),
                version,
                modules,
            })
        })
        .collect();
    found.sort_by(|a, b| a.version.cmp(&b.version));
    found.pop().ok_or(Error::Missing {
        what: "a guest kernel (/boot/vmlinuz-* with /lib/modules)".into(),
        fix,
    })
}

impl Kernel {
    /// Path of module `name` (`-` and `_` are interchangeable, as for modprobe).
    pub fn module(&self, name: &str) -> Result<PathBuf> {
        let want = name.replace('-', "_");
        let mut stack = vec![self.modules.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some(stem) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                {
                    if stem.replace('-', "_") == want {
                        return Ok(p);
                    }
                }
            }
        }
        Err(Error::Missing {
            what: format!("kernel module {name}.ko under {}", self.modules.display()),
            fix: "install the matching linux-image package".into(),
        })
    }
}

/// The QEMU binary, or a clear error naming the fix.
pub fn qemu_binary() -> Result<PathBuf> {
    let p = std::env::var("NVKV_QEMU").unwrap_or_else(|_| "/usr/bin/qemu-system-x86_64".into());
    let p = PathBuf::from(p);
    if p.exists() {
        Ok(p)
    } else {
        Err(Error::Missing {
            what: format!("QEMU ({})", p.display()),
            fix: "run `cargo run -p nvkv-qemu -- setup` (installs Debian's qemu-system-x86)".into(),
        })
    }
}

/// Shared libraries `ldd` lists for `bin` (absolute paths), including the dynamic loader.
pub fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(io_err("ldd"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = if let Some((_, rhs)) = line.split_once("=>") {
            rhs.split_whitespace().next().unwrap_or("")
        } else {
            line.split_whitespace().next().unwrap_or("")
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}
