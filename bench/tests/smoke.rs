//! A short run of the main job (`nvkv-bench run --quick`): boots the VM, measures nvkv and the polled kernel
//! path for half a second each, and checks the report it writes. Seconds of workload, not minutes; it checks
//! the harness and the report's schema, never a timing.

use std::path::PathBuf;

#[test]
fn main_job_quick_run_writes_a_valid_report() {
    if std::env::var("NVKV_SKIP_VM").is_ok_and(|v| v == "1")
        && !std::env::var("CI").is_ok_and(|v| v == "true")
    {
        eprintln!("SKIPPED: NVKV_SKIP_VM=1");
        return;
    }
    let out = std::env::temp_dir().join(format!("nvkv-bench-smoke-{}", std::process::id()));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_nvkv-bench"))
        .args(["run", "--quick", "--out"])
        .arg(&out)
        .status()
        .expect("run nvkv-bench");
    assert!(status.success(), "nvkv-bench run --quick failed: {status}");
    let dirs: Vec<PathBuf> = std::fs::read_dir(&out)
        .expect("results dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "one timestamped results folder: {dirs:?}");
    let text = std::fs::read_to_string(dirs[0].join("report.json")).expect("report.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("report.json is JSON");
    assert_eq!(v["schema"], "nvkv-bench/report/v1");
    let c = &v["conditions"];
    for k in [
        "environment",
        "vcpus",
        "device",
        "duration_s",
        "boots",
        "pinning",
    ] {
        assert!(!c[k].is_null(), "conditions.{k} missing");
    }
    assert!(
        c["environment"].as_str().unwrap_or("").contains("TCG")
            || c["environment"].as_str().unwrap_or("").contains("KVM")
    );
    let ms = v["measurements"].as_array().expect("measurements");
    assert_eq!(ms.len(), 4, "2 workloads x 2 contenders");
    for m in ms {
        assert!(m["iops"].as_f64().unwrap_or(0.0) > 0.0, "no IOPS in {m}");
        assert!(
            m["latency"]["p50_us"].as_f64().unwrap_or(0.0) > 0.0,
            "no latency in {m}"
        );
        match m["contender"].as_str() {
            Some("nvkv") => {
                assert!(m["mmio_writes_per_io"].as_f64().is_some());
                let log = m["hdr_log_file"]
                    .as_str()
                    .expect("nvkv runs have an HdrHistogram interval log");
                let text = std::fs::read_to_string(dirs[0].join(log)).expect("interval log file");
                assert!(
                    text.contains("#[StartTime:")
                        && text.lines().any(|l| !l.starts_with('#') && l.contains(',')),
                    "not an interval log: {text}"
                );
            }
            Some("kernel_io_uring_polled") => {
                assert_eq!(
                    m["poll_queue"], true,
                    "the kernel's poll queue was not in use"
                );
                assert_eq!(m["iommu_domain"], "identity");
            }
            other => panic!("unexpected contender {other:?}"),
        }
    }
    // Embedding: the C program and the Rust handle, each on the host's memory and file backends and
    // on the VM's nvme backend, with operations done.
    let embed = v["embed"].as_array().expect("embed");
    for sys in ["embed-c", "embed-rust"] {
        for backend in ["memory backend", "file backend", "nvme backend"] {
            for workload in ["fillrandom", "readrandom-batch64", "mix50"] {
                assert!(
                    embed.iter().any(|m| m["system"] == sys
                        && m["workload"] == workload
                        && m["path"].as_str().unwrap_or("").contains(backend)
                        && m["ops"].as_u64().unwrap_or(0) > 0),
                    "no {sys} {workload} run on the {backend}"
                );
            }
        }
    }
    let summary = v["summary"].as_array().expect("summary");
    assert!(
        summary.iter().any(|s| s["nvkv_ratio"].as_f64().is_some()),
        "no ratio in the summary"
    );
    // Durable puts by all three paths (cycle, PMR log, NVDIMM log) and RocksDB's, each measured.
    let kv = v["kv"].as_array().expect("kv measurements");
    for system in [
        "nvkv",
        "nvkv-handle",
        "nvkv-pmr",
        "nvkv-pmr-handle",
        "nvkv-nvdimm",
        "nvkv-nvdimm-handle",
        "rocksdb",
    ] {
        let m = kv
            .iter()
            .find(|m| m["system"] == system && m["workload"] == "durable_put")
            .unwrap_or_else(|| panic!("no durable_put of {system}"));
        assert!(
            m["ops"].as_u64().unwrap_or(0) > 0,
            "{system}: no durable puts"
        );
        if system.starts_with("nvkv-pmr") || system.starts_with("nvkv-nvdimm") {
            assert!(
                m["engine"]["durable_by_log"].as_u64().unwrap_or(0) > 0,
                "{system}: nothing acknowledged by the durable log: {m}"
            );
        }
    }
    let table = std::fs::read_to_string(dirs[0].join("table.txt")).expect("table.txt");
    assert!(
        table.contains("durable put, one client"),
        "no durable-put table"
    );
    for f in [
        "table.txt",
        "iops_vs_qd_randread.svg",
        "latency_qd1_randread.svg",
        "kv_ops_100.svg",
        "durable_put_100.svg",
        "report.html",
    ] {
        assert!(dirs[0].join(f).exists(), "{f} missing");
    }
    let _ = std::fs::remove_dir_all(&out);
}
