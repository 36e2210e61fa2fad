//! An emulated NVDIMM: QEMU's `-device nvdimm` over a host file, and the guest-side steps that turn
//! it into a device-DAX character device (`/dev/daxX.Y`) through sysfs alone (no ndctl in the guest).
//! `docs/nvdimm.md` says what works in the test guest and what did not.
//!
//! Host side ([`Nvdimm`], used by [`crate::VmBuilder::nvdimm`]): `-machine ...,nvdimm=on`,
//! `-m MEM,slots=2,maxmem=MEM+SIZE+1G`, `-object memory-backend-file,share=on,...` and
//! `-device nvdimm`. No label area (`label-size` unset): the guest kernel makes one label-less
//! namespace (`namespace0.0`) over the whole DIMM, which starts at byte 0 of the backing file.
//!
//! Guest side ([`devdax`]): the namespace comes up in raw mode (`/dev/pmem0`); the region's DAX
//! seed is given a uuid, an alignment, the memmap location and the namespace, then bound to
//! `dax_pmem` — what `ndctl create-namespace -f -e namespace0.0 -m devdax` does. The kernel writes a
//! DAX info block at the start of the namespace; on the next boot on the same file it finds it and
//! brings the devdax device up by itself, which [`devdax`] recognises.

use crate::{io_err, Error, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The guest kernel modules, in load order: the NFIT bus, libnvdimm, the pmem and btt namespace
/// drivers (nd_pmem needs nd_btt), the nd DAX driver and the device-DAX character device.
pub const MODULES: &[&str] = &[
    "libnvdimm",
    "nfit",
    "nd_btt",
    "nd_pmem",
    "dax_pmem",
    "device_dax",
];

/// Sizes the NVDIMM may have: a multiple of 2 MiB (the devdax alignment) and at least 16 MiB.
const GRANULE: u64 = 2 << 20;

/// One NVDIMM: its host backing file and size in bytes.
#[derive(Debug, Clone)]
pub struct Nvdimm {
    pub file: PathBuf,
    pub size: u64,
}

impl Nvdimm {
    /// Checks the size, creates (sparse) or extends the backing file to exactly `size` when it is
    /// smaller (QEMU refuses a smaller file), and returns the QEMU arguments: the machine option
    /// suffix, the `-m` value and the `-object`/`-device` pair.
    pub(crate) fn qemu_args(&self, mem_mib: u32) -> Result<(&'static str, String, Vec<String>)> {
        if self.size < 8 * GRANULE || self.size % GRANULE != 0 {
            return Err(Error::Config(format!(
                "NVDIMM size {} is not a multiple of 2 MiB of at least 16 MiB",
                self.size
            )));
        }
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&self.file)
            .map_err(io_err(&self.file))?;
        if f.metadata().map_err(io_err(&self.file))?.len() < self.size {
            f.set_len(self.size).map_err(io_err(&self.file))?;
        }
        let mem = u64::from(mem_mib) << 20;
        // One slot for the NVDIMM (and one spare); 1 GiB of slack for QEMU's DIMM alignment.
        let m = format!(
            "{mem_mib}M,slots=2,maxmem={}M",
            (mem + self.size + (1 << 30)) >> 20
        );
        let args = vec![
            "-object".into(),
            format!(
                "memory-backend-file,id=nvdimm0,share=on,mem-path={},size={}",
                self.file.display(),
                self.size
            ),
            "-device".into(),
            "nvdimm,memdev=nvdimm0,id=nv0".into(),
        ];
        Ok((",nvdimm=on", m, args))
    }
}

/// A device-DAX device made ready in the guest by [`devdax`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevDax {
    /// The character device, e.g. `/dev/dax0.0`.
    pub path: PathBuf,
    /// Bytes it maps.
    pub size: u64,
    /// Its mapping alignment (sysfs `align`).
    pub align: u64,
    /// Where its byte 0 is in the NVDIMM (and so in the host's backing file): after the info
    /// block and the struct-page reservation.
    pub data_offset: u64,
    /// True when this boot found the device already configured (an info block from an earlier
    /// boot), false when [`devdax`] configured it.
    pub reused: bool,
}

const ND: &str = "/sys/bus/nd/devices";

fn read(p: impl AsRef<Path>) -> Result<String> {
    let p = p.as_ref();
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .map_err(io_err(p))
}

fn write(p: impl AsRef<Path>, v: &str) -> Result<()> {
    let p = p.as_ref();
    std::fs::write(p, v).map_err(io_err(p))
}

fn number(p: impl AsRef<Path>) -> Result<u64> {
    let p = p.as_ref();
    let s = read(p)?;
    let n = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    };
    n.ok_or_else(|| Error::Config(format!("{}: not a number: {s:?}", p.display())))
}

/// Waits (bounded) until `f` gives a value.
fn wait<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(Error::Config(format!(
                "NVDIMM: {what} within {} s",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The namespace's state once the kernel has probed it.
enum Probed {
    /// Bound to nd_pmem in raw mode (a fresh NVDIMM, or one without an info block).
    Raw,
    /// Claimed by an nd DAX device (an info block from an earlier boot): its name.
    Dax(String),
}

/// Makes the guest's first NVDIMM a device-DAX device with mapping alignment `align` (4096 or
/// 2 MiB; the struct pages live on the NVDIMM, as ndctl's default `--map=dev`), or finds the one an
/// earlier boot configured, and returns it. Every wait is bounded (20 s). Needs the [`MODULES`]
/// loaded (`VmBuilder::nvdimm` does that).
pub fn devdax(align: u64) -> Result<DevDax> {
    let t = Duration::from_secs(20);
    let ns = Path::new(ND).join("namespace0.0");
    let probed = wait("namespace0.0 did not appear and get probed", t, || {
        let holder = read(ns.join("holder")).unwrap_or_default();
        if !holder.is_empty() {
            return Some(Probed::Dax(holder));
        }
        ns.join("driver").exists().then_some(Probed::Raw)
    })?;
    let (nd_dax, reused) = match probed {
        Probed::Dax(name) => (Path::new(ND).join(name), true),
        Probed::Raw => {
            // The namespace must be idle before a DAX device may claim it.
            write(ns.join("driver/unbind"), "namespace0.0")?;
            let seed = read(Path::new(ND).join("region0/dax_seed"))?;
            let d = Path::new(ND).join(&seed);
            write(d.join("uuid"), &read("/proc/sys/kernel/random/uuid")?)?;
            write(d.join("align"), &align.to_string())?;
            write(d.join("mode"), "pmem")?;
            write(d.join("namespace"), "namespace0.0")?;
            let drv = Path::new("/sys/bus/nd/drivers/dax_pmem");
            if !drv.exists() {
                return Err(Error::Config(
                    "NVDIMM: no nd driver dax_pmem (module not loaded?)".into(),
                ));
            }
            write(drv.join("bind"), &seed)?;
            (d, false)
        }
    };
    // The nd DAX device's child is the device-DAX device (e.g. dax0.0), bound to device_dax.
    let name = wait("no device-DAX device under the nd DAX device", t, || {
        std::fs::read_dir(&nd_dax).ok()?.flatten().find_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            (n.starts_with("dax") && e.path().join("dev").exists()).then_some(n)
        })
    })?;
    let path = PathBuf::from(format!("/dev/{name}"));
    wait(&format!("{} did not appear", path.display()), t, || {
        path.exists().then_some(())
    })?;
    let sys = nd_dax.join(&name);
    let data_start = number(nd_dax.join("resource"))?;
    let ns_start = number(ns.join("resource"))?;
    Ok(DevDax {
        size: number(sys.join("size"))?,
        align: number(sys.join("align")).unwrap_or(align),
        data_offset: data_start.checked_sub(ns_start).ok_or_else(|| {
            Error::Config(format!(
                "NVDIMM: data at {data_start:#x} before the namespace at {ns_start:#x}"
            ))
        })?,
        path,
        reused,
    })
}
