//! The etcd half for real: the binary starts three members of Debian's etcd (setup.sh installs it), runs a
//! short turn at 1 and 2 clients, stops them and writes report.json. Needs the `etcd` feature (protoc).

use std::process::Command;

#[test]
fn a_quick_etcd_only_run_writes_a_report() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("nvkv-raft-bench-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_nvkv-raft-bench"))
        .args(["run", "--quick", "--only", "etcd", "--clients", "1,2"])
        .args([
            "--duration-s",
            "0.5",
            "--warmup-s",
            "0.2",
            "--port-base",
            "24000",
        ])
        .arg("--dir")
        .arg(&dir)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json"))?)?;
    let summary = report["summary"].as_array().ok_or("no summary")?;
    assert_eq!(summary.len(), 2, "{report}");
    for s in summary {
        assert_eq!(s["system"], "etcd");
        assert!(s["ops_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{s}");
        assert!(s["p50_us"].as_f64().unwrap_or(0.0) > 0.0, "{s}");
    }
    assert!(report["conditions"]["etcd_version"]
        .as_str()
        .unwrap_or("")
        .starts_with("3.4"));
    // The data dirs are removed and no member is left: its port is free again.
    assert!(!dir.join("data").exists());
    assert!(std::net::TcpListener::bind(("127.0.0.1", 24011)).is_ok());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
