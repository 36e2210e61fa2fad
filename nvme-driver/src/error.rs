//! The driver's typed errors. Each names the device and, where there is one, the fix.

use crate::status::NvmeStatus;

/// Errors of opening, bringing up and administering a controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PCI device {addr} does not exist (no {sysfs}); list NVMe controllers with `nvkv-setup list`")]
    NoSuchDevice { addr: String, sysfs: String },
    #[error("PCI device {addr} is bound to {}, not vfio-pci; bind it with `nvkv-setup bind {addr}` (it must not be in use)", driver.as_deref().map(|d| format!("the `{d}` driver")).unwrap_or_else(|| "no driver".into()))]
    NotBoundToVfio {
        addr: String,
        driver: Option<String>,
    },
    #[error("PCI device {addr} has no IOMMU group: boot with the IOMMU on (intel_iommu=on / amd_iommu=on) or, in QEMU, add an intel-iommu device")]
    NoIommuGroup { addr: String },
    #[error("IOMMU group {group} of {addr} is not viable: every device in the group must be bound to vfio-pci or no driver")]
    GroupNotViable { addr: String, group: String },
    #[error("{addr}: cannot open {path}: {source}{}", if source.raw_os_error() == Some(libc::EACCES) { " (run as root or give this user the group's /dev/vfio node)" } else if source.raw_os_error() == Some(libc::EBUSY) { " (another process has the device open)" } else { "" })]
    Open {
        addr: String,
        path: String,
        source: std::io::Error,
    },
    /// This user may not open the VFIO group node (EACCES/EPERM): who owns it and how to get access.
    #[error("{addr}: no access to {}: {access}. To fix it, {}", access.path, access.fix(addr))]
    NoAccess {
        addr: String,
        access: Box<crate::memlock::Access>,
        source: std::io::Error,
    },
    /// Pinning more DMA memory would exceed RLIMIT_MEMLOCK (checked before mapping, or ENOMEM from
    /// `VFIO_IOMMU_MAP_DMA` while the limit is finite).
    #[error("{shortfall}")]
    Memlock {
        shortfall: crate::memlock::Shortfall,
    },
    #[error("{addr}: VFIO {op} failed: {source}")]
    Vfio {
        addr: String,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("DMA memory: {what}: {source}{}", if source.raw_os_error() == Some(libc::ENOMEM) || source.raw_os_error() == Some(libc::EPERM) { " (raise RLIMIT_MEMLOCK: `ulimit -l unlimited`)" } else { "" })]
    Dma {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("no IOVA space left for {len} bytes inside the IOMMU's allowed ranges")]
    IovaExhausted { len: usize },
    #[error("{addr}: controller did not {what} within {ms} ms (CAP.TO)")]
    Timeout {
        addr: String,
        what: &'static str,
        ms: u64,
    },
    #[error("{addr}: controller reports a fatal status (CSTS.CFS)")]
    ControllerFatal { addr: String },
    /// The controller was declared dead (see [`crate::health::DeathCause`]); nothing more is sent to it.
    #[error("{addr}: controller is dead ({cause}); reopen it once it is back")]
    ControllerDead {
        addr: String,
        cause: crate::health::DeathCause,
    },
    #[error("{addr}: {command} failed: {status}")]
    Command {
        addr: String,
        command: &'static str,
        status: NvmeStatus,
    },
    #[error("{addr}: namespace {nsid} is not active")]
    NoSuchNamespace { addr: String, nsid: u32 },
    #[error("{addr}: no I/O queue pair left (the controller granted {granted})")]
    NoQueues { addr: String, granted: u16 },
    #[error("{addr}: unsupported: {what}")]
    Unsupported { addr: String, what: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an I/O request failed after it was accepted by [`crate::QueuePair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    /// The device completed the command with an error status.
    #[error("{0}")]
    Status(NvmeStatus),
    /// The command did not complete in time; it was aborted (and the controller reset if that did not help).
    #[error("command timed out")]
    Timeout,
    /// The controller was reset while the command was in flight; its effect on the media is unknown.
    #[error("controller reset while the command was in flight")]
    ControllerReset,
    /// The controller is dead or gone (BAR0 reads all ones, CSTS.CFS that a reset did not clear, a failed
    /// reset, hot-removal): the command was failed without an answer from the device and its effect on the
    /// media is unknown. Its buffer is quarantined (the completion carries none; a borrowed buffer must not be
    /// reused while the [`crate::Controller`] lives), since the device might still write it.
    #[error("controller is dead or removed; the command's effect is unknown")]
    ControllerDead,
}

impl IoError {
    pub fn status(&self) -> Option<NvmeStatus> {
        match self {
            IoError::Status(s) => Some(*s),
            _ => None,
        }
    }
}

/// Why a request was not accepted; the request's buffer is handed back in [`SubmitError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitErrorKind {
    /// The queue pair has no room for the request now: poll for completions and submit again.
    #[error("queue full: poll for completions and submit again")]
    Busy,
    #[error("zero-length request")]
    ZeroLength,
    #[error("length {len} is not a multiple of the logical block size {lba_size}")]
    NotBlockMultiple { len: usize, lba_size: u32 },
    #[error("buffer offset {offset} is not dword (4-byte) aligned, as PRPs require")]
    Misaligned { offset: usize },
    #[error("range {start}..{end} is outside the {len}-byte buffer")]
    OutsideBuffer {
        start: usize,
        end: usize,
        len: usize,
    },
    #[error("request needs {needed} commands but the queue holds at most {max}")]
    TooLarge { needed: usize, max: usize },
    #[error("namespace does not support {0}")]
    Unsupported(&'static str),
    /// The queue pair's controller is dead or removed: nothing will be accepted again (never retry; reopen the
    /// controller once it is back).
    #[error("controller is dead or removed: the queue pair accepts nothing more")]
    ControllerDead,
}

/// A request that was not accepted, with its buffer given back.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct SubmitError {
    pub kind: SubmitErrorKind,
    pub buf: Option<crate::dma::DmaBuf>,
}

impl SubmitError {
    /// An error for a request that carried no buffer.
    pub fn without_buffer(kind: SubmitErrorKind) -> Self {
        SubmitError { kind, buf: None }
    }
}
