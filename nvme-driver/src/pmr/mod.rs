//! The controller's Persistent Memory Region (PMR, NVMe 1.4): a BAR of byte-addressable memory whose writes
//! become persistent once the write barrier PMRCAP.PMRWBM advertises has completed.
//!
//! [`crate::Controller::pmr`] brings it up: it decodes PMRCAP, refuses a PMR without a write barrier (nothing
//! written to it could ever be known to be persistent) or without read and write support, maps the BAR named by
//! PMRCAP.BIR through VFIO, sets PMRCTL.EN and waits (bounded by PMRTO) for PMRSTS.NRDY to clear, then checks
//! PMRSTS. [`Pmr::split`] hands the region out as disjoint [`PmrSlice`]s, one per owner thread; the mapping lives
//! as long as any of them. [`PmrSlice::barrier`] is a store fence followed by the advertised barrier: a read of
//! PMRSTS (PMRWBM bit 1, which also reports errors and a dead controller), else a read from the PMR (bit 0).
//!
//! On a hot-removal the mapping is replaced by memory that reads all ones (as BAR0 is, see
//! [`crate::health`]), so the kernel can take the device back while slices are alive; their barriers then fail
//! with [`PmrError::ControllerDead`].

mod regs;

pub use regs::{
    PmrHealth, PmrRegisters, PmrSizeUnit, PmrTimeUnits, PmrWriteBarrier, Pmrcap, Pmrctl, Pmrebs,
    Pmrmsc, Pmrsts, Pmrswtp,
};

use crate::health::DeathCause;
use crate::mmio::Bar;
use crate::spec::reg;
use crate::{vfio, Controller};
use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Why the PMR could not be brought up, split or made persistent.
#[derive(Debug, thiserror::Error)]
pub enum PmrError {
    #[error("{addr}: PMR: VFIO {op} failed: {source}")]
    Vfio {
        addr: String,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{addr}: PMR: unsupported: {what}")]
    Unsupported { addr: String, what: String },
    /// PMRCAP.PMRWBM has neither bit 0 (PMR read) nor bit 1 (PMRSTS read): no write can be made persistent.
    #[error(
        "{addr}: PMR advertises no write barrier (PMRCAP.PMRWBM = {pmrwbm:#x}); refusing to use it"
    )]
    NoWriteBarrier { addr: String, pmrwbm: u8 },
    #[error("{addr}: PMR BAR {bir}: {what}")]
    Region { addr: String, bir: u8, what: String },
    #[error("{addr}: PMRSTS.NRDY did not clear within {ms} ms of PMRCTL.EN (PMRCAP.PMRTO); PMRSTS = {pmrsts:#x}")]
    Timeout { addr: String, ms: u64, pmrsts: u32 },
    /// PMRSTS.HSTS is not Normal Operation.
    #[error("{addr}: PMR health status (PMRSTS.HSTS) is {hsts}")]
    Health { addr: String, hsts: PmrHealth },
    /// PMRSTS.CBAI: the controller base address in PMRMSC is invalid.
    #[error("{addr}: PMR controller base address invalid (PMRSTS.CBAI)")]
    ControllerBaseAddressInvalid { addr: String },
    /// PMRSTS.ERR is not zero (its meaning is implementation specific).
    #[error("{addr}: PMR error (PMRSTS.ERR = {err:#x})")]
    Error { addr: String, err: u8 },
    /// PMRSTS.NRDY is set: the PMR does not accept reads and writes (disabled by a reset?).
    #[error("{addr}: PMR not ready (PMRSTS.NRDY)")]
    NotReady { addr: String },
    /// PMRSTS read all ones: the device is gone or unreachable; earlier writes may not be persistent.
    #[error("{addr}: PMR gone (PMRSTS reads all ones)")]
    Gone { addr: String },
    /// The controller was declared dead (or removed): nothing is known to be persistent any more.
    #[error("{addr}: PMR unusable: controller is dead ({cause})")]
    ControllerDead { addr: String, cause: DeathCause },
    /// A [`Pmr`] (or a slice of one) of this controller is alive: one owner at a time.
    #[error("{addr}: the PMR is already in use (a Pmr or PmrSlice of it is alive)")]
    InUse { addr: String },
    #[error("{addr}: the PMR was already split")]
    AlreadySplit { addr: String },
    #[error("{addr}: cannot split the {len}-byte PMR into {count} slices of {bytes_each} bytes")]
    BadSplit {
        addr: String,
        count: usize,
        bytes_each: usize,
        len: usize,
    },
}

impl PmrError {
    /// True when the device is gone or dead: nothing will work again until the controller is reopened.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            PmrError::Gone { .. } | PmrError::ControllerDead { .. }
        )
    }
}

/// What slices share: the mapping, BAR0 for PMRSTS, the barrier, and the controller kept open.
struct Mapping {
    addr: String,
    map: Arc<Bar>,
    regs: Arc<Bar>,
    barrier: PmrWriteBarrier,
    /// Keeps the controller (its VFIO device, its shutdown) alive as long as a slice is; None in host tests.
    controller: Option<Controller>,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PmrMapping")
            .field("addr", &self.addr)
            .field("len", &self.map.len())
            .field("barrier", &self.barrier)
            .finish_non_exhaustive()
    }
}

impl Mapping {
    fn barrier(&self, probe: usize) -> Result<(), PmrError> {
        // Every earlier store (write-combined ones too) is globally visible before the barrier's read is
        // issued: fence(SeqCst) is an mfence on x86_64, which orders stores as sfence does, and loads besides.
        fence(Ordering::SeqCst);
        if let Some(cause) = self.controller.as_ref().and_then(Controller::dead) {
            return Err(PmrError::ControllerDead {
                addr: self.addr.clone(),
                cause,
            });
        }
        match self.barrier {
            PmrWriteBarrier::PmrstsRead => {
                check_status(&self.addr, Pmrsts::decode(self.regs.read32(reg::PMRSTS)))
            }
            PmrWriteBarrier::MemoryRead => {
                // A volatile load the CPU must complete before anything later: the read's completion is the
                // barrier.
                let _ = self.map.read32(probe & !3);
                fence(Ordering::SeqCst);
                Ok(())
            }
        }
    }
}

/// PMRSTS as an error: all ones, a health status other than normal, CBAI, ERR, NRDY.
fn check_status(addr: &str, s: Pmrsts) -> Result<(), PmrError> {
    let addr = || addr.to_string();
    if s.raw == u32::MAX {
        return Err(PmrError::Gone { addr: addr() });
    }
    if s.hsts != PmrHealth::NormalOperation {
        return Err(PmrError::Health {
            addr: addr(),
            hsts: s.hsts,
        });
    }
    if s.cbai {
        return Err(PmrError::ControllerBaseAddressInvalid { addr: addr() });
    }
    if s.err != 0 {
        return Err(PmrError::Error {
            addr: addr(),
            err: s.err,
        });
    }
    if s.nrdy {
        return Err(PmrError::NotReady { addr: addr() });
    }
    Ok(())
}

/// The checks on PMRCAP before anything is mapped or enabled; returns the barrier to use.
fn check_capabilities(addr: &str, cap: Pmrcap) -> Result<PmrWriteBarrier, PmrError> {
    if cap.raw == u32::MAX {
        return Err(PmrError::Gone { addr: addr.into() });
    }
    let barrier = cap.write_barrier().ok_or(PmrError::NoWriteBarrier {
        addr: addr.into(),
        pmrwbm: cap.pmrwbm,
    })?;
    if !cap.rds || !cap.wds {
        return Err(PmrError::Unsupported {
            addr: addr.into(),
            what: format!(
                "a PMR without read and write data support (PMRCAP.RDS {}, WDS {})",
                cap.rds as u8, cap.wds as u8
            ),
        });
    }
    if !(2..=5).contains(&cap.bir) {
        return Err(PmrError::Unsupported {
            addr: addr.into(),
            what: format!(
                "PMRCAP.BIR {} (reserved: BARs 2 to 5 may hold a PMR)",
                cap.bir
            ),
        });
    }
    Ok(barrier)
}

/// Sets PMRCTL.EN (unless set) and waits until PMRSTS.NRDY clears, at most `timeout`; then checks PMRSTS.
fn enable(addr: &str, regs: &Bar, timeout: Duration) -> Result<(), PmrError> {
    let ctl = Pmrctl::decode(regs.read32(reg::PMRCTL));
    if !ctl.en {
        regs.write32(reg::PMRCTL, ctl.raw | Pmrctl::EN);
    }
    let deadline = Instant::now() + timeout;
    loop {
        let s = Pmrsts::decode(regs.read32(reg::PMRSTS));
        if s.raw == u32::MAX || !s.nrdy {
            return check_status(addr, s);
        }
        if Instant::now() >= deadline {
            return Err(PmrError::Timeout {
                addr: addr.into(),
                ms: timeout.as_millis() as u64,
                pmrsts: s.raw,
            });
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Brings the PMR of an open controller up (see the module documentation).
pub(crate) fn bring_up(
    addr: &str,
    regs: &Arc<Bar>,
    device: &vfio::Device,
    controller: Controller,
) -> Result<Pmr, PmrError> {
    let cap = Pmrcap::decode(regs.read32(reg::PMRCAP));
    let barrier = check_capabilities(addr, cap)?;
    let vfio_err = |op: &'static str| {
        move |source| PmrError::Vfio {
            addr: addr.into(),
            op,
            source,
        }
    };
    let region = device
        .region_info(u32::from(cap.bir))
        .map_err(vfio_err("GET_REGION_INFO (PMR BAR)"))?;
    let region_err = |what: String| PmrError::Region {
        addr: addr.into(),
        bir: cap.bir,
        what,
    };
    if region.size < 4096 || !region.mappable_rw() {
        return Err(region_err(format!(
            "VFIO region of {} bytes with flags {:#x}: not a readable, writable, mappable memory BAR",
            region.size, region.flags
        )));
    }
    enable(addr, regs, cap.timeout())?;
    let (ptr, len) = device
        .map_region(&region)
        .map_err(vfio_err("mmap (PMR BAR)"))?;
    // SAFETY: (ptr, len) is a fresh mapping of the PMR BAR that only this Bar will unmap.
    let map = unsafe { Bar::from_mmap(ptr, len) }
        .ok_or_else(|| region_err("mapped at address 0".into()))?;
    let registers = PmrRegisters::read(regs);
    check_status(addr, registers.pmrsts)?;
    Ok(Pmr::new(
        Mapping {
            addr: addr.into(),
            map: Arc::new(map),
            regs: regs.clone(),
            barrier,
            controller: Some(controller),
        },
        registers,
    ))
}

/// An enabled, mapped Persistent Memory Region. Hand it out with [`Pmr::split`].
#[derive(Debug)]
pub struct Pmr {
    inner: Arc<Mapping>,
    registers: PmrRegisters,
    split: bool,
}

impl Pmr {
    fn new(m: Mapping, registers: PmrRegisters) -> Self {
        Self {
            inner: Arc::new(m),
            registers,
            split: false,
        }
    }

    /// The mapping, for the controller to retire on a hot-removal.
    pub(crate) fn mapping(&self) -> Weak<Bar> {
        Arc::downgrade(&self.inner.map)
    }

    /// Size in bytes (the BAR's).
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The PMR registers as read once the PMR was enabled (for reports).
    pub fn registers(&self) -> &PmrRegisters {
        &self.registers
    }

    /// The barrier [`PmrSlice::barrier`] uses.
    pub fn write_barrier(&self) -> PmrWriteBarrier {
        self.inner.barrier
    }

    /// PMRSTS now. Reading it is itself the write barrier of PMRWBM bit 1.
    pub fn status(&self) -> Pmrsts {
        Pmrsts::decode(self.inner.regs.read32(reg::PMRSTS))
    }

    /// Hands out `count` disjoint slices of `bytes_each` bytes, the first at offset 0, each at the end of the
    /// one before; `bytes_each` 0 gives each `len / count` rounded down to 64 bytes. Only once per [`Pmr`].
    pub fn split(&mut self, count: usize, bytes_each: usize) -> Result<Vec<PmrSlice>, PmrError> {
        let addr = || self.inner.addr.clone();
        if self.split {
            return Err(PmrError::AlreadySplit { addr: addr() });
        }
        let len = self.len();
        let each = match bytes_each {
            0 => (len / count.max(1)) & !63,
            n => n,
        };
        if count == 0 || each == 0 || count.checked_mul(each).is_none_or(|t| t > len) {
            return Err(PmrError::BadSplit {
                addr: addr(),
                count,
                bytes_each,
                len,
            });
        }
        self.split = true;
        Ok((0..count)
            .map(|i| PmrSlice {
                inner: self.inner.clone(),
                off: i * each,
                len: each,
                _not_sync: PhantomData,
            })
            .collect())
    }
}

/// One owner's part of the PMR: `Send`, not `Sync` (one thread writes it and orders its barriers).
#[derive(Debug)]
pub struct PmrSlice {
    inner: Arc<Mapping>,
    /// Offset of the slice in the PMR.
    off: usize,
    len: usize,
    _not_sync: PhantomData<Cell<()>>,
}

impl PmrSlice {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the slice starts in the PMR.
    pub fn offset_in_pmr(&self) -> usize {
        self.off
    }

    fn check(&self, off: usize, n: usize) -> usize {
        match off.checked_add(n) {
            Some(end) if end <= self.len => self.off + off,
            _ => panic!(
                "PMR slice range {off}+{n} outside the {}-byte slice",
                self.len
            ),
        }
    }

    /// Stores `data` at `off` (volatile 64-bit words where aligned). Not persistent until the next
    /// [`PmrSlice::barrier`] returns Ok. Panics when `off + data.len()` exceeds [`PmrSlice::len`].
    pub fn write(&mut self, off: usize, data: &[u8]) {
        let at = self.check(off, data.len());
        self.inner.map.write_bytes(at, data);
    }

    /// Loads `out.len()` bytes from `off`. Panics when the range exceeds [`PmrSlice::len`].
    pub fn read(&self, off: usize, out: &mut [u8]) {
        let at = self.check(off, out.len());
        self.inner.map.read_bytes(at, out);
    }

    /// Makes every earlier write to the PMR persistent: a store fence, then the barrier PMRCAP.PMRWBM
    /// advertises (a PMRSTS read, whose errors it reports, or a PMR read).
    pub fn barrier(&self) -> Result<(), PmrError> {
        self.inner.barrier(self.off)
    }
}

#[cfg(test)]
mod tests;
