//! Controller bring-up, the admin queue, Identify, queue creation, reset and orderly shutdown.
//!
//! The admin queue is the only shared part of the driver and sits behind a mutex; it is used at set-up, for
//! queue (re)creation, aborts and resets — never on the I/O path.

mod admin_queue;
mod lifecycle;

use crate::dma::{DmaBuf, Iommu, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::health::{DeathCause, Health};
use crate::mmio::Bar;
use crate::namespace::Namespace;
use crate::pmr::{self, Pmr, PmrError, PmrRegisters};
use crate::queue::{QueueConfig, QueueOwner, QueuePair, QueueParts};
use crate::spec::{
    self, admin, cns, feature, reg, Cap, IdentifyController, IdentifyNamespace, SubmissionEntry,
};
use crate::vfio;
use admin_queue::{config_dbbuf, enable, set_queue_count, shadow_slots_of, AdminQueue};
use lifecycle::start_removal_watcher;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// Options for opening a controller.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Use shadow doorbells (Doorbell Buffer Config) when the controller offers them (OACS bit 8).
    ///
    /// Off by default. Measured on QEMU 7.2's NVMe under TCG (2026-12-02, docs/driver.md, three boots, on and
    /// off alternating): they save no MMIO write there in steady state (0.033 per I/O at QD 32 either way) and
    /// cost IOPS (median 155 K against 190 K at QD 32, 156 K against 215 K at QD 128), because QEMU spends two
    /// more DMA accesses per command on them in its one main-loop thread. They no longer stall (issue 17) and
    /// stay available for controllers where an MMIO write costs more than that.
    pub shadow_doorbells: bool,
    /// I/O queue pairs to ask for with Set Features (Number of Queues).
    pub io_queues: u16,
    /// Admin commands that take longer fail with a timeout.
    pub admin_timeout: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            shadow_doorbells: false,
            io_queues: 64,
            admin_timeout: Duration::from_secs(30),
        }
    }
}

/// What Identify Controller said, decoded.
#[derive(Debug, Clone)]
pub struct ControllerInfo {
    pub vid: u16,
    pub ssvid: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// MDTS as reported (2^MDTS minimum pages; 0 = no limit).
    pub mdts: u8,
    /// Maximum data transfer in bytes, if limited.
    pub max_transfer: Option<usize>,
    pub cntlid: u16,
    /// VS register (major << 16 | minor << 8 | tertiary).
    pub version: u32,
    pub oacs: u16,
    pub oncs: u16,
    pub vwc: u8,
    /// Number of namespaces (largest NSID).
    pub nn: u32,
    pub acl: u8,
    pub raw: Box<IdentifyController>,
}

fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

/// An NVMe controller opened through VFIO. Cloning gives another handle to the same controller; the last
/// handle (controllers and queue pairs) to go shuts the controller down (CC.SHN).
#[derive(Debug, Clone)]
pub struct Controller {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    addr: String,
    bar: Arc<Bar>,
    cap: Cap,
    iommu: Arc<Iommu>,
    admin: Mutex<AdminQueue>,
    /// The reset generation, the dead state and the quarantine.
    health: Health,
    info: ControllerInfo,
    namespaces: Vec<Namespace>,
    /// Shadow doorbell page and EventIdx page, when in use.
    dbbuf: Option<(DmaBuf, DmaBuf)>,
    /// qid → in use; index 0 is the admin queue.
    qids: Mutex<Vec<bool>>,
    granted: u16,
    opts: ControllerOptions,
    /// The VFIO device; closed early (taken) when the kernel asks for it back, see [`Shared::removed`].
    device: Mutex<Option<vfio::Device>>,
    /// The PMR's mapping while a [`Pmr`] or slice of it lives: retired on a hot-removal as BAR0 is. Locked
    /// before `device` (by [`Controller::pmr`] and by the removal).
    pmr: Mutex<Weak<Bar>>,
    /// Tells the removal watcher thread to end (written on drop).
    watcher_stop: Option<OwnedFd>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("addr", &self.addr)
            .field("model", &self.info.model)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Opens the controller at PCI address `addr` (bound to vfio-pci) with default options.
    pub fn open(addr: &str) -> Result<Self> {
        Self::open_with(addr, ControllerOptions::default())
    }

    /// Opens and brings up the controller: VFIO, bus mastering, BAR0, disable, admin queues, enable, Identify,
    /// Set Features (Number of Queues), Doorbell Buffer Config when offered and wanted.
    pub fn open_with(addr: &str, opts: ControllerOptions) -> Result<Self> {
        let (container, device) = vfio::open(addr)?;
        let vfio_err = |op: &'static str| {
            move |source| Error::Vfio {
                addr: addr.into(),
                op,
                source,
            }
        };
        device
            .enable_bus_master()
            .map_err(vfio_err("enable bus mastering (PCI command register)"))?;
        let bar0 = device
            .region_info(vfio::BAR0_REGION)
            .map_err(vfio_err("GET_REGION_INFO BAR0"))?;
        let (ptr, len) = device.map_region(&bar0).map_err(vfio_err("mmap BAR0"))?;
        // SAFETY: (ptr, len) is a fresh mapping of BAR0 that only this Bar will unmap.
        let bar =
            Arc::new(
                unsafe { Bar::from_mmap(ptr, len) }.ok_or_else(|| Error::Unsupported {
                    addr: addr.into(),
                    what: "BAR0 mapped at address 0".into(),
                })?,
            );
        if len < reg::DOORBELLS + 8 {
            return Err(Error::Unsupported {
                addr: addr.into(),
                what: format!("BAR0 of {len} bytes"),
            });
        }
        let iommu = Iommu::vfio(container)?;
        let cap = Cap(bar.read64(reg::CAP));
        if cap.css() & 1 == 0 {
            return Err(Error::Unsupported {
                addr: addr.into(),
                what: "the NVM command set (CAP.CSS)".into(),
            });
        }
        if cap.mpsmin() > PAGE_SIZE {
            return Err(Error::Unsupported {
                addr: addr.into(),
                what: format!("minimum page size {}", cap.mpsmin()),
            });
        }
        let entries = 32u16.min(cap.mqes() as u16);
        let stride = cap.doorbell_stride();
        let mut aq = AdminQueue {
            sq: iommu.alloc(entries as usize * 64)?,
            cq: iommu.alloc(entries as usize * 16)?,
            entries,
            tail: 0,
            head: 0,
            phase: 1,
            next_cid: 0,
            sq_db: bar.doorbell(reg::DOORBELLS),
            cq_db: bar.doorbell(reg::DOORBELLS + stride),
            shadow: None,
            data: iommu.alloc(PAGE_SIZE)?,
        };
        enable(addr, &bar, cap, &mut aq)?;
        let t = opts.admin_timeout;
        aq.exec(
            addr,
            &bar,
            "Identify Controller",
            identify(cns::CONTROLLER, 0),
            t,
        )?;
        let raw: IdentifyController = spec::from_bytes(&aq.data)
            .ok_or_else(|| Error::InvalidArgument("identify buffer too small".into()))?;
        let version = bar.read32(reg::VS);
        let info = ControllerInfo {
            vid: raw.vid,
            ssvid: raw.ssvid,
            serial: ascii(&raw.sn),
            model: ascii(&raw.mn),
            firmware: ascii(&raw.fr),
            mdts: raw.mdts,
            max_transfer: (raw.mdts != 0).then(|| cap.mpsmin() << raw.mdts),
            cntlid: raw.cntlid,
            version,
            oacs: raw.oacs,
            oncs: raw.oncs,
            vwc: raw.vwc,
            nn: raw.nn,
            acl: raw.acl,
            raw: Box::new(raw),
        };
        // Active namespace list (CNS 02h): up to 1024 NSIDs greater than 0, zero-terminated.
        aq.exec(
            addr,
            &bar,
            "Identify Active Namespace List",
            identify(cns::ACTIVE_NAMESPACES, 0),
            t,
        )?;
        let nsids: Vec<u32> = aq
            .data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .take_while(|&n| n != 0)
            .collect();
        let mut namespaces = Vec::new();
        for nsid in nsids {
            aq.exec(
                addr,
                &bar,
                "Identify Namespace",
                identify(cns::NAMESPACE, nsid),
                t,
            )?;
            let ns: IdentifyNamespace = spec::from_bytes(&aq.data)
                .ok_or_else(|| Error::InvalidArgument("identify buffer too small".into()))?;
            if ns.nsze > 0 {
                namespaces.push(Namespace::from_identify(nsid, &ns, &raw));
            }
        }
        let granted = set_queue_count(addr, &bar, &mut aq, opts.io_queues, t)?;
        let dbbuf = if opts.shadow_doorbells && raw.oacs & spec::OACS_DBBUF != 0 {
            let pages = (iommu.alloc(PAGE_SIZE)?, iommu.alloc(PAGE_SIZE)?);
            config_dbbuf(addr, &bar, &mut aq, &pages, t)?;
            aq.shadow = shadow_slots_of(&pages, cap, 0);
            Some(pages)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            addr: addr.into(),
            bar,
            cap,
            iommu,
            admin: Mutex::new(aq),
            health: Health::default(),
            info,
            namespaces,
            dbbuf,
            qids: Mutex::new(vec![false; granted as usize + 1]),
            granted,
            opts,
            device: Mutex::new(None),
            pmr: Mutex::new(Weak::new()),
            watcher_stop: None,
        });
        let shared = start_removal_watcher(shared, device);
        Ok(Self { shared })
    }

    pub fn address(&self) -> &str {
        &self.shared.addr
    }
    pub fn info(&self) -> &ControllerInfo {
        &self.shared.info
    }
    pub fn cap(&self) -> Cap {
        self.shared.cap
    }
    /// Active namespaces, by NSID.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.shared.namespaces
    }
    pub fn namespace(&self, nsid: u32) -> Result<Namespace> {
        self.shared
            .namespaces
            .iter()
            .find(|n| n.nsid == nsid)
            .copied()
            .ok_or_else(|| Error::NoSuchNamespace {
                addr: self.shared.addr.clone(),
                nsid,
            })
    }
    /// I/O queue pairs the controller granted.
    pub fn max_queue_pairs(&self) -> u16 {
        self.shared.granted
    }
    /// True when queue pairs created from now on use shadow doorbells.
    pub fn shadow_doorbells(&self) -> bool {
        self.shared.dbbuf.is_some()
    }
    /// How many controller resets have happened since open.
    pub fn resets(&self) -> u64 {
        self.shared.health.resets()
    }
    /// Why the controller was declared dead, if it was: then every queue pair fails its commands with
    /// [`crate::IoError::ControllerDead`] and refuses new ones with [`crate::SubmitErrorKind::ControllerDead`].
    pub fn dead(&self) -> Option<DeathCause> {
        self.shared.health.dead()
    }
    /// Buffers kept out of the DMA pool because the device might still write them (commands failed without
    /// the device's answer, rings of queues that could not be deleted). They are freed with the controller.
    pub fn quarantined_buffers(&self) -> usize {
        self.shared.health.quarantined()
    }
    /// The DMA address space of this controller, for allocating I/O buffers.
    pub fn dma(&self) -> &Arc<Iommu> {
        &self.shared.iommu
    }
    /// Allocates a DMA buffer the controller can read and write.
    pub fn alloc(&self, len: usize) -> Result<DmaBuf> {
        self.shared.iommu.alloc(len)
    }

    /// Creates an I/O queue pair with default sizes (capped at CAP.MQES).
    pub fn queue_pair(&self) -> Result<QueuePair> {
        self.queue_pair_with(QueueConfig::default())
    }

    /// Creates an I/O queue pair with the given sizes (capped at CAP.MQES). It uses shadow doorbells when the
    /// controller was opened with them: Doorbell Buffer Config covers every queue of a controller (QEMU then
    /// reads every SQ tail from the shadow page), so the choice is per controller, in [`ControllerOptions`].
    pub fn queue_pair_with(&self, mut config: QueueConfig) -> Result<QueuePair> {
        let config = config_cap(&mut config, self.shared.cap);
        let s = &self.shared;
        s.refuse_if_dead()?;
        let shadow = s.dbbuf.is_some();
        let qid = {
            let mut q = lock(&s.qids);
            let Some(i) = (1..q.len()).find(|&i| !q[i]) else {
                return Err(Error::NoQueues {
                    addr: s.addr.clone(),
                    granted: s.granted,
                });
            };
            q[i] = true;
            i as u16
        };
        let max_transfer = s.info.max_transfer.unwrap_or(usize::MAX);
        let owner: Arc<dyn QueueOwner> = s.clone();
        let qp = QueuePair::allocate(QueueParts {
            qid,
            config,
            bar: s.bar.clone(),
            doorbell_stride: s.cap.doorbell_stride(),
            iommu: s.iommu.clone(),
            max_transfer,
            owner: None,
            use_shadow: shadow,
        });
        let mut qp = match qp {
            Ok(q) => q,
            Err(e) => {
                s.release_qid(qid);
                return Err(e);
            }
        };
        s.create_queues_checked(
            qid,
            qp.sq_iova(),
            qp.sq_entries(),
            qp.cq_iova(),
            qp.cq_entries(),
        )
        .inspect_err(|_| {
            s.release_qid(qid);
        })?;
        qp.attach(owner, shadow);
        Ok(qp)
    }

    /// Resets the controller (CC.EN 1 → 0 → 1), re-creates the admin queue and the queue count, and bumps the
    /// reset generation; each queue pair notices at its next poll, fails its in-flight requests with
    /// `IoError::ControllerReset`, and re-creates its queues.
    pub fn reset(&self) -> Result<()> {
        self.shared.reset_inner(None)
    }

    /// Sends Abort for command `cid` of queue `qid`. Returns whether the controller accepted the abort.
    pub fn abort(&self, qid: u16, cid: u16) -> Result<()> {
        let s = &self.shared;
        let mut e = SubmissionEntry::new(admin::ABORT, 0, 0);
        e.cdw10 = qid as u32 | (cid as u32) << 16;
        s.admin_exec("Abort", e, s.opts.admin_timeout).map(|_| ())
    }

    /// Sends Identify Namespace (CNS 00h) for `nsid` and returns the whole data structure (for tools such as
    /// `nvkv-identify` that print fields the decoded [`Namespace`] leaves out).
    pub fn identify_namespace(&self, nsid: u32) -> Result<Box<IdentifyNamespace>> {
        let s = &self.shared;
        s.refuse_if_dead()?;
        let mut aq = lock(&s.admin);
        aq.exec(
            &s.addr,
            &s.bar,
            "Identify Namespace",
            identify(cns::NAMESPACE, nsid),
            s.opts.admin_timeout,
        )
        .inspect_err(|e| s.note(e))?;
        let ns: IdentifyNamespace = spec::from_bytes(&aq.data)
            .ok_or_else(|| Error::InvalidArgument("identify buffer too small".into()))?;
        Ok(Box::new(ns))
    }

    /// The controller's Persistent Memory Region, enabled and mapped (see [`crate::pmr`]); `Ok(None)` when
    /// CAP.PMRS says there is none. One [`Pmr`] at a time: while it or a slice of it lives, another call
    /// fails with [`PmrError::InUse`].
    pub fn pmr(&self) -> std::result::Result<Option<Pmr>, PmrError> {
        let s = &self.shared;
        if !s.cap.pmrs() {
            return Ok(None);
        }
        let dead = |cause| PmrError::ControllerDead {
            addr: s.addr.clone(),
            cause,
        };
        if let Some(cause) = s.health.dead() {
            return Err(dead(cause));
        }
        let mut slot = lock(&s.pmr);
        if slot.upgrade().is_some() {
            return Err(PmrError::InUse {
                addr: s.addr.clone(),
            });
        }
        let device = lock(&s.device);
        let device = device.as_ref().ok_or_else(|| dead(DeathCause::Removed))?;
        let pmr = pmr::bring_up(&s.addr, &s.bar, device, self.clone())?;
        *slot = pmr.mapping();
        Ok(Some(pmr))
    }

    /// The PMR registers, decoded, as they are now (None when CAP.PMRS = 0); nothing is enabled. Reading
    /// PMRSTS is the write barrier of PMRWBM bit 1 (QEMU msyncs the PMR's backing file): not free.
    pub fn pmr_registers(&self) -> Option<PmrRegisters> {
        self.shared
            .cap
            .pmrs()
            .then(|| PmrRegisters::read(&self.shared.bar))
    }

    /// Get Features (Volatile Write Cache): whether the write cache is enabled now (WCE, bit 0 of the
    /// completion's Dword 0). Identify Controller's VWC bit 0 says only whether one is present.
    pub fn volatile_write_cache_enabled(&self) -> Result<bool> {
        let s = &self.shared;
        let mut e = SubmissionEntry::new(admin::GET_FEATURES, 0, 0);
        e.cdw10 = feature::VOLATILE_WRITE_CACHE;
        s.admin_exec(
            "Get Features (Volatile Write Cache)",
            e,
            s.opts.admin_timeout,
        )
        .map(|dw0| dw0 & 1 == 1)
    }

    /// Get Features / Set Features (Volatile Write Cache).
    pub fn set_volatile_write_cache(&self, on: bool) -> Result<()> {
        let s = &self.shared;
        let mut e = SubmissionEntry::new(admin::SET_FEATURES, 0, 0);
        e.cdw10 = feature::VOLATILE_WRITE_CACHE;
        e.cdw11 = on as u32;
        s.admin_exec(
            "Set Features (Volatile Write Cache)",
            e,
            s.opts.admin_timeout,
        )
        .map(|_| ())
    }
}

fn config_cap(config: &mut QueueConfig, cap: Cap) -> QueueConfig {
    let mqes = cap.mqes().min(u16::MAX as u32) as u16;
    config.sq_entries = config.sq_entries.min(mqes);
    config.cq_entries = config.cq_entries.min(mqes).max(config.sq_entries);
    *config
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the admin lock leaves the queue in a state the next command's timeout handles.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn identify(cns: u32, nsid: u32) -> SubmissionEntry {
    let mut e = SubmissionEntry::new(admin::IDENTIFY, 0, nsid);
    e.cdw10 = cns;
    e
}
