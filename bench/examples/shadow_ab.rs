//! Shadow doorbells on against off in one boot, alternating (issue 17): 4 KiB random reads with nvkv's driver
//! benchmark (`driver_perf`, one pinned thread), each queue depth measured with shadow doorbells on and off in
//! turn (A B, then B A in the next round). Prints one `AB` line per measurement; run it in the test VM:
//!
//!     cargo build --release -p nvkv-bench --example shadow_ab
//!     cargo run -q -p nvkv-qemu -- run --binary target/release/examples/shadow_ab -- \
//!         /bin/shadow_ab 0000:00:10.0 1,32,128 2 1 4
//!
//! Arguments: PCI address, queue depths, rounds, warm-up seconds, measured seconds. A measurement, not a test:
//! nothing is asserted.

use anyhow::{anyhow, Context, Result};
use nvkv_bench::driver_perf;
use nvkv_bench::plan::{Rw, Workload};
use nvme_driver::{Controller, ControllerOptions};
use std::time::Duration;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let device = arg(0, "0000:00:10.0");
    let qds: Vec<usize> = arg(1, "1,32,128")
        .split(',')
        .map(|q| q.parse().context("queue depth"))
        .collect::<Result<_>>()?;
    let rounds: usize = arg(2, "2").parse().context("rounds")?;
    let warmup = Duration::from_secs_f64(arg(3, "1").parse().context("warm-up")?);
    let duration = Duration::from_secs_f64(arg(4, "4").parse().context("duration")?);
    for round in 0..rounds {
        for &qd in &qds {
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for shadow in order {
                let ctrl = Controller::open_with(
                    &device,
                    ControllerOptions {
                        shadow_doorbells: shadow,
                        ..Default::default()
                    },
                )
                .map_err(|e| anyhow!("{e}"))?;
                let ns = ctrl.namespace(1).map_err(|e| anyhow!("{e}"))?;
                let w = Workload {
                    rw: Rw::RandRead,
                    bs: 4096,
                    qd,
                    threads: 1,
                };
                let r = driver_perf::run(&ctrl, &ns, &w, warmup, duration);
                let on = if shadow { "on" } else { "off" };
                match r {
                    Ok(r) => {
                        let ios = r.ios.max(1) as f64;
                        let s = r.stats;
                        println!(
                            "AB round={round} qd={qd} shadow={on} iops={:.0} mmio_per_io={:.4} sq_mmio_per_io={:.4} cq_mmio_per_io={:.4} sq_shadow_per_io={:.4} p50_us={:.1} p99_us={:.1}",
                            r.ios as f64 / r.seconds,
                            s.mmio_writes() as f64 / ios,
                            s.sq_doorbell_writes as f64 / ios,
                            s.cq_doorbell_writes as f64 / ios,
                            s.sq_shadow_updates as f64 / ios,
                            r.latency().p50_us,
                            r.latency().p99_us,
                        );
                    }
                    Err(e) => println!("AB round={round} qd={qd} shadow={on} FAILED {e}"),
                }
            }
        }
    }
    Ok(())
}
