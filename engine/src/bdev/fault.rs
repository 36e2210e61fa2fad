//! A fault-injecting wrapper backend for the deterministic simulator (`engine/tests/sim`).
//!
//! [`FaultBdev`] forwards every request to an inner device (in practice a [`super::MemBdev`]) and, driven
//! by a seeded generator held in the shared [`FaultDisk`], does what a real device is allowed to do:
//!
//! - keeps a **volatile write cache** model: a write is durable only once a Flush *submitted after the
//!   write completed* has completed (NVMe's Flush is namespace-wide, so this is tracked across the
//!   instances sharing one disk). The durable image and the not-yet-durable writes are kept apart, so
//!   [`FaultDisk::crash`] can build what a power loss leaves: the durable image plus any subset of the
//!   blocks of the writes in flight or in the cache (dropped, landed, torn; optionally a torn sector);
//! - completes ready requests **out of order** and holds some back for a few polls;
//! - fails writes, reads and flushes with `EIO` (once, or persistently for an LBA range: a bad block),
//!   refuses submissions with `Busy`, and performs a **controller reset** that fails every request in
//!   flight at once.
//!
//! Everything random comes from one [`SplitMix64`] seeded by the caller, so a single-threaded user
//! (one `Shard`) sees the same faults for the same seed, bit for bit. Instances on several threads
//! (the `Db` handle path) share the generator, so their interleaving makes that path timing-dependent.
//!
//! A hang detector is built in ([`FaultConfig::hang_polls`]): a caller that polls that many times
//! without the test marking progress ([`FaultDisk::note_progress`]) is stuck in a loop that waits for
//! something that never comes; the device then panics with a [`SimHang`] payload, which the simulator
//! catches and reports. That is the only way out of a single-threaded wait loop inside the engine.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{BlockDevice, Completion, DeviceFactory, IoError, SubmitError};

mod config;
pub use config::{FaultConfig, FaultCounters, SplitMix64};

/// The payload of the panic raised when a caller polls without end (see the module docs).
#[derive(Debug, Clone)]
pub struct SimHang {
    /// Polls seen since the last progress mark.
    pub polls: u64,
    /// Requests outstanding at that moment.
    pub outstanding: usize,
}

/// Where a not-yet-durable write is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WState {
    /// Submitted, completion not delivered.
    InFlight,
    /// Completed successfully: in the volatile cache until a later Flush completes.
    Completed,
    /// Completed with an error: its blocks hold either bytes (a failed write may have landed).
    Failed,
}

#[derive(Debug)]
struct PendingWrite {
    lba: u64,
    data: Vec<u8>,
    state: WState,
}

#[derive(Debug)]
struct State {
    rng: SplitMix64,
    cfg: FaultConfig,
    bs: usize,
    /// What the medium holds for sure.
    durable: Vec<u8>,
    /// Per block, the id of the write whose bytes `durable` holds (0: the initial image): an older
    /// write never replaces a newer one's bytes, whatever order flushes complete in.
    durable_wid: Vec<u64>,
    /// Writes not yet durable, by id (ids increase in submission order).
    pending: BTreeMap<u64, PendingWrite>,
    next_wid: u64,
    powered: bool,
    bad: Vec<(u64, u64)>,
    counters: FaultCounters,
    polls_since_progress: u64,
    outstanding: usize,
    /// Submissions left before a scheduled power loss.
    crash_in: Option<u64>,
    /// The image a scheduled power loss left.
    crash_image: Option<Vec<u8>>,
    /// The hang the detector declared, if it did (a caller on another thread may not see the panic).
    hang: Option<SimHang>,
}

impl State {
    fn power_off(&mut self, all_land: bool) -> Vec<u8> {
        let st = self;
        st.powered = false;
        st.counters.crashes += u64::from(!all_land);
        let bs = st.bs;
        let mut img = st.durable.clone();
        let mut wids = st.durable_wid.clone();
        let pending = std::mem::take(&mut st.pending);
        for (wid, w) in &pending {
            let nb = w.data.len() / bs.max(1);
            // 0: dropped, 1: landed, 2: torn (each block independently).
            let mode = if all_land { 1 } else { st.rng.below(3) };
            if mode == 2 {
                st.counters.torn_writes += 1;
            }
            for i in 0..nb {
                let lands = match mode {
                    0 => false,
                    1 => true,
                    _ => st.rng.below(2) == 0,
                };
                if !lands {
                    st.counters.blocks_dropped += 1;
                    continue;
                }
                st.counters.blocks_landed += 1;
                let mut blk = w.data[i * bs..(i + 1) * bs].to_vec();
                if !all_land && st.rng.chance(st.cfg.torn_sector_ppm) {
                    // Only a prefix of 64-byte pieces is new; the rest keeps what was there.
                    st.counters.torn_sectors += 1;
                    let pieces = (bs / 64).max(1) as u64;
                    let keep = (1 + st.rng.below(pieces.saturating_sub(1).max(1))) as usize * 64;
                    let b = w.lba as usize + i;
                    if b < wids.len() {
                        blk[keep.min(bs)..]
                            .copy_from_slice(&img[b * bs + keep.min(bs)..(b + 1) * bs]);
                    }
                }
                State::apply(&mut img, &mut wids, bs, *wid, w.lba + i as u64, &blk);
            }
        }
        img
    }

    fn overlaps_bad(&self, lba: u64, n: u64) -> bool {
        self.bad.iter().any(|&(b, bn)| lba < b + bn && b < lba + n)
    }

    /// Writes the bytes of write `wid` into `img` block by block, unless a newer write's are there.
    fn apply(img: &mut [u8], wids: &mut [u64], bs: usize, wid: u64, lba: u64, data: &[u8]) {
        for (i, blk) in data.chunks(bs).enumerate() {
            let b = lba as usize + i;
            if b < wids.len() && wids[b] < wid {
                img[b * bs..b * bs + blk.len()].copy_from_slice(blk);
                wids[b] = wid;
            }
        }
    }
}

/// The controller the test holds: shared state of every [`FaultBdev`] instance on one disk.
#[derive(Debug, Clone)]
pub struct FaultDisk {
    st: Arc<Mutex<State>>,
}

impl FaultDisk {
    /// A controller over a disk whose current contents (all durable) are `image`.
    pub fn new(block_size: u32, image: Vec<u8>, seed: u64, cfg: FaultConfig) -> Self {
        let bs = block_size as usize;
        let nblocks = image.len() / bs.max(1);
        FaultDisk {
            st: Arc::new(Mutex::new(State {
                rng: SplitMix64::new(seed),
                cfg,
                bs,
                durable: image,
                durable_wid: vec![0; nblocks],
                pending: BTreeMap::new(),
                next_wid: 1,
                powered: true,
                bad: Vec::new(),
                counters: FaultCounters::default(),
                polls_since_progress: 0,
                outstanding: 0,
                crash_in: None,
                crash_image: None,
                hang: None,
            })),
        }
    }

    /// A controller over `disk` (its bytes taken as durable), and the disk's instances wrapped.
    pub fn over_mem(disk: &super::MemDisk, seed: u64, cfg: FaultConfig) -> Self {
        Self::new(disk.block_size(), disk.image(), seed, cfg)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (the hang detector) leaves consistent state behind.
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wraps `dev` (which must show the bytes this controller was created with).
    pub fn wrap<D: BlockDevice>(&self, dev: D) -> FaultBdev<D> {
        FaultBdev {
            inner: dev,
            disk: self.clone(),
            next_tag: 0,
            reqs: HashMap::new(),
            ready: VecDeque::new(),
        }
    }

    /// Replaces the fault probabilities (e.g. none during a check, many during a storm).
    pub fn set_config(&self, cfg: FaultConfig) {
        self.lock().cfg = cfg;
    }

    /// The current fault configuration.
    pub fn config(&self) -> FaultConfig {
        self.lock().cfg.clone()
    }

    /// Counters so far.
    pub fn counters(&self) -> FaultCounters {
        self.lock().counters.clone()
    }

    /// The caller made progress (an operation finished): resets the hang detector.
    pub fn note_progress(&self) {
        self.lock().polls_since_progress = 0;
    }

    /// Marks `n` blocks at `lba` bad: every request touching them fails from now on.
    pub fn mark_bad(&self, lba: u64, n: u64) {
        let mut st = self.lock();
        st.bad.push((lba, n));
        st.counters.bad_ranges += 1;
    }

    /// Forgets every bad range (the medium was replaced, e.g. a crash image moved to a fresh disk).
    pub fn clear_bad(&self) {
        self.lock().bad.clear();
    }

    /// Number of writes not yet durable (in flight, cached, or failed and undecided).
    pub fn unflushed_writes(&self) -> usize {
        self.lock().pending.len()
    }

    /// The durable image alone (what a power loss that drops every unflushed write leaves).
    pub fn durable_image(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// Power loss: the device stops (every request outstanding fails, every new one is refused) and
    /// the image the medium is left with is returned: the durable image plus, for each write not yet
    /// durable, none, all or a random subset of its blocks (a torn write), applied in submission order
    /// per block (a cache never lets an older write's bytes replace a newer one's).
    pub fn crash(&self) -> Vec<u8> {
        self.power_off(false)
    }

    /// A process restart without power loss: every write submitted reaches the medium.
    pub fn restart_image(&self) -> Vec<u8> {
        self.power_off(true)
    }

    fn power_off(&self, all_land: bool) -> Vec<u8> {
        let mut st = self.lock();
        st.crash_in = None;
        match st.crash_image.take() {
            // Already off by a scheduled power loss: that moment's image is the one.
            Some(img) => img,
            None => st.power_off(all_land),
        }
    }

    /// Schedules a power loss at the `n`-th submission from now (0: the next one), so a crash can land
    /// in the middle of an operation (a checkpoint, a GC step, recovery); the request is refused as if
    /// the device were gone. [`FaultDisk::crash`] then returns the image of that moment.
    pub fn schedule_crash(&self, n: u64) {
        self.lock().crash_in = Some(n);
    }

    /// The hang the detector declared, if any.
    pub fn hang(&self) -> Option<SimHang> {
        self.lock().hang.clone()
    }

    /// Cancels a scheduled power loss that has not happened yet.
    pub fn cancel_crash(&self) {
        self.lock().crash_in = None;
    }

    /// Whether the device still runs (false after a crash, scheduled or not).
    pub fn is_powered(&self) -> bool {
        self.lock().powered
    }
}

/// A factory wrapping another factory's instances in [`FaultBdev`]s of one controller.
#[derive(Debug, Clone)]
pub struct FaultFactory<F> {
    /// The wrapped factory.
    pub inner: F,
    /// The shared controller.
    pub disk: FaultDisk,
}

impl<F: DeviceFactory> DeviceFactory for FaultFactory<F> {
    type Dev = FaultBdev<F::Dev>;
    fn open(&self, shard: usize) -> Result<Self::Dev, IoError> {
        Ok(self.disk.wrap(self.inner.open(shard)?))
    }
}

#[derive(Debug)]
enum Kind {
    /// A read into `buf[off..off + len]`.
    Read {
        off: usize,
        len: usize,
    },
    Write(u64),
    /// The writes completed before the flush was submitted.
    Flush(Vec<u64>),
    Other,
}

#[derive(Debug)]
struct Req {
    user_tag: u64,
    kind: Kind,
    /// Decided at submission: the request fails with this.
    fail: Option<IoError>,
}

struct Ready<B> {
    c: Completion<B>,
    req: Req,
    /// Polls to wait before delivery.
    hold: u32,
    /// Submission order (to count reordering).
    order: u64,
}

/// A [`BlockDevice`] that forwards to `D` and injects faults (see the module docs).
pub struct FaultBdev<D: BlockDevice> {
    inner: D,
    disk: FaultDisk,
    next_tag: u64,
    reqs: HashMap<u64, Req>,
    ready: VecDeque<Ready<D::Buf>>,
}

impl<D: BlockDevice> std::fmt::Debug for FaultBdev<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultBdev")
            .field("in_flight", &self.reqs.len())
            .field("ready", &self.ready.len())
            .finish()
    }
}

const EIO: IoError = IoError::Device(libc::EIO);

impl<D: BlockDevice> FaultBdev<D> {
    /// The controller of this instance.
    pub fn disk(&self) -> &FaultDisk {
        &self.disk
    }

    /// Common submission path: power, Busy, the fault decision, then the inner device.
    fn submit(
        &mut self,
        user_tag: u64,
        range: Option<(u64, u64)>,
        kind: Kind,
        buf: Option<D::Buf>,
        go: impl FnOnce(&mut D, u64, Option<D::Buf>) -> Result<(), SubmitError<D::Buf>>,
    ) -> Result<(), SubmitError<D::Buf>> {
        let tag = self.next_tag;
        let fail = {
            let mut st = self.disk.lock();
            if let Some(n) = st.crash_in {
                if n == 0 {
                    st.crash_in = None;
                    let img = st.power_off(false);
                    st.crash_image = Some(img);
                } else {
                    st.crash_in = Some(n - 1);
                }
            }
            if !st.powered {
                return Err(SubmitError::Invalid(buf, "device powered off"));
            }
            let busy = st.cfg.busy_ppm;
            if st.rng.chance(busy) {
                st.counters.busy += 1;
                return Err(SubmitError::Busy(buf));
            }
            let (ppm, is_rw) = match kind {
                Kind::Read { .. } => (st.cfg.read_error_ppm, true),
                Kind::Write(_) => (st.cfg.write_error_ppm, true),
                Kind::Flush(_) => (st.cfg.flush_error_ppm, false),
                Kind::Other => (0, false),
            };
            let mut fail = None;
            if let Some((lba, n)) = range.filter(|_| is_rw) {
                if st.overlaps_bad(lba, n) {
                    st.counters.bad_range_errors += 1;
                    fail = Some(EIO);
                }
            }
            if fail.is_none() && st.rng.chance(ppm) {
                fail = Some(EIO);
                match kind {
                    Kind::Read { .. } => st.counters.read_errors += 1,
                    Kind::Write(_) => st.counters.write_errors += 1,
                    _ => st.counters.flush_errors += 1,
                }
                let bad = st.cfg.bad_range_ppm;
                if let Some(r) = range.filter(|_| is_rw && st.rng.chance(bad)) {
                    st.bad.push(r);
                    st.counters.bad_ranges += 1;
                }
            }
            fail
        };
        go(&mut self.inner, tag, buf)?;
        self.next_tag += 1;
        self.reqs.insert(
            tag,
            Req {
                user_tag,
                kind,
                fail,
            },
        );
        self.disk.lock().outstanding += 1;
        Ok(())
    }

    /// What delivering `r` means for the cache model.
    fn settle(st: &mut State, req: &Req, ok: bool) {
        match &req.kind {
            Kind::Write(wid) => {
                if let Some(w) = st.pending.get_mut(wid) {
                    w.state = if ok {
                        WState::Completed
                    } else {
                        WState::Failed
                    };
                }
            }
            Kind::Flush(covers) if ok => {
                let bs = st.bs;
                for wid in covers {
                    // Still Completed (a crash in between would have emptied `pending`).
                    if let Some(w) = st.pending.remove(wid) {
                        State::apply(
                            &mut st.durable,
                            &mut st.durable_wid,
                            bs,
                            *wid,
                            w.lba,
                            &w.data,
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

impl<D: BlockDevice> BlockDevice for FaultBdev<D> {
    type Buf = D::Buf;

    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }
    fn has_volatile_cache(&self) -> bool {
        // The point of this device: the engine must Flush.
        true
    }
    fn alloc_buf(&mut self, len: usize) -> Result<Self::Buf, IoError> {
        self.inner.alloc_buf(len)
    }

    fn submit_read(
        &mut self,
        lba: u64,
        nblocks: u32,
        buf: Self::Buf,
        buf_offset: usize,
        tag: u64,
    ) -> Result<(), SubmitError<Self::Buf>> {
        self.disk.lock().counters.reads += 1;
        self.submit(
            tag,
            Some((lba, u64::from(nblocks))),
            Kind::Read {
                off: buf_offset,
                len: nblocks as usize * self.inner.block_size() as usize,
            },
            Some(buf),
            |d, t, b| match b {
                Some(b) => d.submit_read(lba, nblocks, b, buf_offset, t),
                None => Err(SubmitError::Invalid(None, "no buffer")),
            },
        )
    }

    fn submit_write(
        &mut self,
        lba: u64,
        nblocks: u32,
        buf: Self::Buf,
        buf_offset: usize,
        tag: u64,
    ) -> Result<(), SubmitError<Self::Buf>> {
        let n = nblocks as usize * self.inner.block_size() as usize;
        let Some(data) = buf.get(buf_offset..buf_offset + n).map(<[u8]>::to_vec) else {
            return Err(SubmitError::Invalid(Some(buf), "buffer too small"));
        };
        let wid = {
            let mut st = self.disk.lock();
            st.counters.writes += 1;
            st.next_wid += 1;
            st.next_wid - 1
        };
        let r = self.submit(
            tag,
            Some((lba, u64::from(nblocks))),
            Kind::Write(wid),
            Some(buf),
            |d, t, b| match b {
                Some(b) => d.submit_write(lba, nblocks, b, buf_offset, t),
                None => Err(SubmitError::Invalid(None, "no buffer")),
            },
        );
        if r.is_ok() {
            self.disk.lock().pending.insert(
                wid,
                PendingWrite {
                    lba,
                    data,
                    state: WState::InFlight,
                },
            );
        }
        r
    }

    fn submit_flush(&mut self, tag: u64) -> Result<(), SubmitError<Self::Buf>> {
        let covers: Vec<u64> = {
            let mut st = self.disk.lock();
            st.counters.flushes += 1;
            st.pending
                .iter()
                .filter(|(_, w)| w.state == WState::Completed)
                .map(|(&id, _)| id)
                .collect()
        };
        self.submit(tag, None, Kind::Flush(covers), None, |d, t, _| {
            d.submit_flush(t)
        })
    }

    fn submit_write_zeroes(
        &mut self,
        lba: u64,
        nblocks: u32,
        tag: u64,
    ) -> Result<(), SubmitError<Self::Buf>> {
        // Modelled as a write of zeroes: it sits in the cache like any other write.
        let n = nblocks as usize * self.inner.block_size() as usize;
        let wid = {
            let mut st = self.disk.lock();
            st.counters.writes += 1;
            st.next_wid += 1;
            st.next_wid - 1
        };
        let r = self.submit(
            tag,
            Some((lba, u64::from(nblocks))),
            Kind::Write(wid),
            None,
            |d, t, _| d.submit_write_zeroes(lba, nblocks, t),
        );
        if r.is_ok() {
            self.disk.lock().pending.insert(
                wid,
                PendingWrite {
                    lba,
                    data: vec![0; n],
                    state: WState::InFlight,
                },
            );
        }
        r
    }

    fn submit_deallocate(
        &mut self,
        lba: u64,
        nblocks: u32,
        tag: u64,
    ) -> Result<(), SubmitError<Self::Buf>> {
        // A hint: the bytes stay (one allowed outcome), so the cache model is unchanged.
        self.submit(tag, None, Kind::Other, None, |d, t, _| {
            d.submit_deallocate(lba, nblocks, t)
        })
    }

    fn poll(&mut self, max: usize, mut f: impl FnMut(Completion<Self::Buf>)) -> usize {
        // Everything the inner device finished joins the ready set.
        let mut fresh = Vec::new();
        self.inner.poll(usize::MAX, |c| fresh.push(c));
        let mut st = self.disk.lock();
        for mut c in fresh {
            let Some(req) = self.reqs.remove(&c.tag) else {
                continue;
            };
            let order = c.tag;
            c.tag = req.user_tag;
            let delay = st.cfg.delay_ppm;
            let hold = if st.rng.chance(delay) {
                st.counters.delayed += 1;
                1 + st.rng.below(3) as u32
            } else {
                0
            };
            self.ready.push_back(Ready {
                c,
                req,
                hold,
                order,
            });
        }
        st.polls_since_progress += 1;
        let hang = st.cfg.hang_polls;
        if hang > 0 && st.polls_since_progress > hang {
            let h = SimHang {
                polls: st.polls_since_progress,
                outstanding: st.outstanding,
            };
            // Reset so that unwinding code that polls again does not panic twice.
            st.polls_since_progress = 0;
            st.hang = Some(h.clone());
            drop(st);
            std::panic::panic_any(h);
        }
        // A controller reset (or a power loss) fails everything outstanding at once.
        let reset_ppm = st.cfg.reset_ppm;
        let reset = !self.ready.is_empty() && st.rng.chance(reset_ppm);
        if reset {
            st.counters.resets += 1;
        }
        if reset || !st.powered {
            for r in &mut self.ready {
                if r.c.result.is_ok() && r.req.fail.is_none() {
                    st.counters.reset_failed += u64::from(reset);
                }
                r.req.fail = Some(EIO);
                r.hold = 0;
            }
        }
        // Deliverable now, in random order when asked.
        let mut now: Vec<Ready<D::Buf>> = Vec::new();
        let mut later = VecDeque::new();
        for mut r in self.ready.drain(..) {
            if r.hold == 0 {
                now.push(r);
            } else {
                r.hold -= 1;
                later.push_back(r);
            }
        }
        if st.cfg.reorder && now.len() > 1 {
            for i in (1..now.len()).rev() {
                let j = st.rng.below(i as u64 + 1) as usize;
                now.swap(i, j);
            }
        }
        let mut n = 0;
        let mut last_order = 0;
        let mut out = Vec::new();
        for mut r in now {
            if n >= max {
                later.push_front(r);
                continue;
            }
            if r.order < last_order {
                st.counters.reordered += 1;
            }
            last_order = last_order.max(r.order);
            let ok = r.c.result.is_ok() && r.req.fail.is_none();
            if let Some(e) = r.req.fail.take() {
                r.c.result = Err(e);
            }
            if let (true, Kind::Read { off, len }, Some(b)) = (ok, &r.req.kind, r.c.buf.as_mut()) {
                let ppm = st.cfg.corrupt_read_ppm;
                if *len > 0 && st.rng.chance(ppm) {
                    let bit = st.rng.below(*len as u64 * 8) as usize;
                    if let Some(byte) = b.get_mut(off + bit / 8) {
                        *byte ^= 1 << (bit % 8);
                        st.counters.corrupt_reads += 1;
                    }
                }
            }
            Self::settle(&mut st, &r.req, ok);
            st.outstanding = st.outstanding.saturating_sub(1);
            out.push(r.c);
            n += 1;
        }
        self.ready = later;
        drop(st);
        for c in out {
            f(c);
        }
        n
    }
}

#[cfg(test)]
mod tests;
