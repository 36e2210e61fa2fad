//! nvkv's test VM: one QEMU guest (q35 + Intel vIOMMU, TCG by default) with emulated NVMe controllers, booted
//! from the host's Debian kernel and an initramfs built on the fly, running one command and bringing back its
//! exit status and output.
//!
//! - [`host`]: installing what the VM needs (Debian packages), finding the kernel and its modules.
//! - [`initramfs`]: the `newc` cpio writer and the content-addressed initramfs cache.
//! - [`vm`]: the QEMU command line, the NVMe controller configuration, boot, timeout, output framing.
//! - [`guest`]: helpers for code running *inside* the guest (find controllers, bind drivers).
//! - [`nvdimm`]: an emulated NVDIMM (host arguments) and making it a devdax device in the guest.
//! - [`monitor`]: QEMU's QMP monitor from the host (hot-removal with `device_del`).
//! - [`kill`]: stacked `kill -9` rounds of QEMU, checked against a model of acknowledged writes.
//! - [`suite`]: a tiny harness that lets one test binary boot a VM carrying itself and run its tests there.

pub mod guest;
pub mod host;
pub mod initramfs;
pub mod kill;
pub mod monitor;
pub mod nvdimm;
pub mod suite;
pub mod vm;

pub use vm::{Accel, NsBackend, NvmeController, NvmeNamespace, RunOutput, Vm, VmBuilder};

/// Errors of the VM harness. Each says what went wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} not found: {fix}")]
    Missing { what: String, fix: String },
    #[error("host set-up failed: {0}")]
    Setup(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU failed to start: {0}")]
    Spawn(std::io::Error),
    #[error("QEMU exited before the guest command finished (status {status}); QEMU stderr:\n{stderr}\nconsole tail:\n{console}")]
    QemuExited {
        status: String,
        stderr: String,
        console: String,
    },
    #[error("timeout after {secs} s ({phase}); QEMU was killed. QEMU stderr:\n{stderr}\nconsole tail:\n{console}")]
    Timeout {
        secs: u64,
        phase: &'static str,
        stderr: String,
        console: String,
    },
    #[error("invalid VM configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl AsRef<std::path::Path>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.as_ref().display().to_string();
    move |source| Error::Io { path, source }
}
