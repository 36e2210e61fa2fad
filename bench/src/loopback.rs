//! The driver's own cost per I/O, measured against the loopback controller (`nvme_driver::loopback`): one
//! thread submits 4 KiB reads, rings, lets the loopback execute them inline, and polls. Nanoseconds per I/O
//! are measured natively; instructions per I/O with callgrind (valgrind), as the slope between two run
//! lengths so that set-up cancels out, split into the driver's part and the loopback's part
//! (`Loopback::step`, inclusive).

use anyhow::{anyhow, bail, Context, Result};
use nvme_driver::loopback::Loopback;
use nvme_driver::{DmaBuf, QueueConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// How the benchmark hands buffers to the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BufferPath {
    /// `QueuePair::read`: the buffer moves into the queue pair and comes back in the completion.
    Owned,
    /// `QueuePair::read_borrowed`: the caller keeps its buffers (SPDK's model); the tag names the buffer.
    Borrowed,
}

impl BufferPath {
    fn name(self) -> &'static str {
        match self {
            BufferPath::Owned => "owned",
            BufferPath::Borrowed => "borrowed",
        }
    }
}

/// One loopback measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoopbackResult {
    pub qd: usize,
    /// Which submission API the loop used.
    pub path: BufferPath,
    pub ios: u64,
    /// Wall time per I/O of the whole loop (driver submit + ring + poll, and the loopback's execution).
    pub ns_per_io: f64,
    /// Instructions per I/O of the whole loop (callgrind), if measured.
    pub instructions_per_io: Option<f64>,
    /// The loopback controller's share of those instructions.
    pub loopback_instructions_per_io: Option<f64>,
    /// The driver's share: `instructions_per_io - loopback_instructions_per_io`.
    pub driver_instructions_per_io: Option<f64>,
    pub instructions_source: String,
    pub mmio_writes_per_io: f64,
    pub sq_doorbells_per_io: f64,
    pub cq_doorbells_per_io: f64,
    pub conditions: String,
}

/// Runs `ios` 4 KiB reads at queue depth `qd`; returns (seconds, mmio writes, sq doorbells, cq doorbells).
pub fn measure(qd: usize, ios: u64, path: BufferPath) -> Result<(f64, u64, u64, u64)> {
    let mut lb = Loopback::new(1 << 20, 4096, false, 128 << 10).map_err(|e| anyhow!("{e}"))?;
    let ns = lb.namespace();
    let sq = (qd + 1).max(2);
    let cq = (4 * sq).max(1024);
    if sq > u16::MAX as usize || cq > u16::MAX as usize {
        bail!("queue depth {qd} too large");
    }
    let mut qp = lb
        .queue_pair(QueueConfig {
            sq_entries: sq as u16,
            cq_entries: cq as u16,
            ..QueueConfig::default()
        })
        .map_err(|e| anyhow!("{e}"))?;
    let mut bufs: Vec<DmaBuf> = Vec::with_capacity(qd);
    for _ in 0..qd {
        bufs.push(lb.dma().alloc(4096).map_err(|e| anyhow!("{e}"))?);
    }
    let (mut submitted, mut done) = (0u64, 0u64);
    let start = Instant::now();
    match path {
        BufferPath::Owned => {
            let mut free = bufs;
            while done < ios {
                while submitted < ios {
                    let Some(b) = free.pop() else { break };
                    if let Err(e) = qp.read(&ns, submitted & 0xffff, b, 0..4096, submitted) {
                        free.push(e.buf.ok_or_else(|| anyhow!("buffer lost"))?);
                        break;
                    }
                    submitted += 1;
                }
                qp.ring();
                lb.step();
                qp.poll(usize::MAX, |c| {
                    if let Some(b) = c.buf {
                        free.push(b);
                    }
                    done += 1;
                });
            }
        }
        BufferPath::Borrowed => {
            // Free buffer indices; a request's tag is its buffer's index.
            let mut free: Vec<u32> = (0..qd as u32).collect();
            while done < ios {
                while submitted < ios {
                    let Some(&i) = free.last() else { break };
                    // SAFETY: buffer i is not touched again until its completion comes back (the tag), and
                    // `bufs` outlives the queue pair's use (the loop drains every request before it ends).
                    let r = unsafe {
                        qp.read_borrowed(
                            &ns,
                            submitted & 0xffff,
                            &bufs[i as usize],
                            0..4096,
                            i.into(),
                        )
                    };
                    if r.is_err() {
                        break;
                    }
                    free.pop();
                    submitted += 1;
                }
                qp.ring();
                lb.step();
                qp.poll(usize::MAX, |c| {
                    free.push(c.tag as u32);
                    done += 1;
                });
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let s = qp.stats();
    drop(qp);
    Ok((
        secs,
        s.mmio_writes(),
        s.sq_doorbell_writes,
        s.cq_doorbell_writes,
    ))
}

/// Total instructions and the loopback's inclusive instructions of one run under callgrind.
fn callgrind(exe: &Path, qd: usize, ios: u64, path: BufferPath) -> Result<(f64, f64)> {
    let out = std::env::temp_dir().join(format!(
        "nvkv-callgrind-{}-{qd}-{ios}-{}.out",
        std::process::id(),
        path.name()
    ));
    let status = std::process::Command::new("valgrind")
        .args(["--tool=callgrind", "--quiet"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args([
            "loopback-run",
            "--qd",
            &qd.to_string(),
            "--ios",
            &ios.to_string(),
            "--path",
            path.name(),
        ])
        .status()
        .context("running valgrind (install Debian's valgrind)")?;
    if !status.success() {
        bail!("valgrind failed: {status}");
    }
    let ann = std::process::Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(&out)
        .output()
        .context("running callgrind_annotate")?;
    let _ = std::fs::remove_file(&out);
    let text = String::from_utf8_lossy(&ann.stdout);
    let num =
        |l: &str| -> Option<f64> { l.split_whitespace().next()?.replace(',', "").parse().ok() };
    let total = text
        .lines()
        .find(|l| l.contains("PROGRAM TOTALS"))
        .and_then(num)
        .ok_or_else(|| anyhow!("no PROGRAM TOTALS in callgrind_annotate output"))?;
    let step = text
        .lines()
        .filter(|l| l.contains("Loopback::step"))
        .filter_map(num)
        .fold(0.0, f64::max);
    Ok((total, step))
}

/// Measures every queue depth; with `instructions`, also under callgrind.
pub fn run(
    qds: &[usize],
    paths: &[BufferPath],
    ios: u64,
    instructions: bool,
) -> Result<Vec<LoopbackResult>> {
    let exe = std::env::current_exe()?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for (&qd, &path) in qds.iter().flat_map(|q| paths.iter().map(move |p| (q, p))) {
        crate::driver_perf::pin_to_cpu(0);
        // Warm up, then take the best of three runs (the least disturbed by the other core's load).
        measure(qd, ios / 10, path)?;
        let mut best = f64::MAX;
        let mut db = (0, 0, 0);
        for _ in 0..3 {
            let (secs, mmio, sqd, cqd) = measure(qd, ios, path)?;
            if secs < best {
                best = secs;
                db = (mmio, sqd, cqd);
            }
        }
        let (ins, lbins, src) = if instructions {
            let (n1, n2) = (20_000u64, 120_000u64);
            let (t1, s1) = callgrind(&exe, qd, n1, path)?;
            let (t2, s2) = callgrind(&exe, qd, n2, path)?;
            let d = (n2 - n1) as f64;
            (
                Some((t2 - t1) / d),
                Some((s2 - s1) / d),
                "valgrind --tool=callgrind, slope between 20k and 120k I/Os".to_string(),
            )
        } else {
            (None, None, "not measured (pass --instructions)".to_string())
        };
        let n = ios as f64;
        out.push(LoopbackResult {
            qd,
            path,
            ios,
            ns_per_io: best * 1e9 / n,
            instructions_per_io: ins,
            loopback_instructions_per_io: lbins,
            driver_instructions_per_io: ins.zip(lbins).map(|(a, b)| a - b),
            instructions_source: src,
            mmio_writes_per_io: db.0 as f64 / n,
            sq_doorbells_per_io: db.1 as f64 / n,
            cq_doorbells_per_io: db.2 as f64 / n,
            conditions: format!(
                "host, no VM, one thread pinned to CPU 0 ({cpu}), loopback controller inline, 4 KiB reads, release build, best of 3 runs of {ios} I/Os"
            ),
        });
    }
    Ok(out)
}
