//! `nvkv-qemu`: set up the host for the test VM, or boot it and run a command inside.

use anyhow::Context;
use clap::{Parser, Subcommand};
use nvkv_qemu::{vm::Bind, Accel, NvmeController, NvmeNamespace, Vm};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "The nvkv test VM: QEMU with emulated NVMe controllers behind a virtual IOMMU"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the Debian packages the VM needs (qemu-system-x86, linux-image-amd64, busybox-static, fio,
    /// nvme-cli, cpio) when missing.
    Setup,
    /// Boot the VM and run a shell command in it; exits with the command's status.
    Run {
        /// tcg (default, works everywhere) or kvm (bare-metal hosts).
        #[arg(long, default_value = "tcg")]
        accel: Accel,
        /// NVMe controllers as `size=1G,lba=4096[,file=PATH][,mdts=N][,qpairs=N][,kernel]`; repeatable.
        #[arg(long = "nvme", default_value = "size=1G,lba=4096")]
        nvme: Vec<String>,
        /// Host binaries to carry into the guest as /bin/NAME.
        #[arg(long = "binary")]
        binaries: Vec<PathBuf>,
        /// Overall timeout in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// The command (busybox sh).
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

fn parse_size(s: &str) -> anyhow::Result<u64> {
    let (num, mult) = match s.chars().last() {
        Some('K') | Some('k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') | Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('G') | Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    Ok(num
        .parse::<u64>()
        .with_context(|| format!("bad size {s:?}"))?
        * mult)
}

fn parse_nvme(i: usize, spec: &str) -> anyhow::Result<NvmeController> {
    let (mut size, mut lba, mut file, mut c) = (
        1u64 << 30,
        4096u32,
        None,
        NvmeController::new(&format!("nvkv{i:04}")),
    );
    for kv in spec.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "size" => size = parse_size(v)?,
            "lba" => lba = v.parse().context("lba")?,
            "file" => file = Some(PathBuf::from(v)),
            "mdts" => c = c.mdts(v.parse().context("mdts")?),
            "qpairs" => c = c.max_ioqpairs(v.parse().context("qpairs")?),
            "serial" => c.serial = v.to_string(),
            "kernel" => c = c.bind(Bind::Kernel),
            _ => anyhow::bail!("unknown --nvme key {k:?}"),
        }
    }
    let ns = match file {
        Some(f) => NvmeNamespace::file(f, size, lba),
        None => NvmeNamespace::null(size, lba),
    };
    Ok(c.namespace(ns))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => nvkv_qemu::host::setup()?,
        Cmd::Run {
            accel,
            nvme,
            binaries,
            timeout,
            command,
        } => {
            let mut b = Vm::builder()
                .accel(accel)
                .timeout(std::time::Duration::from_secs(timeout))
                .echo(true);
            for (i, spec) in nvme.iter().enumerate() {
                b = b.controller(parse_nvme(i, spec)?);
            }
            for bin in &binaries {
                let name = bin
                    .file_name()
                    .and_then(|n| n.to_str())
                    .context("binary name")?
                    .to_string();
                b = b.binary(bin, &name);
            }
            let out = b.run(&command.join(" "))?;
            eprintln!(
                "nvkv-qemu: boot {:.1} s, total {:.1} s, exit {}",
                out.boot_time.as_secs_f64(),
                out.total_time.as_secs_f64(),
                out.exit_code
            );
            std::process::exit(out.exit_code);
        }
    }
    Ok(())
}
