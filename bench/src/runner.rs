//! Runs a [`Plan`] where the device is: inside the test VM or on a bare-metal host. Contenders alternate
//! (A B, then B A, ...) within the one boot; between them the device moves from vfio-pci to the kernel's nvme
//! driver and back, so both measure the same device on the same machine.

use crate::driver_perf;
use crate::fio;
use crate::plan::{Contender, Measurement, Plan};
use anyhow::{anyhow, Context, Result};
use nvkv_qemu::guest;
use nvme_driver::{Controller, ControllerOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where results and progress go.
pub trait Sink {
    fn measurement(&mut self, m: Measurement);
    fn progress(&mut self, step: usize, total: usize, what: &str);
    fn info(&mut self, key: &str, value: &str);
}

fn group_type_path(addr: &str) -> Result<PathBuf> {
    Ok(PathBuf::from(format!(
        "/sys/kernel/iommu_groups/{}/type",
        guest::iommu_group(addr)?
    )))
}

fn set_group_type(addr: &str, ty: &str) -> Result<()> {
    let p = group_type_path(addr)?;
    let cur = std::fs::read_to_string(&p).unwrap_or_default();
    // sysfs shows "DMA-FQ" for the lazy variant of DMA; only write when the type really changes.
    if cur.trim() == ty || (ty == "DMA" && cur.trim().starts_with("DMA")) {
        return Ok(());
    }
    std::fs::write(&p, ty).with_context(|| {
        format!(
            "setting {} to {ty} (the device must be unbound)",
            p.display()
        )
    })
}

/// Moves the device to vfio-pci (no-op when already there).
pub fn to_vfio(addr: &str) -> Result<()> {
    if guest::driver(addr).as_deref() == Some("vfio-pci") {
        return Ok(());
    }
    unbind(addr)?;
    set_group_type(addr, "DMA")?;
    guest::bind_vfio(addr).map_err(|e| anyhow!("{e}"))
}

fn unbind(addr: &str) -> Result<()> {
    let drv = PathBuf::from(format!("/sys/bus/pci/devices/{addr}/driver/unbind"));
    if drv.exists() {
        std::fs::write(&drv, addr).with_context(|| format!("unbinding {addr}"))?;
    }
    Ok(())
}

/// Moves the device to the kernel's nvme driver, with an identity IOMMU domain when asked (QEMU.md trap 2);
/// returns (block device, generic char device, group type, poll queue in use).
pub fn to_kernel(addr: &str, identity: bool) -> Result<(PathBuf, PathBuf, String, bool)> {
    if guest::driver(addr).as_deref() != Some("nvme") {
        unbind(addr)?;
        set_group_type(addr, if identity { "identity" } else { "DMA" })?;
        guest::bind_kernel(addr).map_err(|e| anyhow!("{e}"))?;
    }
    let block = guest::block_device(addr)
        .ok_or_else(|| anyhow!("{addr}: no block device after binding nvme"))?;
    let name = block
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    // /dev/nvme0n1 → /dev/ng0n1 (the generic char device for passthrough).
    let generic = PathBuf::from(format!("/dev/{}", name.replacen("nvme", "ng", 1)));
    for _ in 0..200 {
        if generic.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let ty = std::fs::read_to_string(group_type_path(addr)?)
        .unwrap_or_default()
        .trim()
        .to_string();
    let poll = std::fs::read_to_string(format!("/sys/block/{name}/queue/io_poll"))
        .unwrap_or_default()
        .trim()
        == "1";
    Ok((block, generic, ty, poll))
}

/// Runs the plan: `rounds` rounds; even rounds run nvkv first, odd rounds the kernel first.
pub fn run(plan: &Plan, boot: usize, fio_bin: &Path, sink: &mut dyn Sink) -> Result<()> {
    let kernel: Vec<Contender> = plan
        .contenders
        .iter()
        .copied()
        .filter(|c| c.is_kernel())
        .collect();
    let with_nvkv = plan.contenders.contains(&Contender::Nvkv);
    let total = plan.rounds * plan.workloads.len() * (kernel.len() + with_nvkv as usize);
    let mut step = 0;
    let warmup = Duration::from_secs_f64(plan.warmup_s);
    let duration = Duration::from_secs_f64(plan.duration_s);
    for round in 0..plan.rounds {
        let mut order: Vec<bool> = vec![true, false]; // true = nvkv's turn
        if round % 2 == 1 {
            order.reverse();
        }
        for nvkv_turn in order {
            if nvkv_turn && with_nvkv {
                to_vfio(&plan.device)?;
                let opts = ControllerOptions {
                    shadow_doorbells: plan.shadow_doorbells,
                    ..Default::default()
                };
                let ctrl = Controller::open_with(&plan.device, opts).map_err(|e| anyhow!("{e}"))?;
                let ns = ctrl.namespace(1).map_err(|e| anyhow!("{e}"))?;
                if boot == 0 && round == 0 {
                    sink.info(
                        "controller",
                        &format!(
                            "{} {} fw {}",
                            ctrl.info().model,
                            ctrl.info().serial,
                            ctrl.info().firmware
                        ),
                    );
                    sink.info(
                        "namespace",
                        &format!("{} blocks of {} B", ns.blocks, ns.lba_size),
                    );
                    sink.info("shadow_doorbells", &ctrl.shadow_doorbells().to_string());
                }
                for w in &plan.workloads {
                    step += 1;
                    sink.progress(
                        step,
                        total,
                        &format!(
                            "boot {boot} round {round}: {} {}",
                            Contender::Nvkv.label(),
                            w.label()
                        ),
                    );
                    let r = driver_perf::run(&ctrl, &ns, w, warmup, duration)?;
                    let ios = r.ios.max(1) as f64;
                    sink.measurement(Measurement {
                        contender: Contender::Nvkv,
                        workload: w.clone(),
                        boot,
                        round,
                        ios: r.ios,
                        seconds: r.seconds,
                        iops: r.ios as f64 / r.seconds,
                        mb_per_s: r.ios as f64 * w.bs as f64 / r.seconds / 1e6,
                        latency: r.latency(),
                        mmio_writes_per_io: Some(r.stats.mmio_writes() as f64 / ios),
                        shadow_updates_per_io: Some(
                            (r.stats.sq_shadow_updates + r.stats.cq_shadow_updates) as f64 / ios,
                        ),
                        poll_queue: None,
                        iommu_domain: None,
                        hdr_interval_log: r
                            .interval_log(&format!("nvkv {} boot {boot} round {round}", w.label()))
                            .ok(),
                        hdr_log_file: None,
                    });
                }
            } else if !nvkv_turn && !kernel.is_empty() {
                let (block, generic, domain, poll) =
                    to_kernel(&plan.device, plan.kernel_identity_domain)?;
                for &c in &kernel {
                    for w in &plan.workloads {
                        step += 1;
                        sink.progress(
                            step,
                            total,
                            &format!("boot {boot} round {round}: {} {}", c.label(), w.label()),
                        );
                        let args =
                            fio::args(c, w, &block, &generic, plan.warmup_s, plan.duration_s);
                        let r = fio::run(fio_bin, &args)?;
                        sink.measurement(Measurement {
                            contender: c,
                            workload: w.clone(),
                            boot,
                            round,
                            ios: r.ios,
                            seconds: r.seconds,
                            iops: r.iops,
                            mb_per_s: r.mb_per_s,
                            latency: r.latency,
                            mmio_writes_per_io: None,
                            shadow_updates_per_io: None,
                            poll_queue: Some(poll),
                            iommu_domain: Some(domain.clone()),
                            hdr_interval_log: None,
                            hdr_log_file: None,
                        });
                    }
                }
            }
        }
    }
    to_vfio(&plan.device)?;
    Ok(())
}
