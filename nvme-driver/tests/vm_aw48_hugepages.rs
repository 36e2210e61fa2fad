//! A second VM configuration: the Intel vIOMMU with a 48-bit address width (the main suite uses QEMU's default
//! of 39 bits) and 2 MiB hugepages reserved in the guest, so DMA buffers of 2 MiB and more come from hugepages.

use nvkv_qemu::suite::{self, GuestTest};
use nvkv_qemu::{NvmeController, NvmeNamespace, Vm};
use nvme_driver::Controller;
use std::error::Error;
use std::time::{Duration, Instant};

type R = Result<(), Box<dyn Error>>;
const ADDR: &str = "0000:00:10.0";

fn main() {
    let tests = [
        GuestTest {
            name: "aw48_identify_and_verified_io",
            run: aw48_identify_and_verified_io,
        },
        GuestTest {
            name: "large_buffers_use_hugepages",
            run: large_buffers_use_hugepages,
        },
    ];
    suite::main(&tests, || {
        let img = std::env::temp_dir().join(format!("nvkv-aw48-{}/n1.img", std::process::id()));
        Vm::builder().aw_bits(48).hugepages(64).controller(
            NvmeController::new("NVKV-AW48").namespace(NvmeNamespace::file(img, 32 << 20, 4096)),
        )
    });
}

fn hugepages_free() -> Result<u64, Box<dyn Error>> {
    let m = std::fs::read_to_string("/proc/meminfo")?;
    let line = m
        .lines()
        .find(|l| l.starts_with("HugePages_Free:"))
        .ok_or("no HugePages_Free in /proc/meminfo")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("bad meminfo line")?
        .parse()?)
}

/// Submits one request and polls until it completes; returns its buffer.
fn wait(qp: &mut nvme_driver::QueuePair) -> Result<nvme_driver::DmaBuf, Box<dyn Error>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut done = None;
        qp.poll(1, |comp| done = Some((comp.result, comp.buf)));
        if let Some((r, b)) = done {
            r?;
            return Ok(b.ok_or("buffer not handed back")?);
        }
        if Instant::now() > deadline {
            return Err("I/O did not complete within 60 s".into());
        }
    }
}

/// Writes `len` bytes of a pattern at LBA 0, reads them back into another buffer and compares.
fn round_trip(c: &Controller, len: usize, seed: u8) -> R {
    let ns = c.namespace(1)?;
    let mut qp = c.queue_pair()?;
    let mut w = c.alloc(len)?;
    for (i, b) in w.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    qp.write(&ns, 0, w, 0..len, 1).map_err(|e| e.to_string())?;
    let w = wait(&mut qp)?;
    qp.read(&ns, 0, c.alloc(len)?, 0..len, 2)
        .map_err(|e| e.to_string())?;
    let r = wait(&mut qp)?;
    if w[..] != r[..] {
        return Err("data read back differs from data written".into());
    }
    Ok(())
}

fn aw48_identify_and_verified_io() -> R {
    let c = Controller::open(ADDR)?;
    if c.info().serial != "NVKV-AW48" {
        return Err(format!("serial {:?}", c.info().serial).into());
    }
    round_trip(&c, 256 << 10, 3)
}

fn large_buffers_use_hugepages() -> R {
    let before = hugepages_free()?;
    if before == 0 {
        return Err("the guest has no free hugepages".into());
    }
    let c = Controller::open(ADDR)?;
    let big = c.alloc(4 << 20)?;
    let during = hugepages_free()?;
    if during + 2 > before {
        return Err(format!(
            "a 4 MiB DMA buffer did not take hugepages ({before} free before, {during} after)"
        )
        .into());
    }
    drop(big);
    round_trip(&c, 4 << 20, 9)
}
