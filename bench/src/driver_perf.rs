//! nvkv's driver under a workload: one queue pair per thread, each thread pinned to its own CPU, a fixed number
//! of requests kept in flight, latency per request into an HdrHistogram (one clock read per batch of
//! submissions and one per batch of completions, as SPDK's perf does with its TSC reads).

use crate::plan::{Latency, Workload, PERCENTILES};
use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use nvme_driver::{Controller, DmaBuf, Namespace, QueueConfig, QueueStats};
use std::time::{Duration, Instant};

/// What one run measured.
#[derive(Debug)]
pub struct DriverRun {
    pub ios: u64,
    pub seconds: f64,
    pub hist: Histogram<u64>,
    /// One histogram per second of the measurement (the last one may be shorter).
    pub intervals: Vec<Histogram<u64>>,
    pub stats: QueueStats,
}

impl DriverRun {
    pub fn latency(&self) -> Latency {
        latency_of(&self.hist)
    }

    /// The per-second histograms as an HdrHistogram interval log (V2, deflate-compressed, base64).
    pub fn interval_log(&self, comment: &str) -> Result<String> {
        use hdrhistogram::serialization::{
            interval_log::IntervalLogWriterBuilder, V2DeflateSerializer,
        };
        let mut out = Vec::new();
        let mut ser = V2DeflateSerializer::new();
        {
            let mut w = IntervalLogWriterBuilder::new()
                .add_comment(comment)
                .add_comment("values in nanoseconds")
                .with_start_time(std::time::SystemTime::now())
                .begin_log_with(&mut out, &mut ser)
                .map_err(|e| anyhow!("interval log: {e}"))?;
            let whole = self.seconds.floor() as usize;
            for (i, h) in self.intervals.iter().enumerate() {
                let len = if i < whole {
                    1.0
                } else {
                    (self.seconds - whole as f64).max(0.0)
                };
                w.write_histogram(
                    h,
                    Duration::from_secs(i as u64),
                    Duration::from_secs_f64(len),
                    None,
                )
                .map_err(|e| anyhow!("interval log: {e}"))?;
            }
        }
        String::from_utf8(out).map_err(|e| anyhow!("interval log is not UTF-8: {e}"))
    }
}

/// Percentiles of a histogram of nanoseconds, in microseconds.
pub fn latency_of(h: &Histogram<u64>) -> Latency {
    let us = |v: u64| v as f64 / 1000.0;
    Latency {
        p50_us: us(h.value_at_quantile(0.50)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        cdf: PERCENTILES
            .iter()
            .map(|&p| (p, us(h.value_at_quantile(p / 100.0))))
            .collect(),
    }
}

/// Pins the calling thread to one CPU (best effort: returns false when the kernel refuses).
pub fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn diff(a: QueueStats, b: QueueStats) -> QueueStats {
    QueueStats {
        requests: b.requests - a.requests,
        commands: b.commands - a.commands,
        completions: b.completions - a.completions,
        sq_doorbell_writes: b.sq_doorbell_writes - a.sq_doorbell_writes,
        cq_doorbell_writes: b.cq_doorbell_writes - a.cq_doorbell_writes,
        sq_shadow_updates: b.sq_shadow_updates - a.sq_shadow_updates,
        cq_shadow_updates: b.cq_shadow_updates - a.cq_shadow_updates,
        aborts_sent: b.aborts_sent - a.aborts_sent,
        queue_resets: b.queue_resets - a.queue_resets,
        resets_seen: b.resets_seen - a.resets_seen,
    }
}

/// Runs `w` on `ns` of `ctrl` for `warmup` then `duration`; threads run on CPUs 0, 1, ...
pub fn run(
    ctrl: &Controller,
    ns: &Namespace,
    w: &Workload,
    warmup: Duration,
    duration: Duration,
) -> Result<DriverRun> {
    let mut handles = Vec::new();
    for t in 0..w.threads {
        let (ctrl, ns, w) = (ctrl.clone(), *ns, w.clone());
        handles.push(std::thread::spawn(move || {
            one_thread(&ctrl, &ns, &w, t, warmup, duration)
        }));
    }
    let mut total: Option<DriverRun> = None;
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow!("benchmark thread panicked"))??;
        total = Some(match total {
            None => r,
            Some(mut acc) => {
                acc.ios += r.ios;
                acc.seconds = acc.seconds.max(r.seconds);
                acc.hist
                    .add(&r.hist)
                    .map_err(|e| anyhow!("histogram merge: {e:?}"))?;
                for (i, h) in r.intervals.iter().enumerate() {
                    match acc.intervals.get_mut(i) {
                        Some(a) => a.add(h).map_err(|e| anyhow!("histogram merge: {e:?}"))?,
                        None => acc.intervals.push(h.clone()),
                    }
                }
                let s = &mut acc.stats;
                s.requests += r.stats.requests;
                s.commands += r.stats.commands;
                s.completions += r.stats.completions;
                s.sq_doorbell_writes += r.stats.sq_doorbell_writes;
                s.cq_doorbell_writes += r.stats.cq_doorbell_writes;
                s.sq_shadow_updates += r.stats.sq_shadow_updates;
                s.cq_shadow_updates += r.stats.cq_shadow_updates;
                acc
            }
        });
    }
    total.ok_or_else(|| anyhow!("no threads"))
}

fn one_thread(
    ctrl: &Controller,
    ns: &Namespace,
    w: &Workload,
    cpu: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<DriverRun> {
    pin_to_cpu(cpu);
    let mqes = ctrl.cap().mqes() as usize;
    let sq = (w.qd + 1).max(32).min(mqes);
    if w.qd + 1 > sq {
        return Err(anyhow!(
            "queue depth {} needs {} SQ entries; the controller allows {mqes}",
            w.qd,
            w.qd + 1
        ));
    }
    // A CQ much larger than the commands in flight: the CQ head doorbell is written once per `cq - sq`
    // completions (the controller can never see it full), so it costs next to nothing per I/O.
    let cq = (4 * sq).max(1024).min(mqes).max(sq);
    // The buffers stay here (SPDK's model: the driver borrows them per I/O) and are declared before the
    // queue pair so that they outlive it on every path out of this function.
    let mut bufs: Vec<DmaBuf> = Vec::with_capacity(w.qd);
    for _ in 0..w.qd {
        let mut b = ctrl.alloc(w.bs)?;
        b.fill(0x5a);
        bufs.push(b);
    }
    let mut qp = ctrl
        .queue_pair_with(QueueConfig {
            sq_entries: sq as u16,
            cq_entries: cq as u16,
            ..QueueConfig::default()
        })
        .context("creating the benchmark queue pair")?;
    let blocks_per_io = (w.bs as u64 / ns.lba_size as u64).max(1);
    let span = ns.blocks - blocks_per_io;
    let mut free: Vec<usize> = (0..w.qd).collect();
    let mut started = vec![Instant::now(); w.qd];
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| anyhow!("{e:?}"))?;
    let mut interval = hist.clone();
    let mut intervals = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (cpu as u64 + 1);
    let mut seq = (span / w.threads as u64) * cpu as u64;
    let begin = Instant::now();
    let measure_from = begin + warmup;
    let end = measure_from + duration;
    let mut measuring = false;
    let mut next_tick = measure_from + Duration::from_secs(1);
    let mut ios = 0u64;
    let mut base = qp.stats();
    let mut failed: Option<String> = None;
    loop {
        if !free.is_empty() {
            let now = Instant::now();
            while let Some(slot) = free.pop() {
                let lba = if w.rw.is_random() {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (rng % (span / blocks_per_io)) * blocks_per_io
                } else {
                    seq = (seq + blocks_per_io) % span;
                    seq
                };
                started[slot] = now;
                // SAFETY: buffer `slot` is not touched again until the completion tagged `slot` comes back,
                // and `bufs` outlives the queue pair (declared before it).
                let r = unsafe {
                    if w.rw.is_write() {
                        qp.write_borrowed(ns, lba, &bufs[slot], 0..w.bs, slot as u64)
                    } else {
                        qp.read_borrowed(ns, lba, &bufs[slot], 0..w.bs, slot as u64)
                    }
                };
                if r.is_err() {
                    free.push(slot);
                    break;
                }
            }
        }
        let mut now: Option<Instant> = None;
        qp.poll(usize::MAX, |c| {
            let slot = c.tag as usize;
            let t = *now.get_or_insert_with(Instant::now);
            if let Err(e) = c.result {
                failed.get_or_insert(e.to_string());
            }
            if measuring {
                let ns = t.duration_since(started[slot]).as_nanos() as u64;
                let _ = hist.record(ns.max(1));
                let _ = interval.record(ns.max(1));
                ios += 1;
            }
            free.push(slot);
        });
        if let Some(e) = failed {
            return Err(anyhow!("I/O failed during the benchmark: {e}"));
        }
        if let Some(t) = now {
            if !measuring && t >= measure_from {
                measuring = true;
                base = qp.stats();
            } else if t >= end {
                break;
            } else if measuring && t >= next_tick {
                intervals.push(interval.clone());
                interval.reset();
                next_tick += Duration::from_secs(1);
            }
        } else if Instant::now() >= end + Duration::from_secs(30) {
            return Err(anyhow!("no completion for 30 s"));
        }
    }
    let seconds = begin.elapsed().as_secs_f64() - warmup.as_secs_f64();
    let stats = diff(base, qp.stats());
    qp.drain(|_| {});
    intervals.push(interval);
    Ok(DriverRun {
        ios,
        seconds,
        hist,
        intervals,
        stats,
    })
}
