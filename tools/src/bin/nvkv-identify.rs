//! `nvkv-identify`: Identify Controller and Identify Namespace through nvkv's own driver.

use anyhow::{Context, Result};
use clap::Parser;
use nvkv_tools::identify::{IdCtrl, IdNs, Report};
use nvkv_tools::pmr::{PmrRegs, NO_PMR};
use nvme_driver::Controller;

#[derive(Parser, Debug)]
#[command(
    name = "nvkv-identify",
    version,
    about = "Print a controller's Identify Controller and Identify Namespace data, read through nvkv's driver",
    long_about = "Opens the controller through nvkv's userspace driver (it must be bound to vfio-pci: \
        `nvkv-setup bind ADDR`) and prints its Identify Controller data and the Identify Namespace data of \
        every active namespace, then the Persistent Memory Region registers (PMRCAP to PMRMSCU, decoded as \
        `nvme show-regs -H` decodes them) or \"no PMR\". With --json the field names and values are those of \
        nvme-cli's `nvme id-ctrl -o json` and `nvme id-ns -o json`, and \"pmr\" holds the raw PMR registers \
        under `nvme show-regs -o json`'s names (null without a PMR)."
)]
struct Cli {
    /// PCI address of the controller, e.g. 0000:01:00.0 (see `nvkv-setup list`).
    addr: String,
    /// Print JSON: {"address", "controller": {id-ctrl fields}, "namespaces": [{"nsid", id-ns fields}],
    /// "pmr": {pmrcap, pmrctl, pmrsts, pmrebs, pmrswtp, pmrmscl, pmrmscu} or null}.
    #[arg(long)]
    json: bool,
    /// Only this namespace (default: every active namespace).
    #[arg(long, short = 'n')]
    nsid: Option<u32>,
}

/// Prints the error and its causes on one line, without a backtrace (operators need the fix, not our stack).
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nvkv-identify: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let ctrl = Controller::open(&cli.addr)?;
    let controller = IdCtrl::from_raw(&ctrl.info().raw);
    let nsids: Vec<u32> = match cli.nsid {
        Some(n) => vec![ctrl.namespace(n)?.nsid],
        None => ctrl.namespaces().iter().map(|n| n.nsid).collect(),
    };
    let mut namespaces = Vec::new();
    for nsid in nsids {
        let raw = ctrl
            .identify_namespace(nsid)
            .with_context(|| format!("{}: Identify Namespace {nsid}", cli.addr))?;
        namespaces.push(IdNs::from_raw(nsid, &raw));
    }
    // Read only: the PMR is not enabled (nvme-cli's show-regs reads the same registers).
    let pmr = ctrl.pmr_registers().map(|r| PmrRegs::from_registers(&r));
    let report = Report {
        address: cli.addr.clone(),
        controller,
        namespaces,
        pmr,
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "NVMe Identify Controller ({}, through nvkv's driver):",
            report.address
        );
        print!("{}", report.controller.text());
        for ns in &report.namespaces {
            println!("\nNVMe Identify Namespace {}:", ns.nsid);
            print!("{}", ns.text());
        }
        match &report.pmr {
            Some(p) => {
                println!("\nPersistent Memory Region registers (as `nvme show-regs -H`):");
                print!("{}", p.text());
            }
            None => println!("\nPersistent Memory Region: {NO_PMR}"),
        }
    }
    Ok(())
}
