//! Runs a [`Plan`] where the device is: inside the test VM or on a bare-metal host. Contenders alternate
//! (A B, then B A, ...) within the one boot; between them the device moves from vfio-pci to the kernel's nvme
//! driver and back, so both measure the same device on the same machine.

use crate::driver_perf;
use crate::fio;
use crate::plan::{Contender, Measurement, Plan, Rw};
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
    fn kv(&mut self, m: crate::kv::KvMeasurement);
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
    // Progress counts the whole boot: the driver's steps, then the key-value comparison's.
    let total = plan.steps();
    let mut step = 0;
    let warmup = Duration::from_secs_f64(plan.warmup_s);
    let duration = Duration::from_secs_f64(plan.duration_s);
    // No driver workloads (`--kv-only`): no rounds.
    let rounds = if plan.workloads.is_empty() {
        0
    } else {
        plan.rounds
    };
    for round in 0..rounds {
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
                        let limit = Duration::from_secs_f64(plan.warmup_s + plan.duration_s + 60.0);
                        // A failed run is reported and skipped; the others still count.
                        let r = match fio::run(fio_bin, &args, limit) {
                            Ok(r) => r,
                            Err(e) => {
                                let what = format!(
                                    "boot {boot} round {round} {} {}",
                                    c.label(),
                                    w.label()
                                );
                                sink.info(
                                    &format!("failed: {what}"),
                                    &e.to_string().replace('\n', " "),
                                );
                                continue;
                            }
                        };
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
    if let Some(kv) = &plan.kv {
        run_kv(kv, boot, plan.kernel_identity_domain, sink, step, total)?;
    }
    Ok(())
}

/// Mounts a fresh ext4 file system of `block` at /mnt (mke2fs from e2fsprogs: busybox's takes no `-t ext4`)
/// and checks the mount really is on that device, so db_bench cannot silently write to guest RAM. The inode
/// tables and the journal are initialised by mke2fs, not lazily after mounting: otherwise the kernel's
/// ext4lazyinit thread zeroes them in the background while RocksDB is being measured.
pub fn mount_ext4(mke2fs: &Path, block: &Path) -> Result<PathBuf> {
    let _ = std::process::Command::new("umount").arg("/mnt").status();
    let st = std::process::Command::new(mke2fs)
        .args([
            "-t",
            "ext4",
            "-F",
            "-q",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
        ])
        .arg(block)
        .status()?;
    if !st.success() {
        anyhow::bail!("mke2fs -t ext4 {} failed: {st}", block.display());
    }
    std::fs::create_dir_all("/mnt")?;
    let st = std::process::Command::new("mount")
        .args(["-t", "ext4"])
        .arg(block)
        .arg("/mnt")
        .status()?;
    if !st.success() {
        anyhow::bail!("mounting {} on /mnt failed: {st}", block.display());
    }
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    if !mounts
        .lines()
        .any(|l| l.starts_with(&format!("{} /mnt ext4", block.display())))
    {
        anyhow::bail!("/mnt is not {} mounted as ext4:\n{mounts}", block.display());
    }
    Ok(PathBuf::from("/mnt"))
}

/// The key-value comparison: rounds of nvkv (nvme backend, nvkv's driver) and RocksDB (db_bench on ext4 on
/// the kernel's nvme driver), alternating, on the same controller.
pub fn run_kv(
    kv: &crate::plan::KvPlan,
    boot: usize,
    identity: bool,
    sink: &mut dyn Sink,
    first_step: usize,
    total: usize,
) -> Result<()> {
    use crate::kv::{self, Workload};
    // Progress continues from the driver's steps (`first_step` done of `total`, see KvPlan::steps).
    let mut step = first_step;
    for round in 0..kv.rounds {
        // Which system goes first alternates by round and by boot, so with one round per boot the
        // boots alternate it.
        let turn = boot + round;
        let mut order = [true, false];
        if turn % 2 == 1 {
            order.reverse();
        }
        for nvkv_turn in order {
            if nvkv_turn {
                to_vfio(&kv.device)?;
                step += 1;
                sink.progress(
                    step,
                    total,
                    &format!("boot {boot} round {round}: raw sequential write"),
                );
                sink.kv(raw_sequential_write(
                    &kv.device,
                    Duration::from_secs_f64(kv.spec.duration_s.clamp(1.0, 5.0)),
                    boot,
                    round,
                )?);
                // The raw write (and RocksDB's ext4 before it) left data nvkv refuses to format
                // over: blank the superblock areas, as `nvkv format --force` would.
                blank_superblocks(&kv.device)?;
                for &vs in &kv.value_sizes {
                    let spec = kv::KvSpec {
                        value_size: vs,
                        keys: keys_for(kv.spec.keys, vs),
                        ..kv.spec
                    };
                    // First the shard-local path (the client loop on the shard's core), then the
                    // handle path; each formats the device and fills it afresh.
                    let local = std::thread::scope(|sc| {
                        sc.spawn(|| nvkv_local_turn(kv, &spec, boot, round))
                            .join()
                            .unwrap_or_else(|_| Err(anyhow!("shard-local run panicked")))
                    })?;
                    for m in local {
                        step += 1;
                        sink.progress(
                            step,
                            total,
                            &format!(
                                "boot {boot} round {round}: nvkv shard-local {} {vs} B",
                                m.workload
                            ),
                        );
                        sink.kv(m);
                    }
                    let factory = std::sync::Arc::new(
                        nvkv::bdev::NvmeFactory::open(&kv.device, 1).map_err(|e| anyhow!("{e}"))?,
                    );
                    let mut opts = nvkv::Options::file("/dev/null", None);
                    opts.shards = spec.threads.max(1);
                    opts.create = true;
                    opts.commit_interval = Duration::from_millis(1);
                    opts.busy_poll = true;
                    let db = nvkv::Db::open_with(opts, factory)
                        .map_err(|e| anyhow!("opening nvkv: {e}"))?;
                    let h = db.handle();
                    let mut all: Vec<Workload> = kv.workloads.clone();
                    if kv.ycsb {
                        all.extend("ABCDEF".chars().map(|which| Workload::Ycsb {
                            which,
                            dist: kv::Dist::Zipfian,
                        }));
                    }
                    all.push(Workload::DurableThroughput);
                    for w in all {
                        step += 1;
                        sink.progress(
                            step,
                            total,
                            &format!("boot {boot} round {round}: nvkv {} {vs} B", w.name()),
                        );
                        let before = db.stats().map_err(|e| anyhow!("nvkv stats: {e}"))?;
                        let r = kv::nvkv_run(&h, w, &spec)?;
                        let after = db.stats().map_err(|e| anyhow!("nvkv stats: {e}"))?;
                        let threads =
                            if matches!(w, Workload::DurablePut | Workload::DurableThroughput) {
                                1
                            } else {
                                spec.threads
                            };
                        let mut m = kv::measurement(
                            "nvkv-handle",
                            w,
                            "nvkv-handle: DbHandle calls from a client thread to the shard thread (cross-core hop per operation), nvme backend (nvkv's driver, VFIO)",
                            &spec,
                            r,
                            boot,
                            round,
                            threads,
                        );
                        m.engine = Some(kv::EngineWork::between(&before, &after));
                        sink.kv(m);
                    }
                    db.close().map_err(|e| anyhow!("closing nvkv: {e}"))?;
                    for m in durable_log_turns(kv, &spec, boot, round)? {
                        step += 1;
                        sink.progress(
                            step,
                            total,
                            &format!("boot {boot} round {round}: {} durable_put {vs} B", m.system),
                        );
                        sink.kv(m);
                    }
                }
                if let Some(e) = &kv.embed {
                    // libnvkv from C against the Rust handle, each run on a freshly blanked device.
                    let configs =
                        e.configs(crate::embed::Backend::Nvme, Some(kv.device.clone().into()));
                    let fresh = |_: &crate::embed::Config| blank_superblocks(&kv.device);
                    // Numbered by `turn`, so C and Rust swap places as the systems above do.
                    let ms = crate::embed::compare(
                        Path::new(&e.bin),
                        &configs,
                        turn..turn + 1,
                        &fresh,
                        |what| {
                            step += 1;
                            sink.progress(step, total, &format!("boot {boot} {what}"));
                        },
                    )?;
                    for mut m in ms {
                        m.boot = boot;
                        m.round = round;
                        sink.kv(m);
                    }
                }
            } else {
                let (block, _, domain, _) = to_kernel(&kv.device, identity)?;
                for &vs in &kv.value_sizes {
                    let spec = kv::KvSpec {
                        value_size: vs,
                        keys: keys_for(kv.spec.keys, vs),
                        ..kv.spec
                    };
                    let mnt = mount_ext4(Path::new(&kv.mke2fs), &block)?;
                    let path = format!("db_bench on ext4, kernel nvme driver ({domain} IOMMU domain); fill, reads and mix50 in one process, mix95 after its own fill; Debian's build: assertions on");
                    // Fill, reads and a mix in one db_bench process, as nvkv runs them on one open
                    // database (see kv::db_bench_sessions); each session on a fresh database. Not pinned:
                    // RocksDB's flush and compaction threads get the other vCPU, as nvkv's shard thread does.
                    for (si, session) in kv::db_bench_sessions(&kv.workloads).iter().enumerate() {
                        let names: Vec<String> = session.iter().map(|w| w.name()).collect();
                        sink.progress(
                            step,
                            total,
                            &format!(
                                "boot {boot} round {round}: rocksdb {} {vs} B",
                                names.join(",")
                            ),
                        );
                        let dir = mnt.join(format!("db{si}"));
                        let results = kv::db_bench_session(
                            Path::new(&kv.db_bench),
                            session,
                            &spec,
                            &dir,
                            true,
                            None,
                        )?;
                        for (j, (w, ops_per_s, latency, ops)) in results.into_iter().enumerate() {
                            // A later session's own fill only prepares its mix.
                            if si > 0 && j == 0 && w == Workload::FillRandom {
                                continue;
                            }
                            step += 1;
                            sink.kv(kv::KvMeasurement {
                                system: "rocksdb".into(),
                                workload: w.name(),
                                path: path.clone(),
                                key_size: spec.key_size,
                                value_size: vs,
                                keys: spec.keys,
                                threads: if w == Workload::DurablePut {
                                    1
                                } else {
                                    spec.threads
                                },
                                ops,
                                seconds: ops as f64 / ops_per_s.max(1e-9),
                                ops_per_s,
                                mb_per_s: None,
                                latency,
                                boot,
                                round,
                                engine: None,
                            });
                        }
                    }
                    let _ = std::process::Command::new("umount").arg("/mnt").status();
                }
            }
        }
    }
    to_vfio(&kv.device)
}

/// Durable puts (one client, new keys, each acknowledged once durable) with a durable log: in the KV
/// controller's PMR and on the NVDIMM, each shard-local (the client loop on the shard's core, as the
/// `nvkv` rows) and through the handle (as the `nvkv-handle` rows), in an order that alternates by
/// round. The database the earlier runs left is reopened (recovery) with the log attached; cycles come
/// every 100 ms (the log acknowledges, the cycles only retire it).
fn durable_log_turns(
    kv: &crate::plan::KvPlan,
    spec: &crate::kv::KvSpec,
    boot: usize,
    round: usize,
) -> Result<Vec<crate::kv::KvMeasurement>> {
    let mut turns: Vec<&str> = Vec::new();
    if kv.pmr_log {
        turns.push("pmr");
    }
    if kv.nvdimm_log {
        turns.push("nvdimm");
    }
    if (boot + round) % 2 == 1 {
        turns.reverse();
    }
    let mut out = Vec::new();
    for which in turns {
        let (device, what) = match which {
            "pmr" => (
                nvkv::DurableLogDevice::Pmr,
                "a durable log in the controller's PMR (BAR 4 through VFIO; QEMU backs it with a host file on /dev/shm, its barrier — a PMRSTS read — is an msync of that file)".to_string(),
            ),
            _ => {
                let dd = guest::nvdimm_devdax(2 << 20).map_err(|e| anyhow!("NVDIMM: {e}"))?;
                (
                    nvkv::DurableLogDevice::Pmem(dd.path.clone()),
                    format!("a durable log on an emulated NVDIMM ({}, devdax; QEMU backs it with a host file on /dev/shm; barrier: cache-line write-back and sfence)", dd.path.display()),
                )
            }
        };
        let local = std::thread::scope(|sc| {
            sc.spawn(|| {
                durable_log_local(
                    kv,
                    spec,
                    &device,
                    &format!("nvkv-{which}"),
                    &what,
                    boot,
                    round,
                )
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow!("shard-local run panicked")))
        })?;
        out.push(local);
        out.push(durable_log_handle(
            kv,
            spec,
            device,
            &format!("nvkv-{which}-handle"),
            &what,
            boot,
            round,
        )?);
    }
    Ok(out)
}

/// New keys past what the earlier durable puts wrote.
fn past_earlier_keys(spec: &crate::kv::KvSpec) -> crate::kv::KvSpec {
    crate::kv::KvSpec {
        keys: spec.keys * 4,
        ..*spec
    }
}

fn durable_log_local(
    kv: &crate::plan::KvPlan,
    spec: &crate::kv::KvSpec,
    device: &nvkv::DurableLogDevice,
    system: &str,
    what: &str,
    boot: usize,
    round: usize,
) -> Result<crate::kv::KvMeasurement> {
    use nvkv::bdev::DeviceFactory;
    crate::driver_perf::pin_to_cpu(0);
    let factory = nvkv::bdev::NvmeFactory::open(&kv.device, 1).map_err(|e| anyhow!("{e}"))?;
    let region: Box<dyn nvkv::pmem::PersistentMemory> = match device {
        nvkv::DurableLogDevice::Pmr => factory
            .persistent_memory(1, 0)
            .map_err(|e| anyhow!("{e}"))?
            .and_then(|mut v| v.pop())
            .ok_or_else(|| anyhow!("the KV controller has no PMR"))?,
        nvkv::DurableLogDevice::Pmem(p) => {
            Box::new(nvkv::pmem::MappedPmem::open_whole(p).map_err(|e| anyhow!("{e}"))?)
        }
        d => anyhow::bail!("no shard-local run with durable log {}", d.name()),
    };
    let dev = factory.open(0).map_err(|e| anyhow!("{e}"))?;
    let cfg = nvkv::ShardConfig {
        create: true,
        commit_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let (mut shard, _) = nvkv::Shard::open_with_log(dev, cfg, Some(region))
        .map_err(|e| anyhow!("opening nvkv with {what}: {e}"))?;
    let before = [shard.stats()];
    if before[0].durable_log.is_none() {
        anyhow::bail!(
            "no durable log attached: {:?}",
            before[0].durable_log_failed
        );
    }
    let r = crate::kv::nvkv_local_run(
        &mut shard,
        crate::kv::Workload::DurablePut,
        &past_earlier_keys(spec),
    )?;
    let after = [shard.stats()];
    let mut m = crate::kv::measurement(
        system,
        crate::kv::Workload::DurablePut,
        &format!("{system}: shard-local (the client loop on the shard's core, a barrier after every put), {what}; nvme backend"),
        spec,
        r,
        boot,
        round,
        1,
    );
    m.engine = Some(crate::kv::EngineWork::between(&before, &after));
    shard.close().map_err(|e| anyhow!("closing nvkv: {e}"))?;
    Ok(m)
}

fn durable_log_handle(
    kv: &crate::plan::KvPlan,
    spec: &crate::kv::KvSpec,
    device: nvkv::DurableLogDevice,
    system: &str,
    what: &str,
    boot: usize,
    round: usize,
) -> Result<crate::kv::KvMeasurement> {
    let factory = std::sync::Arc::new(
        nvkv::bdev::NvmeFactory::open(&kv.device, 1).map_err(|e| anyhow!("{e}"))?,
    );
    let mut opts = nvkv::Options::file("/dev/null", None);
    opts.shards = spec.threads.max(1);
    opts.create = true;
    opts.commit_interval = Duration::from_millis(100);
    opts.busy_poll = true;
    opts.durable_log = device;
    let db =
        nvkv::Db::open_with(opts, factory).map_err(|e| anyhow!("opening nvkv with {what}: {e}"))?;
    let h = db.handle();
    let before = db.stats().map_err(|e| anyhow!("nvkv stats: {e}"))?;
    if before.iter().any(|s| s.durable_log.is_none()) {
        anyhow::bail!(
            "no durable log attached: {:?}",
            before[0].durable_log_failed
        );
    }
    let r = crate::kv::nvkv_run(
        &h,
        crate::kv::Workload::DurablePut,
        &past_earlier_keys(spec),
    )?;
    let after = db.stats().map_err(|e| anyhow!("nvkv stats: {e}"))?;
    let mut m = crate::kv::measurement(
        system,
        crate::kv::Workload::DurablePut,
        &format!("{system}: DbHandle calls from a client thread to the shard thread, {what}; nvme backend"),
        spec,
        r,
        boot,
        round,
        1,
    );
    m.engine = Some(crate::kv::EngineWork::between(&before, &after));
    db.close().map_err(|e| anyhow!("closing nvkv: {e}"))?;
    Ok(m)
}

/// Zeroes the two superblock blocks at the start of every slice of a 1- to 8-shard layout, so that the
/// next open formats the device (nvkv formats only a blank device).
fn blank_superblocks(device: &str) -> Result<()> {
    use nvkv::bdev::{BlockDevice, DeviceFactory};
    let factory = nvkv::bdev::NvmeFactory::open(device, 1).map_err(|e| anyhow!("{e}"))?;
    let mut d = factory.open(0).map_err(|e| anyhow!("{e}"))?;
    let total = d.num_blocks();
    let mut starts: Vec<u64> = (1..=8u64)
        .flat_map(|n| (0..n).map(move |i| i * (total / n)))
        .collect();
    starts.sort_unstable();
    starts.dedup();
    for (tag, lba) in starts.into_iter().enumerate() {
        let mut tries = 0;
        while let Err(e) = d.submit_write_zeroes(lba, 2, tag as u64) {
            tries += 1;
            if tries > 1000 || !matches!(e, nvkv::bdev::SubmitError::Busy(_)) {
                anyhow::bail!("write zeroes at block {lba} refused");
            }
            d.poll(16, |_| {});
        }
        let mut done = None;
        let start = std::time::Instant::now();
        while done.is_none() {
            d.poll(1, |c| done = Some(c.result));
            if start.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("write zeroes at block {lba}: no completion in 30 s");
            }
        }
        if let Some(Err(e)) = done {
            anyhow::bail!("write zeroes at block {lba}: {e}");
        }
    }
    Ok(())
}

/// Fewer keys for large values, so a run fits the guest's device and time.
/// The device's raw sequential write bandwidth through nvkv's driver (the ceiling of durable-write
/// throughput), measured on the KV device in the same boot; the database is formatted again afterwards.
fn raw_sequential_write(
    device: &str,
    duration: Duration,
    boot: usize,
    round: usize,
) -> Result<crate::kv::KvMeasurement> {
    let ctrl = Controller::open(device).map_err(|e| anyhow!("{e}"))?;
    let ns = ctrl.namespace(1).map_err(|e| anyhow!("{e}"))?;
    let w = crate::plan::Workload {
        rw: Rw::Write,
        bs: RAW_WRITE_BS,
        qd: RAW_WRITE_QD,
        threads: 1,
    };
    let r = driver_perf::run(&ctrl, &ns, &w, Duration::from_millis(300), duration)?;
    let lat = r.latency();
    Ok(crate::kv::KvMeasurement {
        system: "device".into(),
        workload: "raw_seq_write".into(),
        path: format!(
            "nvkv driver, sequential {} KiB writes at QD {}, one queue pair",
            RAW_WRITE_BS / 1024,
            RAW_WRITE_QD
        ),
        key_size: 0,
        value_size: RAW_WRITE_BS,
        keys: 0,
        threads: 1,
        ops: r.ios,
        seconds: r.seconds,
        ops_per_s: r.ios as f64 / r.seconds.max(1e-9),
        mb_per_s: Some(r.ios as f64 * RAW_WRITE_BS as f64 / r.seconds.max(1e-9) / 1e6),
        latency: lat,
        boot,
        round,
        engine: None,
    })
}

/// nvkv's shard-local turn for one value size: this thread (pinned to CPU 0) opens the device as one
/// shard and runs the compared workloads on it, polling between operations.
fn nvkv_local_turn(
    kv: &crate::plan::KvPlan,
    spec: &crate::kv::KvSpec,
    boot: usize,
    round: usize,
) -> Result<Vec<crate::kv::KvMeasurement>> {
    use nvkv::bdev::DeviceFactory;
    crate::driver_perf::pin_to_cpu(0);
    let factory = nvkv::bdev::NvmeFactory::open(&kv.device, 1).map_err(|e| anyhow!("{e}"))?;
    let dev = factory.open(0).map_err(|e| anyhow!("{e}"))?;
    let cfg = nvkv::ShardConfig {
        create: true,
        commit_interval: Duration::from_millis(1),
        ..Default::default()
    };
    let (mut shard, _) = nvkv::Shard::open(dev, cfg).map_err(|e| anyhow!("opening nvkv: {e}"))?;
    let mut out = Vec::new();
    for &w in &kv.workloads {
        let before = [shard.stats()];
        let r = crate::kv::nvkv_local_run(&mut shard, w, spec)?;
        let after = [shard.stats()];
        let mut m = crate::kv::measurement(
            "nvkv",
            w,
            "nvkv: shard-local, the client loop runs on the shard's core and polls the device between operations (no thread hop), nvme backend (nvkv's driver, VFIO)",
            spec,
            r,
            boot,
            round,
            1,
        );
        m.engine = Some(crate::kv::EngineWork::between(&before, &after));
        out.push(m);
    }
    shard.close().map_err(|e| anyhow!("closing nvkv: {e}"))?;
    Ok(out)
}

/// Block size and queue depth of the raw sequential write (large writes, several in flight: the way the
/// engine writes its segments).
const RAW_WRITE_BS: usize = 128 << 10;
const RAW_WRITE_QD: usize = 8;

fn keys_for(keys: u64, value_size: usize) -> u64 {
    if value_size >= 1024 {
        (keys / 4).max(100)
    } else {
        keys
    }
}
