//! The workload both systems get: closed-loop replicated puts from N clients, each a tokio task with its own
//! connection, a warm-up, then a timed window whose per-op latencies go into one HdrHistogram.

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use nvkv::bdev::SplitMix64;
use std::future::Future;
use std::time::{Duration, Instant};

/// Key length in bytes: "key" and 13 digits.
pub const KEY_BYTES: usize = 16;
/// Value length in bytes: a per-client counter, zero-padded.
pub const VALUE_BYTES: usize = 100;

/// One client connection of a system under test.
pub trait Putter: Send + 'static {
    /// A put that returns once the system has acknowledged it as replicated and durable; `Ok(n)` with the number
    /// of retries it took (an nvkv client that had to follow a not-leader answer), `Err` if it failed.
    fn put(&mut self, key: String, value: String) -> impl Future<Output = Result<u32>> + Send;
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one turn (one system, one client count) measured.
#[derive(Debug)]
pub struct TurnResult {
    /// Puts acknowledged that started in the timed window.
    pub ops: u64,
    /// From the window's start to the last of those acknowledgements (at least the window's length).
    pub elapsed_s: f64,
    pub errors: u64,
    pub retries: u64,
    pub first_error: Option<String>,
    /// Latencies in nanoseconds.
    pub hist: Histogram<u64>,
}

impl TurnResult {
    pub fn ops_per_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.ops as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    pub fn quantile_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The key of index `i`: exactly [`KEY_BYTES`] bytes.
pub fn key_of(i: u64) -> String {
    format!("key{:013}", i % 10_000_000_000_000)
}

/// The value of a client's `n`-th put: exactly [`VALUE_BYTES`] bytes of ASCII digits.
pub fn value_of(n: u64) -> String {
    format!("{n:0width$}", width = VALUE_BYTES)
}

fn new_hist() -> Result<Histogram<u64>> {
    // 1 ns to 60 s at 3 significant digits: every latency a put can have before its request timeout.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).context("creating a histogram")
}

struct TaskOut {
    ops: u64,
    errors: u64,
    retries: u64,
    first_error: Option<String>,
    last_done: Option<Instant>,
    hist: Histogram<u64>,
}

/// A client that keeps failing stops after this many errors in one turn: it would otherwise spin on a dead
/// server for the whole window (each error also sleeps a little, see below).
const MAX_ERRORS_PER_CLIENT: u64 = 50;

/// Runs one turn: every putter in its own task, the same window for all.
pub async fn run_turn<P: Putter>(
    putters: Vec<P>,
    timing: Timing,
    key_space: u64,
    seed: u64,
) -> Result<TurnResult> {
    if putters.is_empty() || key_space == 0 {
        bail!("a turn needs at least one client and a non-empty key space");
    }
    let start = Instant::now();
    let warm_end = start + timing.warmup;
    let end = warm_end + timing.duration;
    let mut handles = Vec::with_capacity(putters.len());
    for (i, mut p) in putters.into_iter().enumerate() {
        let hist = new_hist()?;
        let mut rng = SplitMix64::new(seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        handles.push(tokio::spawn(async move {
            let mut out = TaskOut {
                ops: 0,
                errors: 0,
                retries: 0,
                first_error: None,
                last_done: None,
                hist,
            };
            let mut n: u64 = 0;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let key = key_of(rng.below(key_space));
                n += 1;
                let r = p.put(key, value_of(n)).await;
                let t1 = Instant::now();
                match r {
                    Ok(retries) => {
                        // Only puts that started inside the window count, the ones of the warm-up do not.
                        if t0 >= warm_end {
                            let ns = u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX);
                            out.hist.saturating_record(ns);
                            out.ops += 1;
                            out.retries += u64::from(retries);
                            out.last_done = Some(t1);
                        }
                    }
                    Err(e) => {
                        out.errors += 1;
                        if out.first_error.is_none() {
                            out.first_error = Some(format!("{e:#}"));
                        }
                        if out.errors >= MAX_ERRORS_PER_CLIENT {
                            break;
                        }
                        // A failing server answers fast: do not turn the window into a busy loop of errors.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            out
        }));
    }
    let mut total = TurnResult {
        ops: 0,
        elapsed_s: 0.0,
        errors: 0,
        retries: 0,
        first_error: None,
        hist: new_hist()?,
    };
    let mut last = end;
    for h in handles {
        let out = h.await.context("a client task panicked")?;
        total.ops += out.ops;
        total.errors += out.errors;
        total.retries += out.retries;
        if total.first_error.is_none() {
            total.first_error = out.first_error;
        }
        if let Some(t) = out.last_done {
            last = last.max(t);
        }
        total
            .hist
            .add(&out.hist)
            .context("merging the clients' histograms")?;
    }
    total.elapsed_s = (last - warm_end).as_secs_f64();
    if total.ops == 0 {
        bail!(
            "no put succeeded in the timed window ({} errors; first: {})",
            total.errors,
            total.first_error.as_deref().unwrap_or("none")
        );
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_have_the_sizes_the_report_states() {
        assert_eq!(key_of(0).len(), KEY_BYTES);
        assert_eq!(key_of(99_999).len(), KEY_BYTES);
        assert_eq!(key_of(u64::MAX).len(), KEY_BYTES);
        assert_eq!(value_of(1).len(), VALUE_BYTES);
        assert_eq!(value_of(u64::MAX).len(), VALUE_BYTES);
    }

    #[test]
    fn the_generator_stays_in_range_and_is_deterministic() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..10_000 {
            let x = a.below(100_000);
            assert!(x < 100_000);
            assert_eq!(x, b.below(100_000));
        }
    }

    struct Counting(u64);
    impl Putter for Counting {
        async fn put(&mut self, _k: String, _v: String) -> Result<u32> {
            self.0 += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(0)
        }
    }

    #[tokio::test]
    async fn a_turn_counts_only_the_timed_window() -> Result<()> {
        let timing = Timing {
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(200),
        };
        let r = run_turn(vec![Counting(0), Counting(0)], timing, 100, 1).await?;
        // Two clients at ≥ 1 ms a put for 0.2 s: at most ~400 in the window, and some.
        assert!(r.ops > 10 && r.ops <= 420, "ops {}", r.ops);
        assert!(r.elapsed_s >= 0.2);
        assert!(r.quantile_us(0.5) >= 1000.0);
        assert_eq!(r.errors, 0);
        Ok(())
    }
}
