//! `nvkv`: a shell over the nvkv engine, on nvkv's own NVMe driver (`--nvme ADDR`) or on a file or block
//! device (`--file PATH`).

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use nvkv::bdev::{BlockDevice, DeviceFactory, FileDisk, NvmeFactory};
use nvkv::{Db, DurableLogDevice, Options};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    version,
    about = "The nvkv key-value shell: format, put, get, delete, scan, stats, check, salvage"
)]
struct Cli {
    /// PCI address of an NVMe controller bound to vfio-pci (see `nvkv-setup bind`).
    #[arg(long, conflicts_with = "file")]
    nvme: Option<String>,
    /// Namespace on the controller.
    #[arg(long, default_value_t = 1)]
    nsid: u32,
    /// A file or block device to hold the database instead.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Size to give a new file (e.g. 256M, 4G).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Shards (fixed when the database is formatted).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Where durable writes are acknowledged from: `none` (the persistence cycle), `pmr` (the NVMe
    /// controller's Persistent Memory Region) or the path of persistent memory (an NVDIMM's
    /// /dev/daxN.M, a file on a DAX filesystem). A database used with a log must be opened with it
    /// after a crash.
    #[arg(long, default_value = "none")]
    durable_log: String,
    /// Bytes of the durable-log device per shard (e.g. 4M; default: an equal share).
    #[arg(long, value_parser = parse_size)]
    durable_log_size: Option<u64>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an empty database on a blank device (with --force: zero the whole device first).
    Format {
        /// Erase whatever the device holds (a database, a damaged one, foreign data).
        #[arg(long)]
        force: bool,
    },
    /// Store VALUE under KEY (durable when the command returns).
    Put { key: String, value: String },
    /// Print the value of KEY (exit status 1 when absent).
    Get { key: String },
    /// Delete KEY.
    Delete { key: String },
    /// Print keys and values in order from START (inclusive) to END (exclusive).
    Scan {
        #[arg(default_value = "")]
        start: String,
        end: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Per-shard statistics.
    Stats,
    /// Recover, then read back and verify every record; report what recovery found.
    Check,
    /// Read the newest record of every key the segments hold (for a database `open` refuses as
    /// unrecoverable; it reads only) and copy them into a new database in the file TO.
    Salvage {
        /// The new database's file (must not exist or be blank).
        to: PathBuf,
        /// Its size (default: the source's).
        #[arg(long, value_parser = parse_size)]
        to_size: Option<u64>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (n, m) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    n.parse::<u64>()
        .map(|v| v * m)
        .map_err(|e| format!("bad size {s:?}: {e}"))
}

/// The device the database lives on.
enum Device {
    Nvme(Arc<NvmeFactory>),
    File(Arc<FileDisk>),
}

impl Cli {
    fn device(&self) -> Result<Device> {
        match (&self.nvme, &self.file) {
            (Some(addr), None) => Ok(Device::Nvme(Arc::new(
                NvmeFactory::open(addr, self.nsid).map_err(|e| anyhow!("{e}"))?,
            ))),
            (None, Some(path)) => Ok(Device::File(Arc::new(
                FileDisk::open(path, self.size)
                    .with_context(|| format!("opening {}", path.display()))?,
            ))),
            _ => bail!("say where the database is: --nvme PCI_ADDR or --file PATH"),
        }
    }

    fn options(&self, create: bool) -> Options {
        let mut o = Options::file("/dev/null", None);
        o.shards = self.shards.max(1);
        o.create = create;
        o.durable_log = match self.durable_log.as_str() {
            "none" => DurableLogDevice::None,
            "pmr" => DurableLogDevice::Pmr,
            path => DurableLogDevice::Pmem(path.into()),
        };
        o.durable_log_bytes = self.durable_log_size.unwrap_or(0) as usize;
        o
    }
}

fn open(dev: &Device, opts: Options) -> Result<Db> {
    let r = match dev {
        Device::Nvme(f) => Db::open_with(opts, f.clone()),
        Device::File(f) => Db::open_with(opts, f.clone()),
    };
    r.map_err(|e| anyhow!("opening the database: {e}"))
}

/// Which path durable writes take, in words.
fn durable_path(s: &nvkv::ShardStats) -> String {
    match (s.durable_log, &s.durable_log_failed) {
        (_, Some(why)) => format!("persistence cycle (the durable log failed: {why})"),
        (Some(kind), None) => format!(
            "durable log ({kind}, {} of {} bytes in use); {} acknowledged by it, {} by a cycle",
            s.durable_log_used_bytes,
            s.durable_log_capacity,
            s.durable_log_writes,
            s.durable_cycle_writes
        ),
        (None, None) => {
            "persistence cycle (segment write, then Flush when the device has a volatile cache)"
                .into()
        }
    }
}

/// Zeroes every block with Write Zeroes (each piece answered within a minute, or an error).
fn zero_device<F: DeviceFactory>(f: &F) -> Result<u64> {
    let mut d = f.open(0).map_err(|e| anyhow!("opening the device: {e}"))?;
    Ok(nvkv::bdev::zero_all(
        &mut d,
        std::time::Duration::from_secs(60),
    )?)
}

fn main() {
    if let Err(e) = run() {
        // The engine keeps only an errno of a failed DMA allocation; the driver remembers when the cause was
        // RLIMIT_MEMLOCK, and that is the part an operator can fix.
        match nvme_driver::memlock::last_shortfall() {
            Some(s) => eprintln!("nvkv: {e:#}: {s}"),
            None => eprintln!("nvkv: {e:#}"),
        }
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let dev = cli.device()?;
    match &cli.cmd {
        Cmd::Format { force } => {
            if *force {
                let blocks = match &dev {
                    Device::Nvme(f) => zero_device(f.as_ref())?,
                    Device::File(f) => zero_device(f.as_ref())?,
                };
                println!("{blocks} blocks zeroed");
            }
            // The engine formats only a blank device: anything else is reported, never erased.
            let db = open(&dev, cli.options(true))
                .context("add --force to erase what the device holds")?;
            let formatted = db.recovery_reports().iter().all(|r| r.formatted);
            let keys: u64 = db.recovery_reports().iter().map(|r| r.keys).sum();
            db.close().map_err(|e| anyhow!("{e}"))?;
            if !formatted {
                bail!(
                    "the device holds an nvkv database with {keys} keys: add --force to erase it"
                );
            }
            println!("formatted: {} shard(s)", cli.shards.max(1));
        }
        Cmd::Put { key, value } => {
            let db = open(&dev, cli.options(false))?;
            db.handle()
                .put_opts(
                    key.as_bytes(),
                    value.as_bytes(),
                    nvkv::WriteOpts {
                        ts: None,
                        durable: true,
                    },
                )
                .map_err(|e| anyhow!("put: {e}"))?;
            db.close().map_err(|e| anyhow!("{e}"))?;
        }
        Cmd::Get { key } => {
            let db = open(&dev, cli.options(false))?;
            let v = db.get(key.as_bytes()).map_err(|e| anyhow!("get: {e}"))?;
            db.close().map_err(|e| anyhow!("{e}"))?;
            match v {
                Some(v) => println!("{}", String::from_utf8_lossy(&v)),
                None => {
                    eprintln!("nvkv: {key:?} not found");
                    std::process::exit(1);
                }
            }
        }
        Cmd::Delete { key } => {
            let db = open(&dev, cli.options(false))?;
            let r = db
                .handle()
                .delete_opts(
                    key.as_bytes(),
                    nvkv::WriteOpts {
                        ts: None,
                        durable: true,
                    },
                )
                .map_err(|e| anyhow!("delete: {e}"))?;
            db.close().map_err(|e| anyhow!("{e}"))?;
            if !r.applied {
                eprintln!("nvkv: {key:?} not found");
                std::process::exit(1);
            }
        }
        Cmd::Scan { start, end, limit } => {
            let db = open(&dev, cli.options(false))?;
            let pairs = db
                .handle()
                .scan(start.as_bytes(), end.as_deref().map(str::as_bytes), *limit)
                .map_err(|e| anyhow!("scan: {e}"))?;
            db.close().map_err(|e| anyhow!("{e}"))?;
            for (k, v) in pairs {
                println!(
                    "{}\t{}",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&v)
                );
            }
        }
        Cmd::Stats => {
            let db = open(&dev, cli.options(false))?;
            let stats = db.handle().stats().map_err(|e| anyhow!("stats: {e}"))?;
            db.close().map_err(|e| anyhow!("{e}"))?;
            for s in stats {
                println!(
                    "shard {}: {} keys, {} live bytes, {} dead bytes, {} free blocks in {} extents, {} segments",
                    s.shard, s.keys, s.live_bytes, s.dead_bytes, s.free_blocks, s.free_extents, s.segments
                );
                println!("shard {}: durable writes: {}", s.shard, durable_path(&s));
            }
        }
        Cmd::Check => {
            let db = open(&dev, cli.options(false))?;
            let mut problems = 0;
            for r in db.recovery_reports() {
                println!(
                    "shard {}: superblock seq {}, checkpoint {} ({} keys), {} segments / {} records replayed, stopped: {}, {}{} keys",
                    r.shard,
                    r.superblock_seq,
                    if r.checkpoint_loaded { "loaded" } else { "none" },
                    r.checkpoint_keys,
                    r.segments_replayed,
                    r.records_replayed,
                    r.replay_stop,
                    if r.checkpoint_fallback {
                        "NEWEST CHECKPOINT DAMAGED, the one before it used, "
                    } else {
                        ""
                    },
                    r.keys
                );
                for e in r.superblock_errors.iter().chain(&r.checkpoint_errors) {
                    println!("shard {}: warning: {e}", r.shard);
                }
                problems += u64::from(r.checkpoint_fallback);
            }
            // Reading every value checks its record: header and payload checksums, key, length and version
            // against the index.
            let h = db.handle();
            let all = h
                .scan(b"", None, usize::MAX)
                .map_err(|e| anyhow!("scan: {e}"))?;
            let mut bad = 0u64;
            for (k, _) in &all {
                if let Err(e) = h.get(k) {
                    println!("bad record for key {:?}: {e}", String::from_utf8_lossy(k));
                    bad += 1;
                }
            }
            let stats = h.stats().map_err(|e| anyhow!("stats: {e}"))?;
            db.close().map_err(|e| anyhow!("{e}"))?;
            let free: u64 = stats.iter().map(|s| s.free_blocks).sum();
            println!(
                "{} records verified, {bad} bad; {free} free blocks",
                all.len()
            );
            if bad > 0 || problems > 0 {
                bail!("check found {bad} bad records and {problems} damaged newest checkpoints");
            }
        }
        Cmd::Salvage { to, to_size } => {
            let shards = cli.shards.max(1) as u32;
            let mut found = Vec::new();
            let mut source_bytes = 0u64;
            for shard in 0..shards {
                let (got, rep) = match &dev {
                    Device::Nvme(f) => salvage(f.as_ref(), shard, shards, &mut source_bytes)?,
                    Device::File(f) => salvage(f.as_ref(), shard, shards, &mut source_bytes)?,
                };
                println!(
                    "shard {shard}: {} segments, {} records, {} keys found; {} segments of other volumes left alone",
                    rep.segments, rep.records, rep.keys, rep.foreign_segments
                );
                found.extend(got);
            }
            let mut o = Options::file(to, Some(to_size.unwrap_or(source_bytes)));
            o.shards = shards as usize;
            o.create = true;
            let db = Db::open(o).map_err(|e| anyhow!("opening {}: {e}", to.display()))?;
            if !db.recovery_reports().iter().all(|r| r.formatted) {
                bail!(
                    "{} already holds a database: salvage into a new file",
                    to.display()
                );
            }
            let h = db.handle();
            for s in &found {
                let opts = nvkv::WriteOpts {
                    ts: Some(s.ts),
                    durable: false,
                };
                h.put_opts(&s.key, &s.value, opts)
                    .map_err(|e| anyhow!("writing {}: {e}", to.display()))?;
            }
            h.sync().map_err(|e| anyhow!("sync: {e}"))?;
            db.close().map_err(|e| anyhow!("{e}"))?;
            println!("{} keys copied into {}", found.len(), to.display());
        }
    }
    Ok(())
}

/// Salvages one slice of the device `f` makes.
fn salvage<F: DeviceFactory>(
    f: &F,
    shard: u32,
    shards: u32,
    bytes: &mut u64,
) -> Result<(Vec<nvkv::salvage::Salvaged>, nvkv::salvage::SalvageReport)> {
    let mut d = f
        .open(shard as usize)
        .map_err(|e| anyhow!("opening the device: {e}"))?;
    *bytes = d.num_blocks() * u64::from(d.block_size());
    nvkv::salvage::salvage_slice(&mut d, shard, shards).map_err(|e| anyhow!("salvage: {e}"))
}
