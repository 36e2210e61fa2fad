//! The random operations of one life, run on anything with the shard-local interface (`LocalCtx`:
//! a `Shard` directly, or a closure on a shard thread through `Db::run_on`), each checked against the
//! model as it returns.

use std::fmt::Write as _;

use nvkv::bdev::{FaultCounters, FaultDisk, SplitMix64};
use nvkv::{Error, LocalCtx, WriteOpts, WriteResult};

use crate::model::{fail, Check, Model};

/// Per-seed shape of the workload.
#[derive(Debug, Clone)]
pub struct Shape {
    pub data_keys: u64,
    pub counter_keys: u64,
    /// Largest value the shard accepts.
    pub max_value: usize,
    /// One in `big_every` values is large (0: never).
    pub big_every: u64,
    /// Every value this long (segments then fill to the same size, so a segment of a new life can
    /// end exactly where one of an old life began: the stale-segment case).
    pub fixed_len: Option<usize>,
    /// Chains of short lives ended by power loss, with durable writes left in flight (see
    /// `workload::params`).
    pub chain: bool,
}

/// Counters of one seed (summed into the run summary).
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ops: u64,
    pub nospace: u64,
    pub durable_acks: u64,
    /// Of those, acknowledged by their durable-log record.
    pub logged_acks: u64,
    pub crashes: u64,
    pub mid_op_crashes: u64,
    pub restarts: u64,
    pub clean: u64,
    pub recoveries: u64,
    pub faults: FaultCounters,
}

/// The state one seed carries through its lives.
pub struct Sim {
    pub rng: SplitMix64,
    pub model: Model,
    pub shape: Shape,
    pub tally: Tally,
    /// Op trace, kept when replaying one seed.
    pub trace: Option<String>,
    /// A digest of everything observed: two runs of one seed must agree.
    pub digest: u64,
    /// Durable writes not yet waited for, with their write ids.
    pub pending: Vec<(WriteResult, u64)>,
    /// A write got NoSpace in this life.
    pub full: bool,
    /// An operation of this life failed with an I/O error (the shard may refuse writes now).
    pub io_failed: bool,
    /// The seed's GC threshold (for reports).
    pub gc_free_low: f64,
}

/// Injected faults that make an I/O error legitimate.
pub fn injected(c: &FaultCounters) -> u64 {
    c.read_errors
        + c.write_errors
        + c.flush_errors
        + c.bad_range_errors
        + c.resets
        + c.corrupt_reads
}

fn read_faults(c: &FaultCounters) -> u64 {
    c.read_errors + c.bad_range_errors + c.resets
}

/// Silent corruptions of reads so far (a Corrupt error after one is the right answer).
pub fn corruptions(c: &FaultCounters) -> u64 {
    c.corrupt_reads
}

impl Sim {
    pub fn new(seed: u64, shape: Shape, trace: bool, known: Vec<String>) -> Self {
        Sim {
            rng: SplitMix64::new(seed),
            model: Model {
                known,
                ..Model::default()
            },
            shape,
            tally: Tally::default(),
            trace: trace.then(String::new),
            digest: seed,
            pending: Vec::new(),
            full: false,
            io_failed: false,
            gc_free_low: 0.0,
        }
    }

    pub fn note(&mut self, s: impl AsRef<str>) {
        let s = s.as_ref();
        for b in s.bytes() {
            self.digest = (self.digest ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        if let Some(t) = &mut self.trace {
            let _ = writeln!(t, "{s}");
        }
        crate::set_current_op(s);
    }

    fn key(&mut self) -> Vec<u8> {
        if self.shape.counter_keys > 0 && self.rng.below(5) == 0 {
            format!("n{}", self.rng.below(self.shape.counter_keys)).into_bytes()
        } else {
            format!("k{:02}", self.rng.below(self.shape.data_keys)).into_bytes()
        }
    }

    /// A value naming its write (and key), so a recovered value tells exactly where it came from.
    fn value(&mut self, key: &[u8], id: u64) -> Vec<u8> {
        if key[0] == b'n' {
            return (id as i64 * 1000).to_le_bytes().to_vec();
        }
        let mut v = format!("{}#{id}:", String::from_utf8_lossy(key)).into_bytes();
        let max = self.shape.max_value.max(v.len());
        let len = if let Some(l) = self.shape.fixed_len {
            l
        } else if self.shape.big_every > 0 && self.rng.below(self.shape.big_every) == 0 {
            max - self.rng.below((max / 4) as u64 + 1) as usize
        } else {
            v.len() + self.rng.below(200) as usize
        };
        let fill = b'a' + (id % 26) as u8;
        v.resize(len.min(max), fill);
        v
    }

    /// Classifies an error of a write-like call; Ok when it is one the situation allows.
    fn write_error(
        &mut self,
        op: &str,
        e: &Error,
        disk: &FaultDisk,
        before: &FaultCounters,
    ) -> Check {
        let now = disk.counters();
        match e {
            Error::NoSpace => {
                self.tally.nospace += 1;
                if op == "delete" && self.full {
                    return fail!(
                        "delete-fails-when-full",
                        "a delete got NoSpace after the device filled"
                    );
                }
                self.full = true;
                Ok(())
            }
            Error::Io(_) if !disk.is_powered() || injected(&now) > 0 => {
                let _ = before;
                self.io_failed = true;
                Ok(())
            }
            Error::Io(io) => fail!(
                format!("io-error-without-fault:{op}"),
                "{op} failed with {io} though no fault was injected in this life"
            ),
            Error::Corrupt(_) if corruptions(&now) > corruptions(before) => Ok(()),
            Error::Corrupt(c) => fail!(format!("corrupt-in-life:{op}"), "{op}: {c}"),
            other => fail!(format!("unexpected-error:{op}"), "{op}: {other}"),
        }
    }

    /// Classifies an error of a read: I/O errors only after an injected read fault in this call (or
    /// with the device off), or, for a key not known durable, after a write error (its newest record
    /// may be in the segment whose write failed).
    fn read_error(
        &mut self,
        op: &str,
        key: Option<&[u8]>,
        e: &Error,
        disk: &FaultDisk,
        before: &FaultCounters,
    ) -> Check {
        let now = disk.counters();
        let write_faults = injected(&now) > read_faults(&now);
        let durable = key.is_some_and(|k| {
            self.model
                .keys
                .get(k)
                .and_then(|ws| ws.last())
                .is_some_and(|w| w.certain && (w.durable || w.base))
        });
        match e {
            Error::Io(_) if !disk.is_powered() || read_faults(&now) > read_faults(before) => Ok(()),
            Error::Io(_) if write_faults && !durable => {
                self.io_failed = true;
                Ok(())
            }
            Error::Io(io) if write_faults || self.io_failed => fail!(
                "read-fails-after-write-error",
                "{op} of a durable key failed with {io} (no read fault injected) after a write/flush error"
            ),
            Error::Io(io) => fail!(
                format!("io-error-without-fault:{op}"),
                "{op} failed with {io} though no fault was injected"
            ),
            Error::Corrupt(_) if corruptions(&now) > corruptions(before) => Ok(()),
            Error::Corrupt(c) => fail!(format!("corrupt-in-life:{op}"), "{op}: {c}"),
            other => fail!(format!("unexpected-error:{op}"), "{op}: {other}"),
        }
    }

    /// Options of a write, and how to show them (timestamps relative: absolute ones come from the wall
    /// clock and differ between runs, which must not change the trace).
    fn opts(&mut self, key: &[u8]) -> (WriteOpts, String) {
        let durable = self.rng.below(4) == 0;
        // Caller timestamps near the stored one, on both sides, so last-writer-wins decides both ways.
        let mut desc = String::from("clock");
        let ts = if self.rng.below(8) == 0 {
            match self.model.exact(key).and_then(|c| c.ts) {
                Some(t) => {
                    let d = 1 + self.rng.below(3);
                    Some(if self.rng.below(2) == 0 {
                        desc = format!("stored-{d}");
                        t.saturating_sub(d)
                    } else {
                        desc = format!("stored+{d}");
                        t + d
                    })
                }
                None => {
                    let t = 1 + self.rng.below(1000);
                    desc = format!("{t}");
                    Some(t)
                }
            }
        } else {
            None
        };
        (
            WriteOpts { ts, durable },
            format!("durable {durable} ts {desc}"),
        )
    }

    /// One random operation. Returns Err on a failed check.
    pub fn step(&mut self, s: &mut dyn LocalCtx, disk: &FaultDisk) -> Check {
        self.tally.ops += 1;
        disk.note_progress();
        let before = disk.counters();
        let mut r = self.rng.below(100);
        if self.shape.chain {
            // Durable puts left to group commit (no wait), ticks and bursts: segments in flight.
            r = match self.rng.below(10) {
                0..=4 => 0,
                5..=7 => 75,
                8 => 52,
                _ => 87,
            };
        }
        match r {
            0..=29 => self.op_put(s, disk, &before),
            30..=37 => self.op_delete(s, disk, &before),
            38..=45 => self.op_cas(s, disk, &before),
            46..=51 => self.op_incr(s, disk, &before),
            52..=66 => {
                let key = self.key();
                self.note(format!("get {}", String::from_utf8_lossy(&key)));
                match s.get(&key) {
                    Ok(got) => {
                        self.note(format!(" -> {:?}", got.as_ref().map(|g| g.1.version)));
                        self.model.check_live_read(&key, &got, "get")
                    }
                    Err(e) => self.read_error("get", Some(&key), &e, disk, &before),
                }
            }
            67..=71 => self.op_scan(s, disk, &before),
            72..=74 => {
                self.note("sync");
                match s.sync() {
                    Ok(()) => {
                        self.model.mark_durable(u64::MAX);
                        self.pending.clear();
                        Ok(())
                    }
                    Err(Error::NoSpace) if self.full => {
                        fail!(
                            "sync-fails-when-full",
                            "sync got NoSpace after the device filled"
                        )
                    }
                    Err(e) => self.write_error("sync", &e, disk, &before),
                }
            }
            75..=86 => {
                self.note("tick");
                match s.tick() {
                    Ok(_) => Ok(()),
                    Err(e) => self.write_error("tick", &e, disk, &before),
                }
            }
            87..=89 => {
                // A burst of puts with no poll between them: several segments end up in flight at
                // once, the setting for crashes that keep a later segment and lose an earlier one.
                let n = 4 + self.rng.below(20);
                self.note(format!("burst of {n} puts"));
                for _ in 0..n {
                    let before = disk.counters();
                    self.op_put_with(s, disk, &before, false)?;
                }
                Ok(())
            }
            _ => self.wait_pending(s, disk, &before),
        }
    }

    /// Waits for the durable writes not yet waited for.
    pub fn wait_pending(
        &mut self,
        s: &mut dyn LocalCtx,
        disk: &FaultDisk,
        before: &FaultCounters,
    ) -> Check {
        let pending = std::mem::take(&mut self.pending);
        // Writes with a durable-log record are durable on their own once a barrier covers them;
        // the others with their generation (and everything before it).
        if let Some(g) = pending
            .iter()
            .filter(|(w, _)| w.lsn == 0)
            .map(|(w, _)| w.gen)
            .max()
        {
            self.note(format!("wait_durable {g}"));
            match s.wait_durable(g) {
                Ok(()) => {
                    self.tally.durable_acks += 1;
                    self.model.mark_durable(g);
                }
                Err(e) => return self.write_error("wait_durable", &e, disk, before),
            }
        }
        for (w, id) in pending.iter().filter(|(w, _)| w.lsn != 0) {
            self.note(format!("wait_write #{id} lsn {} gen {}", w.lsn, w.gen));
            match s.wait_write(w) {
                Ok(()) => {
                    self.tally.durable_acks += 1;
                    self.tally.logged_acks += 1;
                    self.model.mark_write_durable(*id);
                }
                Err(e) => return self.write_error("wait_write", &e, disk, before),
            }
        }
        Ok(())
    }

    fn after_write(
        &mut self,
        s: &mut dyn LocalCtx,
        disk: &FaultDisk,
        durable: bool,
        w: &WriteResult,
        id: u64,
    ) -> Check {
        if durable {
            self.pending.push((*w, id));
            if self.rng.below(3) == 0 {
                let before = disk.counters();
                return self.wait_pending(s, disk, &before);
            }
        }
        Ok(())
    }

    fn op_put(&mut self, s: &mut dyn LocalCtx, disk: &FaultDisk, before: &FaultCounters) -> Check {
        self.op_put_with(s, disk, before, true)
    }

    fn op_put_with(
        &mut self,
        s: &mut dyn LocalCtx,
        disk: &FaultDisk,
        before: &FaultCounters,
        may_wait: bool,
    ) -> Check {
        let key = self.key();
        let id = self.model.new_id();
        let value = self.value(&key, id);
        let (mut opts, mut desc) = self.opts(&key);
        if !may_wait {
            opts.durable = false;
            desc = format!("{desc} (burst: not durable)");
        }
        self.note(format!(
            "put {} #{id} len {} {desc}",
            String::from_utf8_lossy(&key),
            value.len()
        ));
        let exact = self.model.exact(&key);
        match s.put(&key, &value, opts) {
            Ok(w) => {
                self.note(format!(
                    " -> applied {} v{} gen {}",
                    w.applied, w.version, w.gen
                ));
                if let (Some(t), Some(c)) = (opts.ts, &exact) {
                    // Last writer wins: applied exactly when the key is absent or the write is newer.
                    let want = c.value.is_none() || c.ts.is_some_and(|old| t > old);
                    if want != w.applied {
                        return fail!(
                            "lww-wrong-outcome",
                            "put with ts {t} over {:?} (stored ts {:?}) applied={}",
                            c.version,
                            c.ts,
                            w.applied
                        );
                    }
                }
                if !w.applied {
                    return Ok(());
                }
                self.model.record(
                    &key,
                    id,
                    Some(value),
                    Some(w.version),
                    Some(w.ts),
                    w.gen,
                    true,
                )?;
                self.after_write(s, disk, opts.durable, &w, id)
            }
            Err(e) => {
                self.note(format!(" -> {e}"));
                self.model
                    .record(&key, id, Some(value), None, None, 0, false)?;
                self.write_error("put", &e, disk, before)
            }
        }
    }

    fn op_delete(
        &mut self,
        s: &mut dyn LocalCtx,
        disk: &FaultDisk,
        before: &FaultCounters,
    ) -> Check {
        let key = self.key();
        let id = self.model.new_id();
        let (opts, desc) = self.opts(&key);
        self.note(format!(
            "delete {} #{id} {desc}",
            String::from_utf8_lossy(&key)
        ));
        match s.delete(&key, opts) {
            Ok(w) => {
                self.note(format!(" -> applied {} v{}", w.applied, w.version));
                if !w.applied {
                    return Ok(());
                }
                self.model
                    .record(&key, id, None, Some(w.version), None, w.gen, true)?;
                self.after_write(s, disk, opts.durable, &w, id)
            }
            Err(e) => {
                self.note(format!(" -> {e}"));
                self.model.record(&key, id, None, None, None, 0, false)?;
                self.write_error("delete", &e, disk, before)
            }
        }
    }

    fn op_cas(&mut self, s: &mut dyn LocalCtx, disk: &FaultDisk, before: &FaultCounters) -> Check {
        let key = self.key();
        let id = self.model.new_id();
        let exact = self.model.exact(&key);
        // The current version: None when absent (a delete's version is not the key's).
        let cur = exact.as_ref().and_then(|c| c.value.as_ref().and(c.version));
        // Right version most of the time; else a stale one of this key, another key's, or none.
        let expected = match self.rng.below(10) {
            0..=5 => cur,
            6 | 7 => {
                let old: Vec<u64> = self
                    .model
                    .versions
                    .keys()
                    .copied()
                    .filter(|v| Some(*v) != cur)
                    .collect();
                let mut old = old;
                old.sort_unstable();
                if old.is_empty() {
                    Some(u64::MAX / 2)
                } else {
                    Some(old[self.rng.below(old.len() as u64) as usize])
                }
            }
            8 => None,
            _ => cur.map(|v| v + 1),
        };
        let new = (self.rng.below(4) != 0).then(|| self.value(&key, id));
        let opts = WriteOpts {
            ts: None,
            durable: self.rng.below(4) == 0,
        };
        self.note(format!(
            "cas {} #{id} expect {expected:?} {}",
            String::from_utf8_lossy(&key),
            if new.is_some() { "put" } else { "delete" }
        ));
        let r = s.cas(&key, expected, new.as_deref(), opts);
        // When the state is known the outcome is too: success exactly when the version matches.
        let predict = exact.as_ref().map(|_| cur == expected);
        match r {
            Ok(w) => {
                self.note(format!(" -> applied {} v{}", w.applied, w.version));
                if predict == Some(false) {
                    return fail!(
                        "cas-wrong-outcome",
                        "cas on {:?} expecting {expected:?} succeeded; current version {cur:?}",
                        String::from_utf8_lossy(&key)
                    );
                }
                if !w.applied {
                    return Ok(());
                }
                self.model
                    .record(&key, id, new, Some(w.version), Some(w.ts), w.gen, true)?;
                self.after_write(s, disk, opts.durable, &w, id)
            }
            Err(Error::VersionMismatch { current }) => {
                self.note(format!(" -> mismatch {current:?}"));
                if predict == Some(true) || (exact.is_some() && current != cur) {
                    return fail!(
                        "cas-wrong-outcome",
                        "cas on {:?} expecting {expected:?} refused with current {current:?}; model {cur:?}",
                        String::from_utf8_lossy(&key)
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.note(format!(" -> {e}"));
                self.model.record(&key, id, new, None, None, 0, false)?;
                self.write_error("cas", &e, disk, before)
            }
        }
    }

    fn op_incr(&mut self, s: &mut dyn LocalCtx, disk: &FaultDisk, before: &FaultCounters) -> Check {
        if self.shape.counter_keys == 0 {
            return Ok(());
        }
        let key = format!("n{}", self.rng.below(self.shape.counter_keys)).into_bytes();
        let id = self.model.new_id();
        let delta = self.rng.below(1000) as i64 - 300;
        let opts = WriteOpts {
            ts: None,
            durable: self.rng.below(4) == 0,
        };
        self.note(format!(
            "incr {} #{id} {delta}",
            String::from_utf8_lossy(&key)
        ));
        let exact = self.model.exact(&key);
        match s.incr(&key, delta, opts) {
            Ok((sum, w)) => {
                self.note(format!(" -> {sum} v{}", w.version));
                if let Some(c) = &exact {
                    let cur = c.value.as_ref().map_or(0, |v| {
                        i64::from_le_bytes(v[..8].try_into().unwrap_or([0; 8]))
                    });
                    if cur + delta != sum {
                        return fail!("incr-wrong-sum", "incr {delta} on {cur} returned {sum}");
                    }
                }
                self.model.record(
                    &key,
                    id,
                    Some(sum.to_le_bytes().to_vec()),
                    Some(w.version),
                    Some(w.ts),
                    w.gen,
                    true,
                )?;
                self.after_write(s, disk, opts.durable, &w, id)
            }
            Err(e) => {
                self.note(format!(" -> {e}"));
                // An incr that failed may still have stored some sum: value unknown, so accept any
                // integer for this key until the next certain write (modelled as an uncertain write of
                // the expected sum when known).
                if let Some(c) = &exact {
                    let cur = c.value.as_ref().map_or(0, |v| {
                        i64::from_le_bytes(v[..8].try_into().unwrap_or([0; 8]))
                    });
                    self.model.record(
                        &key,
                        id,
                        Some((cur + delta).to_le_bytes().to_vec()),
                        None,
                        None,
                        0,
                        false,
                    )?;
                }
                match e {
                    Error::Overflow | Error::NotAnInteger => fail!("incr-unexpected", "{e}"),
                    e => self.write_error("incr", &e, disk, before),
                }
            }
        }
    }

    fn op_scan(&mut self, s: &mut dyn LocalCtx, disk: &FaultDisk, before: &FaultCounters) -> Check {
        let a = self.rng.below(self.shape.data_keys);
        let b = a + self.rng.below(self.shape.data_keys);
        let start = format!("k{a:02}").into_bytes();
        let end = (self.rng.below(3) != 0).then(|| format!("k{b:02}").into_bytes());
        let limit = 1 + self.rng.below(self.shape.data_keys + 4) as usize;
        self.note(format!("scan {a}..{b} {} limit {limit}", end.is_some()));
        let got = match s.scan(&start, end.as_deref(), limit) {
            Ok(g) => g,
            Err(e) => return self.read_error("scan", None, &e, disk, before),
        };
        self.note(format!(" -> {} pairs", got.len()));
        self.model.checked += 1;
        check_scan(&self.model, &start, end.as_deref(), limit, &got)
    }
}

/// A scan is ordered, inside its range, within its limit, agrees with the model value by value, and
/// misses no key the model says is present (before the limit cut it).
pub fn check_scan(
    model: &Model,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
    got: &[(Vec<u8>, Vec<u8>)],
) -> Check {
    if got.len() > limit {
        return fail!("scan-wrong", "{} pairs for limit {limit}", got.len());
    }
    for w in got.windows(2) {
        if w[0].0 >= w[1].0 {
            return fail!("scan-unordered", "{:?} before {:?}", w[0].0, w[1].0);
        }
    }
    for (k, v) in got {
        if k.as_slice() < start || end.is_some_and(|e| k.as_slice() >= e) {
            return fail!(
                "scan-wrong",
                "key {:?} outside the range",
                String::from_utf8_lossy(k)
            );
        }
        if !model.live(k).iter().any(|c| c.value.as_ref() == Some(v)) {
            return fail!(
                "scan-disagrees-with-model",
                "scan returned {:?} for {:?}",
                String::from_utf8_lossy(&v[..v.len().min(16)]),
                String::from_utf8_lossy(k)
            );
        }
    }
    let last = got.last().map(|p| p.0.clone());
    for (k, _) in model.keys.range(start.to_vec()..) {
        if end.is_some_and(|e| k.as_slice() >= e) {
            break;
        }
        if !k.starts_with(b"k") {
            continue;
        }
        let present = model.exact(k).is_some_and(|c| c.value.is_some());
        let cut = got.len() == limit && last.as_ref().is_some_and(|l| k > l);
        if present && !cut && !got.iter().any(|p| &p.0 == k) {
            return fail!(
                "scan-misses-key",
                "scan did not return present key {:?}",
                String::from_utf8_lossy(k)
            );
        }
    }
    Ok(())
}
