//! Unit tests of the fault-injecting device.
use super::*;
use crate::bdev::MemDisk;

fn write(d: &mut FaultBdev<crate::bdev::MemBdev>, lba: u64, byte: u8, tag: u64) {
    let mut b = d.alloc_buf(512).expect("alloc");
    b.fill(byte);
    d.submit_write(lba, 1, b, 0, tag).expect("submit");
}

fn drain(d: &mut FaultBdev<crate::bdev::MemBdev>) -> Vec<(u64, bool)> {
    let mut out = Vec::new();
    for _ in 0..10 {
        d.poll(64, |c| out.push((c.tag, c.result.is_ok())));
    }
    out
}

#[test]
fn only_flushed_writes_are_durable() {
    let mem = MemDisk::new(512, 8);
    let fd = FaultDisk::over_mem(&mem, 1, FaultConfig::default());
    let mut d = fd.wrap(mem.bdev());
    write(&mut d, 1, 0xaa, 1);
    drain(&mut d);
    // Submitted before the second write completed: covers only the first.
    d.submit_flush(2).expect("flush");
    write(&mut d, 2, 0xbb, 3);
    drain(&mut d);
    let img = fd.durable_image();
    assert_eq!(img[512], 0xaa);
    assert_eq!(img[1024], 0);
    assert_eq!(fd.unflushed_writes(), 1);
    // The restart image has everything; the power-loss image at least the durable part.
    let crash = fd.crash();
    assert_eq!(crash[512], 0xaa);
}

#[test]
fn an_older_write_never_replaces_a_newer_one() {
    let mem = MemDisk::new(512, 8);
    let fd = FaultDisk::over_mem(&mem, 7, FaultConfig::default());
    let mut d = fd.wrap(mem.bdev());
    write(&mut d, 1, 1, 1);
    drain(&mut d);
    d.submit_flush(2).expect("flush");
    write(&mut d, 1, 2, 3);
    drain(&mut d);
    d.submit_flush(4).expect("flush");
    drain(&mut d);
    assert_eq!(fd.durable_image()[512], 2);
}

#[test]
fn errors_resets_and_power_off() {
    let mem = MemDisk::new(512, 8);
    let cfg = FaultConfig {
        write_error_ppm: 1_000_000,
        ..Default::default()
    };
    let fd = FaultDisk::over_mem(&mem, 3, cfg);
    let mut d = fd.wrap(mem.bdev());
    write(&mut d, 1, 9, 1);
    assert_eq!(drain(&mut d), vec![(1, false)]);
    fd.set_config(FaultConfig {
        reset_ppm: 1_000_000,
        ..Default::default()
    });
    write(&mut d, 2, 9, 2);
    assert_eq!(drain(&mut d), vec![(2, false)]);
    assert_eq!(fd.counters().resets, 1);
    fd.set_config(FaultConfig::default());
    let _ = fd.crash();
    let b = d.alloc_buf(512).expect("alloc");
    assert!(matches!(
        d.submit_read(0, 1, b, 0, 5),
        Err(SubmitError::Invalid(..))
    ));
}

#[test]
fn the_same_seed_gives_the_same_faults() {
    let run = |seed| {
        let mem = MemDisk::new(512, 64);
        let cfg = FaultConfig {
            write_error_ppm: 200_000,
            delay_ppm: 300_000,
            reorder: true,
            ..Default::default()
        };
        let fd = FaultDisk::over_mem(&mem, seed, cfg);
        let mut d = fd.wrap(mem.bdev());
        for i in 0..32 {
            write(&mut d, i, i as u8, i);
        }
        let order = drain(&mut d);
        (order, fd.crash())
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42).0, run(43).0);
}
