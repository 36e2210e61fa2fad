//! The kernel NVMe path, measured by fio (`--output-format=json`), with the same workload as nvkv's.

use crate::plan::{Contender, Latency, Workload, PERCENTILES};
use anyhow::{anyhow, Context, Result};
use std::path::Path;

/// What fio measured.
#[derive(Debug, Clone)]
pub struct FioRun {
    pub ios: u64,
    pub seconds: f64,
    pub iops: f64,
    pub mb_per_s: f64,
    pub latency: Latency,
}

/// fio's arguments for `w` on the kernel path `c`, using block device `block` or generic char device `generic`.
pub fn args(
    c: Contender,
    w: &Workload,
    block: &Path,
    generic: &Path,
    warmup_s: f64,
    duration_s: f64,
) -> Vec<String> {
    let pct: Vec<String> = PERCENTILES.iter().map(|p| format!("{p}")).collect();
    let mut a = vec![
        "--name=nvkv-baseline".to_string(),
        format!("--rw={}", w.rw.fio_name()),
        format!("--bs={}", w.bs),
        format!("--iodepth={}", w.qd),
        format!("--numjobs={}", w.threads),
        format!("--cpus_allowed=0-{}", w.threads.saturating_sub(1)),
        "--cpus_allowed_policy=split".into(),
        "--time_based".into(),
        format!("--runtime={}ms", (duration_s * 1000.0) as u64),
        format!("--ramp_time={}ms", (warmup_s * 1000.0) as u64),
        "--norandommap".into(),
        "--randrepeat=0".into(),
        "--group_reporting".into(),
        format!("--percentile_list={}", pct.join(":")),
        "--output-format=json".into(),
    ];
    match c {
        Contender::KernelIoUring | Contender::KernelIoUringPolled => {
            a.push(format!("--filename={}", block.display()));
            a.push("--ioengine=io_uring".into());
            a.push("--direct=1".into());
            if c == Contender::KernelIoUringPolled {
                a.push("--hipri".into());
            }
        }
        Contender::KernelIoUringCmdPolled => {
            // Passthrough bypasses the page cache; --direct=1 makes fio 3.33 fail to open /dev/ng* (QEMU.md).
            a.push(format!("--filename={}", generic.display()));
            a.push("--ioengine=io_uring_cmd".into());
            a.push("--cmd_type=nvme".into());
            a.push("--hipri".into());
        }
        Contender::Nvkv => {}
    }
    a
}

/// Runs fio and parses its JSON report.
/// fio is killed if it runs `limit` past its own runtime (a polled passthrough job was seen to hang).
pub fn run(fio: &Path, args: &[String], limit: std::time::Duration) -> Result<FioRun> {
    use std::io::Read;
    let mut child = std::process::Command::new(fio)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", fio.display()))?;
    let mut so = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no fio stdout"))?;
    let mut se = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no fio stderr"))?;
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(anyhow!(
                "fio did not finish within {} s and was killed",
                limit.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    struct Out {
        status: std::process::ExitStatus,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    }
    let out = Out {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(anyhow!(
            "fio failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            text
        ));
    }
    parse(&text)
}

/// Parses fio's JSON output (fio may print notes before the JSON object).
pub fn parse(text: &str) -> Result<FioRun> {
    let start = text
        .find('{')
        .ok_or_else(|| anyhow!("no JSON in fio output: {text}"))?;
    let v: serde_json::Value = serde_json::from_str(&text[start..]).context("parsing fio JSON")?;
    let job = v["jobs"]
        .get(0)
        .ok_or_else(|| anyhow!("fio JSON has no jobs"))?;
    let (r, w) = (&job["read"], &job["write"]);
    let dir = if r["total_ios"].as_u64().unwrap_or(0) >= w["total_ios"].as_u64().unwrap_or(0) {
        r
    } else {
        w
    };
    let ios = dir["total_ios"].as_u64().unwrap_or(0);
    let runtime_ms = dir["runtime"].as_f64().unwrap_or(0.0);
    let iops = dir["iops"].as_f64().unwrap_or(0.0);
    let bw_bytes = dir["bw_bytes"].as_f64().unwrap_or(0.0);
    let clat = &dir["clat_ns"];
    let pct = &clat["percentile"];
    let at = |p: f64| pct[format!("{p:.6}")].as_f64().unwrap_or(0.0) / 1000.0;
    let latency = Latency {
        p50_us: at(50.0),
        p99_us: at(99.0),
        p999_us: at(99.9),
        max_us: clat["max"].as_f64().unwrap_or(0.0) / 1000.0,
        cdf: PERCENTILES.iter().map(|&p| (p, at(p))).collect(),
    };
    if ios == 0 {
        return Err(anyhow!("fio reported no I/O"));
    }
    Ok(FioRun {
        ios,
        seconds: runtime_ms / 1000.0,
        iops,
        mb_per_s: bw_bytes / 1e6,
        latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Rw;

    #[test]
    fn parses_fio_json_with_leading_notes() {
        let text = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{ "jobs": [ { "read": { "total_ios": 1000, "runtime": 2000, "iops": 500.0, "bw_bytes": 2048000,
  "clat_ns": { "max": 90000, "percentile": { "50.000000": 20000, "99.000000": 50000, "99.900000": 80000 } } },
  "write": { "total_ios": 0 } } ] }"#;
        let r = parse(text).expect("parse");
        assert_eq!(r.ios, 1000);
        assert_eq!(r.iops, 500.0);
        assert_eq!(r.latency.p50_us, 20.0);
        assert_eq!(r.latency.p999_us, 80.0);
        assert_eq!(r.latency.max_us, 90.0);
        assert!((r.mb_per_s - 2.048).abs() < 1e-9);
    }

    #[test]
    fn passthrough_never_gets_direct() {
        let w = Workload {
            rw: Rw::RandRead,
            bs: 4096,
            qd: 32,
            threads: 1,
        };
        let a = args(
            Contender::KernelIoUringCmdPolled,
            &w,
            Path::new("/dev/nvme0n1"),
            Path::new("/dev/ng0n1"),
            0.5,
            2.0,
        );
        assert!(a.contains(&"--filename=/dev/ng0n1".to_string()));
        assert!(a.contains(&"--hipri".to_string()));
        assert!(!a.iter().any(|x| x.starts_with("--direct")));
        let a = args(
            Contender::KernelIoUring,
            &w,
            Path::new("/dev/nvme0n1"),
            Path::new("/dev/ng0n1"),
            0.5,
            2.0,
        );
        assert!(a.contains(&"--direct=1".to_string()) && !a.contains(&"--hipri".to_string()));
    }

    #[test]
    fn empty_report_is_an_error() {
        assert!(parse(r#"{"jobs":[{"read":{"total_ios":0},"write":{"total_ios":0}}]}"#).is_err());
        assert!(parse("fio: no such file").is_err());
    }
}
