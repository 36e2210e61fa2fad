//! Controller bring-up, the admin queue, Identify, queue creation, reset and orderly shutdown.
//!
//! The admin queue is the only shared part of the driver and sits behind a mutex; it is used at set-up, for
//! queue (re)creation, aborts and resets — never on the I/O path.

use crate::dma::{DmaBuf, Iommu, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::health::{csts_health, Csts, DeathCause, Health};
use crate::mmio::{Bar, Doorbell};
use crate::namespace::Namespace;
use crate::queue::{QueueConfig, QueueOwner, QueuePair, QueueParts, ShadowSlots};
use crate::spec::{
    self, admin, cc, cns, csts, feature, reg, Cap, CompletionEntry, IdentifyController,
    IdentifyNamespace, SubmissionEntry,
};
use crate::status::NvmeStatus;
use crate::vfio;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

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

struct AdminQueue {
    sq: DmaBuf,
    cq: DmaBuf,
    entries: u16,
    tail: u16,
    head: u16,
    phase: u16,
    next_cid: u16,
    sq_db: Doorbell,
    cq_db: Doorbell,
    /// The admin queue's shadow slots once Doorbell Buffer Config is done: the tail and head are written there
    /// too (always with the MMIO write as well), so a controller that reads the admin queue's doorbells from
    /// the shadow page sees the same values as one that does not.
    shadow: Option<ShadowSlots>,
    /// One page for Identify data and other admin payloads.
    data: DmaBuf,
}

// SAFETY: the shadow slots point into the Doorbell Buffer pages owned by the same Shared; the admin queue is
// used under its mutex only.
unsafe impl Send for AdminQueue {}

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

/// Registers for VFIO's device request (hot-removal) and starts a thread that waits for it; hands `device` to
/// the shared state. Without the notification (an old kernel), the controller still works: a removal is then
/// noticed by the all-ones reads only, and the kernel waits until the process closes the device.
fn start_removal_watcher(mut shared: Arc<Shared>, device: vfio::Device) -> Arc<Shared> {
    let notifier = device.request_notifier().ok();
    // SAFETY: eventfd takes no pointers; a non-negative return is a new descriptor nothing else owns.
    let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    let stop = (stop >= 0).then(|| {
        // SAFETY: stop is a fresh descriptor (checked just above).
        unsafe { OwnedFd::from_raw_fd(stop) }
    });
    *lock(&shared.device) = Some(device);
    let (Some(req), Some(stop)) = (notifier, stop) else {
        return shared;
    };
    let Ok(stop_watch) = stop.try_clone() else {
        return shared;
    };
    if let Some(s) = Arc::get_mut(&mut shared) {
        s.watcher_stop = Some(stop);
    } else {
        return shared;
    }
    let weak: Weak<Shared> = Arc::downgrade(&shared);
    let spawned = std::thread::Builder::new()
        .name("nvme-removal".into())
        .spawn(move || {
            let mut fds = [
                libc::pollfd {
                    fd: req.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop_watch.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            loop {
                // SAFETY: fds is a valid array of two pollfd for the duration of the call.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                if n < 0 || fds[1].revents != 0 {
                    return;
                }
                if fds[0].revents != 0 {
                    if let Some(s) = weak.upgrade() {
                        s.removed();
                    }
                    return;
                }
            }
        });
    drop(spawned);
    shared
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

fn wait_ready(addr: &str, bar: &Bar, cap: Cap, ready: bool) -> Result<()> {
    let ms = cap.timeout_ms();
    let deadline = Instant::now() + Duration::from_millis(ms);
    loop {
        let s = bar.read32(reg::CSTS);
        match csts_health(s) {
            Csts::Gone => {
                return Err(Error::ControllerDead {
                    addr: addr.into(),
                    cause: DeathCause::AllOnes,
                })
            }
            Csts::Fatal if ready => return Err(Error::ControllerFatal { addr: addr.into() }),
            _ => {}
        }
        if (s & csts::RDY != 0) == ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            let what = if ready {
                "become ready (CSTS.RDY=1)"
            } else {
                "disable (CSTS.RDY=0)"
            };
            return Err(Error::Timeout {
                addr: addr.into(),
                what,
                ms,
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Disables the controller, programs the admin queues, enables it (NVMe Base spec 3.5.1).
fn enable(addr: &str, bar: &Bar, cap: Cap, aq: &mut AdminQueue) -> Result<()> {
    let c = bar.read32(reg::CC);
    if c & cc::EN != 0 {
        bar.write32(reg::CC, c & !cc::EN);
    }
    wait_ready(addr, bar, cap, false)?;
    aq.shadow = None;
    aq.sq.fill(0);
    aq.cq.fill(0);
    aq.tail = 0;
    aq.head = 0;
    aq.phase = 1;
    let n = aq.entries as u32 - 1;
    bar.write32(reg::AQA, n << 16 | n);
    bar.write64(reg::ASQ, aq.sq.iova());
    bar.write64(reg::ACQ, aq.cq.iova());
    bar.write32(reg::INTMS, u32::MAX);
    let mps = (PAGE_SIZE.trailing_zeros() - 12) << cc::MPS_SHIFT;
    bar.write32(
        reg::CC,
        cc::EN | cc::CSS_NVM | mps | cc::AMS_RR | cc::IOSQES_64 | cc::IOCQES_16,
    );
    wait_ready(addr, bar, cap, true)
}

fn set_queue_count(
    addr: &str,
    bar: &Bar,
    aq: &mut AdminQueue,
    want: u16,
    t: Duration,
) -> Result<u16> {
    let want = want.clamp(1, 0xfffe) as u32 - 1;
    let mut e = SubmissionEntry::new(admin::SET_FEATURES, 0, 0);
    e.cdw10 = feature::NUMBER_OF_QUEUES;
    e.cdw11 = want | want << 16;
    let dw0 = aq.exec(addr, bar, "Set Features (Number of Queues)", e, t)?;
    let nsqa = (dw0 & 0xffff) as u16;
    let ncqa = (dw0 >> 16) as u16;
    Ok(nsqa.min(ncqa).saturating_add(1))
}

fn config_dbbuf(
    addr: &str,
    bar: &Bar,
    aq: &mut AdminQueue,
    pages: &(DmaBuf, DmaBuf),
    t: Duration,
) -> Result<()> {
    let mut e = SubmissionEntry::new(admin::DOORBELL_BUFFER_CONFIG, 0, 0);
    e.prp1 = pages.0.iova();
    e.prp2 = pages.1.iova();
    aq.exec(addr, bar, "Doorbell Buffer Config", e, t)
        .map(|_| ())
}

/// The shadow doorbell and EventIdx slots of queue `qid` in the Doorbell Buffer pages: slot `2 * qid` (SQ tail)
/// and `2 * qid + 1` (CQ head), each `4 << CAP.DSTRD` bytes apart, as the doorbell registers are.
fn shadow_slots_of(pages: &(DmaBuf, DmaBuf), cap: Cap, qid: u16) -> Option<ShadowSlots> {
    let (db, ei) = pages;
    let stride = cap.doorbell_stride();
    let sq = 2 * qid as usize * stride;
    let cq = (2 * qid as usize + 1) * stride;
    if cq + 4 > PAGE_SIZE {
        return None;
    }
    // SAFETY: offsets checked to lie inside the two PAGE_SIZE pages, which live as long as Shared.
    unsafe {
        Some(ShadowSlots {
            sq_db: db.as_ptr().add(sq) as *mut u32,
            sq_ei: ei.as_ptr().add(sq) as *mut u32,
            cq_db: db.as_ptr().add(cq) as *mut u32,
            cq_ei: ei.as_ptr().add(cq) as *mut u32,
        })
    }
}

impl AdminQueue {
    /// Runs one admin command to completion and returns DW0 of its completion. Data-in commands use the
    /// queue's data page as PRP1 unless the entry already has one.
    fn exec(
        &mut self,
        addr: &str,
        bar: &Bar,
        command: &'static str,
        mut e: SubmissionEntry,
        t: Duration,
    ) -> Result<u32> {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        e.cdw0 = (e.cdw0 & 0xffff) | (cid as u32) << 16;
        if e.prp1 == 0
            && matches!(
                e.opcode(),
                admin::IDENTIFY | admin::GET_LOG_PAGE | admin::GET_FEATURES
            )
        {
            self.data.fill(0);
            e.prp1 = self.data.iova();
        }
        // SAFETY: tail < entries: the slot is inside the admin SQ; one command is outstanding at a time.
        unsafe {
            (self.sq.as_mut_ptr() as *mut SubmissionEntry)
                .add(self.tail as usize)
                .write(e)
        };
        self.tail = (self.tail + 1) % self.entries;
        fence(Ordering::Release);
        if let Some(s) = self.shadow {
            // SAFETY: the slots point into the live Doorbell Buffer pages (see the field).
            unsafe { s.sq_db.write_volatile(self.tail as u32) };
            fence(Ordering::SeqCst);
        }
        self.sq_db.write(self.tail as u32);
        let deadline = Instant::now() + t;
        loop {
            // SAFETY: head < entries: inside the admin CQ ring written by the controller.
            let p = unsafe { (self.cq.as_ptr() as *const CompletionEntry).add(self.head as usize) };
            // SAFETY: aligned field of a live entry, written by DMA.
            let status = unsafe { core::ptr::addr_of!((*p).status).read_volatile() };
            if status & 1 == self.phase {
                fence(Ordering::Acquire);
                // SAFETY: as above; the phase tag says the entry is complete.
                let c = unsafe { p.read_volatile() };
                self.head = (self.head + 1) % self.entries;
                if self.head == 0 {
                    self.phase ^= 1;
                }
                if let Some(s) = self.shadow {
                    // SAFETY: as for the SQ tail above.
                    unsafe { s.cq_db.write_volatile(self.head as u32) };
                    fence(Ordering::SeqCst);
                }
                self.cq_db.write(self.head as u32);
                if c.cid != cid {
                    continue; // a late completion of an earlier command that timed out
                }
                return match NvmeStatus::from_completion(c.status) {
                    None => Ok(c.dw0),
                    Some(status) => Err(Error::Command {
                        addr: addr.into(),
                        command,
                        status,
                    }),
                };
            }
            match csts_health(bar.read32(reg::CSTS)) {
                Csts::Gone => {
                    return Err(Error::ControllerDead {
                        addr: addr.into(),
                        cause: DeathCause::AllOnes,
                    })
                }
                Csts::Fatal => return Err(Error::ControllerFatal { addr: addr.into() }),
                Csts::Ok => {}
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    addr: addr.into(),
                    what: command,
                    ms: t.as_millis() as u64,
                });
            }
            std::hint::spin_loop();
        }
    }

    /// Sends `entries` (commands without data, such as Abort) together, then waits until all have completed or
    /// `t` has passed; returns how many completed successfully by then. One wait for all: a batch of aborts
    /// costs one timeout, not one each.
    fn exec_batch(
        &mut self,
        addr: &str,
        bar: &Bar,
        entries: &[SubmissionEntry],
        t: Duration,
    ) -> Result<usize> {
        assert!(
            entries.len() < self.entries as usize,
            "admin batch larger than the admin SQ"
        );
        let first = self.next_cid;
        for e in entries {
            let mut e = *e;
            e.cdw0 = (e.cdw0 & 0xffff) | (self.next_cid as u32) << 16;
            self.next_cid = self.next_cid.wrapping_add(1);
            // SAFETY: tail < entries: the slot is inside the admin SQ; no other command is outstanding (the
            // admin lock is held and exec waits for its own), and the batch is smaller than the queue.
            unsafe {
                (self.sq.as_mut_ptr() as *mut SubmissionEntry)
                    .add(self.tail as usize)
                    .write(e)
            };
            self.tail = (self.tail + 1) % self.entries;
        }
        fence(Ordering::Release);
        if let Some(s) = self.shadow {
            // SAFETY: the slots point into the live Doorbell Buffer pages (see the field).
            unsafe { s.sq_db.write_volatile(self.tail as u32) };
            fence(Ordering::SeqCst);
        }
        self.sq_db.write(self.tail as u32);
        let deadline = Instant::now() + t;
        let (mut done, mut ok) = (0usize, 0usize);
        while done < entries.len() {
            // SAFETY: head < entries: inside the admin CQ ring written by the controller.
            let p = unsafe { (self.cq.as_ptr() as *const CompletionEntry).add(self.head as usize) };
            // SAFETY: aligned field of a live entry, written by DMA.
            let status = unsafe { core::ptr::addr_of!((*p).status).read_volatile() };
            if status & 1 == self.phase {
                fence(Ordering::Acquire);
                // SAFETY: as above; the phase tag says the entry is complete.
                let c = unsafe { p.read_volatile() };
                self.head = (self.head + 1) % self.entries;
                if self.head == 0 {
                    self.phase ^= 1;
                }
                if let Some(s) = self.shadow {
                    // SAFETY: as for the SQ tail above.
                    unsafe { s.cq_db.write_volatile(self.head as u32) };
                    fence(Ordering::SeqCst);
                }
                self.cq_db.write(self.head as u32);
                if c.cid.wrapping_sub(first) < entries.len() as u16 {
                    done += 1;
                    ok += NvmeStatus::from_completion(c.status).is_none() as usize;
                }
                continue;
            }
            match csts_health(bar.read32(reg::CSTS)) {
                Csts::Gone => {
                    return Err(Error::ControllerDead {
                        addr: addr.into(),
                        cause: DeathCause::AllOnes,
                    })
                }
                Csts::Fatal => return Err(Error::ControllerFatal { addr: addr.into() }),
                Csts::Ok => {}
            }
            if Instant::now() > deadline {
                break;
            }
            std::hint::spin_loop();
        }
        Ok(ok)
    }
}

/// The longest an abort batch or a queue pair's own recovery waits on the admin queue: a controller that has
/// not answered in a second is treated as stuck and escalated (reset, then dead), so a dead controller fails
/// its commands at most about a second after the stall timeout.
const ESCALATION_WAIT: Duration = Duration::from_secs(1);

impl Shared {
    /// The kernel asked for the device back (VFIO's request notification: a hot-removal or an unbind). The
    /// controller is dead from now on; the BAR mapping is replaced by memory that reads all ones (queue pairs may
    /// still write doorbells into it) and the device is closed, so the kernel can finish the removal while the
    /// application's handles live on and fail every command with `ControllerDead`.
    fn removed(&self) {
        self.health.mark_dead(DeathCause::Removed);
        // Under the admin lock: no admin command is in the middle of its register accesses.
        let _aq = lock(&self.admin);
        self.bar.retire();
        drop(lock(&self.device).take());
    }

    fn refuse_if_dead(&self) -> Result<()> {
        match self.health.dead() {
            Some(cause) => Err(Error::ControllerDead {
                addr: self.addr.clone(),
                cause,
            }),
            None => Ok(()),
        }
    }

    /// Declares the controller dead when an admin error says it is.
    fn note(&self, e: &Error) {
        if let Error::ControllerDead { cause, .. } = e {
            self.health.mark_dead(*cause);
        }
    }

    /// One admin command, unless the controller is dead.
    fn admin_exec(&self, command: &'static str, e: SubmissionEntry, t: Duration) -> Result<u32> {
        self.refuse_if_dead()?;
        lock(&self.admin)
            .exec(&self.addr, &self.bar, command, e, t)
            .inspect_err(|err| self.note(err))
    }

    fn create_queues_checked(
        &self,
        qid: u16,
        sq_iova: u64,
        sqe: u16,
        cq_iova: u64,
        cqe: u16,
    ) -> Result<()> {
        self.refuse_if_dead()?;
        let t = self.opts.admin_timeout;
        let mut aq = lock(&self.admin);
        if let Some(s) = self.shadow_slots(qid) {
            // SAFETY: the slots are inside the Doorbell Buffer pages Shared owns, and queue qid does not exist
            // on the controller now (never created, deleted, or gone with a reset).
            unsafe { s.clear() };
        }
        let mut e = SubmissionEntry::new(admin::CREATE_IO_CQ, 0, 0);
        e.prp1 = cq_iova;
        e.cdw10 = (cqe as u32 - 1) << 16 | qid as u32;
        e.cdw11 = 1; // physically contiguous, interrupts off: the queue is polled
        aq.exec(&self.addr, &self.bar, "Create I/O Completion Queue", e, t)
            .inspect_err(|err| self.note(err))?;
        let mut e = SubmissionEntry::new(admin::CREATE_IO_SQ, 0, 0);
        e.prp1 = sq_iova;
        e.cdw10 = (sqe as u32 - 1) << 16 | qid as u32;
        e.cdw11 = 1 | (qid as u32) << 16; // physically contiguous, CQ with the same id
        if let Err(err) = aq.exec(&self.addr, &self.bar, "Create I/O Submission Queue", e, t) {
            self.note(&err);
            let mut d = SubmissionEntry::new(admin::DELETE_IO_CQ, 0, 0);
            d.cdw10 = qid as u32;
            let _ = aq.exec(&self.addr, &self.bar, "Delete I/O Completion Queue", d, t);
            return Err(err);
        }
        Ok(())
    }

    /// Resets the controller; with `seen`, only if no reset happened since that generation (several queue pairs
    /// stalled at once reset it once). A failed reset declares the controller dead.
    fn reset_inner(&self, seen: Option<u64>) -> Result<()> {
        self.refuse_if_dead()?;
        let t = self.opts.admin_timeout;
        let mut aq = lock(&self.admin);
        if seen.is_some_and(|g| g != self.health.generation().load(Ordering::Acquire)) {
            return Ok(());
        }
        let r = self.reset_locked(&mut aq, t);
        if let Err(e) = &r {
            let cause = match e {
                Error::ControllerDead { cause, .. } => *cause,
                Error::ControllerFatal { .. } => DeathCause::Fatal,
                _ => DeathCause::ResetFailed,
            };
            self.health.mark_dead(cause);
        }
        r
    }

    fn reset_locked(&self, aq: &mut AdminQueue, t: Duration) -> Result<()> {
        enable(&self.addr, &self.bar, self.cap, aq)?;
        set_queue_count(&self.addr, &self.bar, aq, self.opts.io_queues, t)?;
        if let Some(pages) = &self.dbbuf {
            // SAFETY: the pages are owned by Shared; the controller is freshly enabled and has not been told
            // about them yet; the queue pairs re-read their slots only after the generation bump below.
            unsafe {
                core::ptr::write_bytes(pages.0.as_ptr() as *mut u8, 0, PAGE_SIZE);
                core::ptr::write_bytes(pages.1.as_ptr() as *mut u8, 0, PAGE_SIZE);
            }
            config_dbbuf(&self.addr, &self.bar, aq, pages, t)?;
            aq.shadow = shadow_slots_of(pages, self.cap, 0);
        }
        self.health.bump();
        Ok(())
    }
}

impl QueueOwner for Shared {
    fn generation(&self) -> &AtomicU64 {
        self.health.generation()
    }

    fn shadow_slots(&self, qid: u16) -> Option<ShadowSlots> {
        shadow_slots_of(self.dbbuf.as_ref()?, self.cap, qid)
    }

    fn create_queues(&self, qid: u16, sq_iova: u64, sqe: u16, cq_iova: u64, cqe: u16) -> bool {
        self.create_queues_checked(qid, sq_iova, sqe, cq_iova, cqe)
            .is_ok()
    }

    fn delete_queues(&self, qid: u16, quick: bool) -> bool {
        if self.health.dead().is_some() {
            return false;
        }
        let t = if quick {
            self.opts.admin_timeout.min(ESCALATION_WAIT)
        } else {
            self.opts.admin_timeout
        };
        let mut aq = lock(&self.admin);
        let mut e = SubmissionEntry::new(admin::DELETE_IO_SQ, 0, 0);
        e.cdw10 = qid as u32;
        let sq = aq.exec(&self.addr, &self.bar, "Delete I/O Submission Queue", e, t);
        let mut e = SubmissionEntry::new(admin::DELETE_IO_CQ, 0, 0);
        e.cdw10 = qid as u32;
        let cq = aq.exec(&self.addr, &self.bar, "Delete I/O Completion Queue", e, t);
        for r in [&sq, &cq] {
            if let Err(err) = r {
                self.note(err);
            }
        }
        sq.is_ok() && cq.is_ok()
    }

    fn abort_many(&self, qid: u16, cids: &[u16]) -> usize {
        if self.health.dead().is_some() {
            return 0;
        }
        // At most ACL + 1 Aborts may be outstanding (ACL is 0's based), and the batch must fit the admin SQ.
        let group = (self.info.acl as usize + 1).clamp(1, 16);
        let t = self.opts.admin_timeout.min(ESCALATION_WAIT);
        let mut aq = lock(&self.admin);
        let mut accepted = 0;
        for chunk in cids.chunks(group) {
            let entries: Vec<SubmissionEntry> = chunk
                .iter()
                .map(|&cid| {
                    let mut e = SubmissionEntry::new(admin::ABORT, 0, 0);
                    e.cdw10 = qid as u32 | (cid as u32) << 16;
                    e
                })
                .collect();
            match aq.exec_batch(&self.addr, &self.bar, &entries, t) {
                Ok(n) => {
                    accepted += n;
                    if n < chunk.len() {
                        break; // not all answered in time: stop, the caller escalates
                    }
                }
                Err(err) => {
                    self.note(&err);
                    break;
                }
            }
        }
        accepted
    }

    fn reset(&self, seen: u64) -> bool {
        self.reset_inner(Some(seen)).is_ok()
    }

    fn release_qid(&self, qid: u16) {
        if let Some(slot) = lock(&self.qids).get_mut(qid as usize) {
            *slot = false;
        }
    }

    fn check_health(&self) -> bool {
        if self.health.dead().is_some() {
            return false;
        }
        match csts_health(self.bar.read32(reg::CSTS)) {
            Csts::Ok => true,
            Csts::Gone => {
                self.health.mark_dead(DeathCause::AllOnes);
                false
            }
            // CFS: the spec's answer is a reset; a failed one declares the controller dead.
            Csts::Fatal => self.reset_inner(None).is_ok(),
        }
    }

    fn quarantine(&self, buf: DmaBuf) {
        self.health.quarantine(buf);
    }
}

impl Drop for Shared {
    /// Orderly shutdown: CC.SHN = normal, then wait for CSTS.SHST = complete (bounded by RTD3E, at least 5 s).
    /// Nothing is waited for on a dead controller, or one whose registers read all ones.
    fn drop(&mut self) {
        if let Some(stop) = &self.watcher_stop {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd this value owns.
            unsafe { libc::write(stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
        if self.health.dead().is_some() {
            return;
        }
        let c = self.bar.read32(reg::CC);
        if c & cc::EN == 0 || c == u32::MAX {
            return;
        }
        self.bar
            .write32(reg::CC, (c & !cc::SHN_MASK) | cc::SHN_NORMAL);
        let us = (self.info.raw.rtd3e as u64).max(5_000_000);
        let deadline = Instant::now() + Duration::from_micros(us);
        loop {
            let s = self.bar.read32(reg::CSTS);
            if s == u32::MAX
                || s & csts::SHST_MASK == csts::SHST_COMPLETE
                || Instant::now() >= deadline
            {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}
