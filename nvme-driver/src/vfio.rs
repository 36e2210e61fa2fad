//! VFIO: container, group and device file descriptors, region info, BAR mapping, IOMMU DMA map/unmap and the
//! IOMMU's usable IOVA ranges (Linux `Documentation/driver-api/vfio.rst`, `include/uapi/linux/vfio.h`).
//!
//! Raw ioctls over `libc`, not the `vfio-ioctls` crate: that crate is built for VMMs (its DMA API is shaped
//! around guest memory regions, it pulls vm-memory/kvm crates in), and it does not wrap the IOVA-range capability
//! of `VFIO_IOMMU_GET_INFO`, which this driver needs because the emulated Intel IOMMU's 39-bit address width does
//! not cover user virtual addresses. The dozen ioctls used here fit in this module.

use crate::error::{Error, Result};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const VFIO_TYPE: libc::c_ulong = b';' as libc::c_ulong;
const VFIO_BASE: libc::c_ulong = 100;
const fn vfio_io(nr: libc::c_ulong) -> libc::c_ulong {
    (VFIO_TYPE << 8) | (VFIO_BASE + nr)
}
const VFIO_GET_API_VERSION: libc::c_ulong = vfio_io(0);
const VFIO_CHECK_EXTENSION: libc::c_ulong = vfio_io(1);
const VFIO_SET_IOMMU: libc::c_ulong = vfio_io(2);
const VFIO_GROUP_GET_STATUS: libc::c_ulong = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(6);
const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);
const VFIO_IOMMU_GET_INFO: libc::c_ulong = vfio_io(12);
const VFIO_IOMMU_MAP_DMA: libc::c_ulong = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: libc::c_ulong = vfio_io(14);
const VFIO_DEVICE_SET_IRQS: libc::c_ulong = vfio_io(10);
const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// The device-request interrupt of vfio-pci: the kernel signals it when it wants the device back (hot-remove,
/// unbind) and then waits for the user to close the device.
const VFIO_PCI_REQ_IRQ_INDEX: u32 = 4;

const VFIO_API_VERSION: libc::c_int = 0;
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;
const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
const VFIO_DMA_MAP_FLAG_READ: u32 = 1;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 2;
const VFIO_REGION_INFO_FLAG_READ: u32 = 1;
const VFIO_REGION_INFO_FLAG_WRITE: u32 = 2;
const VFIO_REGION_INFO_FLAG_MMAP: u32 = 4;

/// PCI region indexes of vfio-pci.
pub const BAR0_REGION: u32 = 0;
pub const BAR4_REGION: u32 = 4;
pub const CONFIG_REGION: u32 = 7;

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct IommuType1Info {
    argsz: u32,
    flags: u32,
    iova_pgsizes: u64,
    cap_offset: u32,
    pad: u32,
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct RegionInfo {
    argsz: u32,
    pub flags: u32,
    pub index: u32,
    cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

impl RegionInfo {
    /// The region can be read, written and mmap'ed (`VFIO_REGION_INFO_FLAG_READ | WRITE | MMAP`), as a memory
    /// BAR the driver maps must be.
    pub fn mappable_rw(&self) -> bool {
        let want =
            VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;
        self.flags & want == want
    }
}

/// `struct vfio_irq_set` with one eventfd as its data.
#[repr(C)]
struct IrqSetEventfd {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    fd: i32,
}

const _: () = assert!(core::mem::size_of::<IrqSetEventfd>() == 24);
const _: () = assert!(core::mem::size_of::<IommuType1Info>() == 24);
const _: () = assert!(core::mem::size_of::<DmaMap>() == 32);
const _: () = assert!(core::mem::size_of::<DmaUnmap>() == 24);
const _: () = assert!(core::mem::size_of::<RegionInfo>() == 32);

/// An inclusive IOVA range the IOMMU accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IovaRange {
    pub start: u64,
    pub end: u64,
}

fn ioctl_ptr<T>(fd: &impl AsRawFd, req: libc::c_ulong, arg: *mut T) -> io::Result<libc::c_int> {
    // SAFETY: every caller passes a request number whose argument is a pointer to a properly sized and
    // initialized `#[repr(C)]` structure (with argsz set) that outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn ioctl_val(fd: &impl AsRawFd, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: these requests take an integer argument (or none); no memory is passed to the kernel.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A VFIO container with the type1 IOMMU set: the DMA address space of one controller.
#[derive(Debug)]
pub struct Container {
    fd: OwnedFd,
}

/// A device opened through VFIO, with its group and container kept alive.
#[derive(Debug)]
pub struct Device {
    pub addr: String,
    fd: File,
    _group: File,
}

fn sysfs(addr: &str) -> std::path::PathBuf {
    Path::new("/sys/bus/pci/devices").join(addr)
}

/// Checks the PCI device exists and is bound to vfio-pci, and returns its IOMMU group number.
pub fn check_device(addr: &str) -> Result<String> {
    let dev = sysfs(addr);
    if !dev.exists() {
        return Err(Error::NoSuchDevice {
            addr: addr.into(),
            sysfs: dev.display().to_string(),
        });
    }
    let driver = std::fs::read_link(dev.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()));
    if driver.as_deref() != Some("vfio-pci") {
        return Err(Error::NotBoundToVfio {
            addr: addr.into(),
            driver,
        });
    }
    let group = std::fs::read_link(dev.join("iommu_group"))
        .map_err(|_| Error::NoIommuGroup { addr: addr.into() })?
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .ok_or_else(|| Error::NoIommuGroup { addr: addr.into() })?;
    Ok(group)
}

fn open_rw(addr: &str, path: &str) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => Error::NoAccess {
                addr: addr.into(),
                access: Box::new(crate::memlock::access(path)),
                source,
            },
            _ => Error::Open {
                addr: addr.into(),
                path: path.into(),
                source,
            },
        })
}

/// Opens `addr` (e.g. `0000:00:10.0`): container, group, type1v2 IOMMU, device fd.
pub fn open(addr: &str) -> Result<(Container, Device)> {
    let group_no = check_device(addr)?;
    let vfio_err = |op: &'static str| {
        move |source| Error::Vfio {
            addr: addr.into(),
            op,
            source,
        }
    };
    let container = open_rw(addr, "/dev/vfio/vfio")?;
    let version =
        ioctl_val(&container, VFIO_GET_API_VERSION, 0).map_err(vfio_err("GET_API_VERSION"))?;
    if version != VFIO_API_VERSION {
        return Err(Error::Unsupported {
            addr: addr.into(),
            what: format!("VFIO API version {version}"),
        });
    }
    if ioctl_val(&container, VFIO_CHECK_EXTENSION, VFIO_TYPE1V2_IOMMU)
        .map_err(vfio_err("CHECK_EXTENSION"))?
        != 1
    {
        return Err(Error::Unsupported {
            addr: addr.into(),
            what: "the VFIO type1v2 IOMMU".into(),
        });
    }
    let group = open_rw(addr, &format!("/dev/vfio/{group_no}"))?;
    let mut status = GroupStatus {
        argsz: core::mem::size_of::<GroupStatus>() as u32,
        flags: 0,
    };
    ioctl_ptr(&group, VFIO_GROUP_GET_STATUS, &mut status).map_err(vfio_err("GROUP_GET_STATUS"))?;
    if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
        return Err(Error::GroupNotViable {
            addr: addr.into(),
            group: group_no,
        });
    }
    let mut cfd = container.as_raw_fd();
    ioctl_ptr(&group, VFIO_GROUP_SET_CONTAINER, &mut cfd)
        .map_err(vfio_err("GROUP_SET_CONTAINER"))?;
    ioctl_val(&container, VFIO_SET_IOMMU, VFIO_TYPE1V2_IOMMU)
        .map_err(vfio_err("SET_IOMMU (type1v2)"))?;
    let name =
        CString::new(addr).map_err(|_| Error::InvalidArgument(format!("PCI address {addr:?}")))?;
    let dfd = ioctl_ptr(
        &group,
        VFIO_GROUP_GET_DEVICE_FD,
        name.as_ptr() as *mut libc::c_char,
    )
    .map_err(vfio_err("GROUP_GET_DEVICE_FD"))?;
    // SAFETY: the ioctl returned a new file descriptor that nothing else owns.
    let fd = unsafe { File::from_raw_fd(dfd) };
    Ok((
        Container {
            fd: container.into(),
        },
        Device {
            addr: addr.into(),
            fd,
            _group: group,
        },
    ))
}

impl Container {
    /// The IOVA ranges the IOMMU accepts (`VFIO_IOMMU_GET_INFO`, IOVA-range capability). When the kernel does
    /// not report them, the conservative 39-bit range of the smallest common IOMMU width is assumed.
    pub fn iova_ranges(&self) -> io::Result<Vec<IovaRange>> {
        let mut info = IommuType1Info {
            argsz: core::mem::size_of::<IommuType1Info>() as u32,
            ..Default::default()
        };
        ioctl_ptr(&self.fd, VFIO_IOMMU_GET_INFO, &mut info)?;
        let fallback = vec![IovaRange {
            start: 0,
            end: (1 << 39) - 1,
        }];
        if info.flags & VFIO_IOMMU_INFO_CAPS == 0
            || info.argsz as usize <= core::mem::size_of::<IommuType1Info>()
        {
            return Ok(fallback);
        }
        // Ask again with room for the capability chain; u64 storage keeps the structures aligned.
        let words = (info.argsz as usize).div_ceil(8);
        let mut buf = vec![0u64; words];
        let bytes_len = words * 8;
        // SAFETY: `buf` is at least 24 bytes and 8-aligned; IommuType1Info is plain integers.
        unsafe {
            let hdr = buf.as_mut_ptr().cast::<IommuType1Info>();
            (*hdr).argsz = info.argsz;
        }
        ioctl_ptr(&self.fd, VFIO_IOMMU_GET_INFO, buf.as_mut_ptr())?;
        // SAFETY: u64 → u8 view of the same, fully initialized allocation.
        let bytes: &[u8] =
            unsafe { core::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), bytes_len) };
        let rd32 = |o: usize| {
            bytes
                .get(o..o + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        let rd64 = |o: usize| {
            bytes
                .get(o..o + 8)
                .map(|b| u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        };
        let mut off = rd32(16).unwrap_or(0) as usize;
        let mut hops = 0;
        while off != 0 && hops < 64 {
            hops += 1;
            let Some(idver) = rd32(off) else { break };
            let id = (idver & 0xffff) as u16;
            let next = rd32(off + 4).unwrap_or(0) as usize;
            if id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
                let n = rd32(off + 8).unwrap_or(0) as usize;
                let mut ranges = Vec::with_capacity(n);
                for i in 0..n {
                    let base = off + 16 + i * 16;
                    if let (Some(start), Some(end)) = (rd64(base), rd64(base + 8)) {
                        ranges.push(IovaRange { start, end });
                    }
                }
                if !ranges.is_empty() {
                    return Ok(ranges);
                }
            }
            off = next;
        }
        Ok(fallback)
    }

    /// Maps `len` bytes at `vaddr` to `iova` for device reads and writes (pins the pages).
    pub fn map_dma(&self, vaddr: *mut u8, iova: u64, len: usize) -> io::Result<()> {
        let mut m = DmaMap {
            argsz: core::mem::size_of::<DmaMap>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: vaddr as u64,
            iova,
            size: len as u64,
        };
        ioctl_ptr(&self.fd, VFIO_IOMMU_MAP_DMA, &mut m).map(|_| ())
    }

    pub fn unmap_dma(&self, iova: u64, len: usize) -> io::Result<()> {
        let mut u = DmaUnmap {
            argsz: core::mem::size_of::<DmaUnmap>() as u32,
            flags: 0,
            iova,
            size: len as u64,
        };
        ioctl_ptr(&self.fd, VFIO_IOMMU_UNMAP_DMA, &mut u).map(|_| ())
    }
}

impl Device {
    pub fn region_info(&self, index: u32) -> io::Result<RegionInfo> {
        let mut info = RegionInfo {
            argsz: core::mem::size_of::<RegionInfo>() as u32,
            index,
            ..Default::default()
        };
        ioctl_ptr(&self.fd, VFIO_DEVICE_GET_REGION_INFO, &mut info)?;
        Ok(info)
    }

    /// Reads from a region (PCI config space, say) at `offset`.
    pub fn region_read(&self, region: &RegionInfo, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.fd.read_exact_at(buf, region.offset + offset)
    }

    pub fn region_write(&self, region: &RegionInfo, offset: u64, buf: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.fd.write_all_at(buf, region.offset + offset)
    }

    /// Maps a BAR region into this process; returns (pointer, length).
    pub fn map_region(&self, region: &RegionInfo) -> io::Result<(*mut u8, usize)> {
        if region.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 || region.size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("region {} is not mappable", region.index),
            ));
        }
        // SAFETY: a fresh shared mapping of the device fd at the offset VFIO gave for this region; the kernel
        // validates offset and length. The pointer is owned by the caller, who unmaps it.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                region.size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                region.offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok((p.cast::<u8>(), region.size as usize))
    }

    /// An eventfd that VFIO signals when the kernel asks for the device back (`VFIO_PCI_REQ_IRQ_INDEX`): a
    /// hot-removal or an unbind, which waits until the device is closed.
    pub fn request_notifier(&self) -> io::Result<OwnedFd> {
        // SAFETY: eventfd takes no pointers; a non-negative return is a new descriptor nothing else owns.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor (checked above).
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut set = IrqSetEventfd {
            argsz: core::mem::size_of::<IrqSetEventfd>() as u32,
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index: VFIO_PCI_REQ_IRQ_INDEX,
            start: 0,
            count: 1,
            fd: fd.as_raw_fd(),
        };
        ioctl_ptr(&self.fd, VFIO_DEVICE_SET_IRQS, &mut set)?;
        Ok(fd)
    }

    /// Sets Memory Space Enable and Bus Master Enable, and disables INTx (the driver polls), in the PCI Command
    /// register.
    pub fn enable_bus_master(&self) -> io::Result<()> {
        let cfg = self.region_info(CONFIG_REGION)?;
        let mut cmd = [0u8; 2];
        self.region_read(&cfg, 4, &mut cmd)?;
        let v = u16::from_le_bytes(cmd) | (1 << 1) | (1 << 2) | (1 << 10);
        self.region_write(&cfg, 4, &v.to_le_bytes())
    }
}
