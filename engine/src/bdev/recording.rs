//! A wrapper backend that records every write and every completed flush sent to the inner backend,
//! in the order the device saw them. The crash tests rebuild disk images from this record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{BlockDevice, Completion, DeviceFactory, IoError, SubmitError};

/// One recorded event.
#[derive(Debug, Clone)]
pub enum WriteEvent {
    /// A write was submitted (ids are unique and increase in submission order per instance).
    Write {
        /// Write id.
        id: usize,
        /// First block.
        lba: u64,
        /// The bytes written (whole blocks).
        data: Arc<Vec<u8>>,
    },
    /// A flush completed; it made durable the writes listed (those completed before it was submitted).
    FlushDone {
        /// Ids of the writes this flush covers.
        covers: Vec<usize>,
    },
}

/// The shared record of all instances of one recording device.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    inner: Arc<Mutex<Log>>,
}

#[derive(Debug, Default)]
struct Log {
    events: Vec<WriteEvent>,
    writes: usize,
    /// Writes completed and not yet made durable by a completed flush. A flush (NVMe's is namespace-wide,
    /// whichever queue it is sent on) covers every write completed before it was submitted, even one
    /// another flush in flight also covers.
    completed_uncovered: Vec<usize>,
}

impl Recorder {
    /// A new empty record.
    pub fn new() -> Self {
        Self::default()
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh write id (ids are unique across the instances sharing this record; a refused submission
    /// leaves a gap).
    fn next_id(&self) -> usize {
        let mut log = self.log();
        log.writes += 1;
        log.writes - 1
    }

    /// Number of events so far: a position tests use to say "this was acknowledged here".
    pub fn position(&self) -> usize {
        self.log().events.len()
    }

    /// A copy of the events.
    pub fn events(&self) -> Vec<WriteEvent> {
        self.log().events.clone()
    }

    /// Wraps `dev` so that what it is sent is recorded here.
    pub fn wrap<D: BlockDevice>(&self, dev: D) -> RecordingBdev<D> {
        RecordingBdev {
            inner: dev,
            rec: self.clone(),
            next_tag: 0,
            pending: HashMap::new(),
        }
    }
}

enum Kind {
    Write(usize),
    Flush(Vec<usize>),
    Other,
}

/// A [`BlockDevice`] that forwards to `D` and records writes and flushes.
pub struct RecordingBdev<D: BlockDevice> {
    inner: D,
    rec: Recorder,
    next_tag: u64,
    pending: HashMap<u64, (u64, Kind)>,
}

impl<D: BlockDevice> std::fmt::Debug for RecordingBdev<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingBdev")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<D: BlockDevice> RecordingBdev<D> {
    fn tag(&mut self, user: u64, kind: Kind) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        self.pending.insert(t, (user, kind));
        t
    }
}

/// A factory wrapping another factory's instances.
#[derive(Debug, Clone)]
pub struct RecordingFactory<F> {
    /// The wrapped factory.
    pub inner: F,
    /// Where events go.
    pub rec: Recorder,
}

impl<F: DeviceFactory> DeviceFactory for RecordingFactory<F> {
    type Dev = RecordingBdev<F::Dev>;
    fn open(&self, shard: usize) -> Result<Self::Dev, IoError> {
        Ok(self.rec.wrap(self.inner.open(shard)?))
    }
}

impl<D: BlockDevice> BlockDevice for RecordingBdev<D> {
    type Buf = D::Buf;

    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }
    fn has_volatile_cache(&self) -> bool {
        self.inner.has_volatile_cache()
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
        let t = self.tag(tag, Kind::Other);
        let r = self.inner.submit_read(lba, nblocks, buf, buf_offset, t);
        if r.is_err() {
            self.pending.remove(&t);
        }
        r
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
        let data = buf
            .get(buf_offset..buf_offset + n)
            .map(|d| Arc::new(d.to_vec()));
        let id = self.rec.next_id();
        let t = self.tag(tag, Kind::Write(id));
        let r = self.inner.submit_write(lba, nblocks, buf, buf_offset, t);
        match (&r, data) {
            (Ok(()), Some(data)) => {
                self.rec
                    .log()
                    .events
                    .push(WriteEvent::Write { id, lba, data });
            }
            _ => {
                self.pending.remove(&t);
            }
        }
        r
    }

    fn submit_flush(&mut self, tag: u64) -> Result<(), SubmitError<Self::Buf>> {
        let covers = self.rec.log().completed_uncovered.clone();
        let t = self.tag(tag, Kind::Flush(covers));
        let r = self.inner.submit_flush(t);
        if r.is_err() {
            self.pending.remove(&t);
        }
        r
    }

    fn submit_write_zeroes(
        &mut self,
        lba: u64,
        nblocks: u32,
        tag: u64,
    ) -> Result<(), SubmitError<Self::Buf>> {
        // Recorded as a write of zeroes so images replay it.
        let n = nblocks as usize * self.inner.block_size() as usize;
        let id = self.rec.next_id();
        let t = self.tag(tag, Kind::Write(id));
        let r = self.inner.submit_write_zeroes(lba, nblocks, t);
        if r.is_ok() {
            let mut log = self.rec.log();
            log.events.push(WriteEvent::Write {
                id,
                lba,
                data: Arc::new(vec![0; n]),
            });
        } else {
            self.pending.remove(&t);
        }
        r
    }

    fn submit_deallocate(
        &mut self,
        lba: u64,
        nblocks: u32,
        tag: u64,
    ) -> Result<(), SubmitError<Self::Buf>> {
        let t = self.tag(tag, Kind::Other);
        let r = self.inner.submit_deallocate(lba, nblocks, t);
        if r.is_err() {
            self.pending.remove(&t);
        }
        r
    }

    fn poll(&mut self, max: usize, mut f: impl FnMut(Completion<Self::Buf>)) -> usize {
        let pending = &mut self.pending;
        let rec = &self.rec;
        self.inner.poll(max, |mut c| {
            if let Some((user, kind)) = pending.remove(&c.tag) {
                c.tag = user;
                match kind {
                    Kind::Write(id) if c.result.is_ok() => rec.log().completed_uncovered.push(id),
                    Kind::Flush(covers) if c.result.is_ok() => {
                        let mut log = rec.log();
                        log.completed_uncovered.retain(|id| !covers.contains(id));
                        log.events.push(WriteEvent::FlushDone { covers });
                    }
                    _ => {}
                }
            }
            f(c)
        })
    }
}
