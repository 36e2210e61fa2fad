//! Helpers for code running inside the guest: find the emulated NVMe controllers and move them between the
//! kernel's `nvme` driver and `vfio-pci` (the sysfs steps of `../shared/QEMU.md`).

use crate::{io_err, Error, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The NVDIMM made a device-DAX device (`/dev/daxX.Y`) through sysfs: see [`crate::nvdimm::devdax`].
pub use crate::nvdimm::{devdax as nvdimm_devdax, DevDax};

const PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// True when running inside the nvkv test VM (its `/init` exports this).
pub fn in_guest() -> bool {
    std::env::var("NVKV_GUEST").is_ok_and(|v| v == "1")
}

/// PCI addresses of NVMe controllers (class 0x010802), sorted.
pub fn nvme_controllers() -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(PCI_DEVICES)
        .map_err(io_err(PCI_DEVICES))?
        .flatten()
    {
        let class = std::fs::read_to_string(e.path().join("class")).unwrap_or_default();
        if class.trim() == "0x010802" {
            out.push(e.file_name().to_string_lossy().to_string());
        }
    }
    out.sort();
    Ok(out)
}

fn dev(addr: &str) -> PathBuf {
    Path::new(PCI_DEVICES).join(addr)
}

/// The driver a device is bound to (`nvme`, `vfio-pci`), or None.
pub fn driver(addr: &str) -> Option<String> {
    std::fs::read_link(dev(addr).join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
}

fn write(path: impl AsRef<Path>, value: &str) -> Result<()> {
    std::fs::write(path.as_ref(), value).map_err(io_err(path))
}

fn unbind(addr: &str) -> Result<()> {
    if driver(addr).is_some() {
        write(dev(addr).join("driver/unbind"), addr)?;
    }
    Ok(())
}

/// Binds `addr` to vfio-pci and waits for `/dev/vfio/<group>`.
pub fn bind_vfio(addr: &str) -> Result<()> {
    unbind(addr)?;
    write(dev(addr).join("driver_override"), "vfio-pci")?;
    write("/sys/bus/pci/drivers_probe", addr)?;
    let group = iommu_group(addr)?;
    wait_for(
        &PathBuf::from(format!("/dev/vfio/{group}")),
        Duration::from_secs(10),
    )
}

/// Gives `addr` back to the kernel's nvme driver and waits for its first namespace's block device; returns
/// the block device path (e.g. `/dev/nvme0n1`).
pub fn bind_kernel(addr: &str) -> Result<PathBuf> {
    unbind(addr)?;
    write(dev(addr).join("driver_override"), "\n")?;
    write("/sys/bus/pci/drivers_probe", addr)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(b) = block_device(addr) {
            if b.exists() {
                return Ok(b);
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Config(format!(
                "{addr}: no block device appeared after binding to nvme"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/dev/nvmeXn1` of a controller bound to the kernel driver.
pub fn block_device(addr: &str) -> Option<PathBuf> {
    let ctrls = std::fs::read_dir(dev(addr).join("nvme")).ok()?;
    for c in ctrls.flatten() {
        let name = c.file_name().to_string_lossy().to_string();
        for n in std::fs::read_dir(c.path()).ok()?.flatten() {
            let nn = n.file_name().to_string_lossy().to_string();
            if nn.starts_with(&name) && nn.contains('n') && nn.len() > name.len() {
                return Some(PathBuf::from(format!("/dev/{nn}")));
            }
        }
    }
    None
}

/// The IOMMU group number of a device.
pub fn iommu_group(addr: &str) -> Result<String> {
    let link = std::fs::read_link(dev(addr).join("iommu_group"))
        .map_err(io_err(dev(addr).join("iommu_group")))?;
    Ok(link
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default())
}

fn wait_for(path: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(Error::Config(format!("{} did not appear", path.display())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
