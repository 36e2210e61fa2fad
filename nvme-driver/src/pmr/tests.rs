//! Host tests of the PMR logic on ordinary memory: the register window and the region are `Bar`s over DMA
//! buffers of the identity IOMMU. The VM test (`tests/vm_pmr.rs`) covers QEMU's real PMR.

use super::*;
use crate::dma::Iommu;

/// PMRCAP as QEMU 7.2 builds it: RDS, WDS, BIR 4, PMRWBM 02h, CMSS.
const QEMU_PMRCAP: u32 = 0x0100_0898;

fn window(len: usize) -> Arc<Bar> {
    Arc::new(Bar::from_memory(Iommu::identity().alloc(len).expect("memory")).expect("non-null"))
}

/// A register window (PMRCAP set, PMRSTS ready and healthy) and a PMR of `len` bytes.
fn fake(len: usize, pmrcap: u32) -> (Pmr, Arc<Bar>) {
    let regs = window(0x2000);
    regs.write32(reg::PMRCAP, pmrcap);
    let cap = Pmrcap::decode(pmrcap);
    let barrier = check_capabilities("test", cap).expect("capabilities");
    let registers = PmrRegisters::read(&regs);
    let pmr = Pmr::new(
        Mapping {
            addr: "test".into(),
            map: window(len),
            regs: regs.clone(),
            barrier,
            controller: None,
        },
        registers,
    );
    (pmr, regs)
}

#[test]
fn capabilities_refuse_what_cannot_be_made_persistent() {
    assert_eq!(
        check_capabilities("a", Pmrcap::decode(QEMU_PMRCAP)).expect("QEMU's PMR"),
        PmrWriteBarrier::PmrstsRead
    );
    // PMRWBM 0: no barrier at all.
    let no_wbm = QEMU_PMRCAP & !(0xf << 10);
    match check_capabilities("a", Pmrcap::decode(no_wbm)) {
        Err(e @ PmrError::NoWriteBarrier { pmrwbm: 0, .. }) => {
            assert!(e.to_string().contains("PMRWBM"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // Only reserved PMRWBM bits: no barrier either.
    let reserved = no_wbm | 0xc << 10;
    assert!(matches!(
        check_capabilities("a", Pmrcap::decode(reserved)),
        Err(PmrError::NoWriteBarrier { pmrwbm: 0xc, .. })
    ));
    // Bit 0 only: the PMR read barrier.
    assert_eq!(
        check_capabilities("a", Pmrcap::decode(no_wbm | 1 << 10)).expect("bit 0"),
        PmrWriteBarrier::MemoryRead
    );
    // No write data support.
    assert!(matches!(
        check_capabilities("a", Pmrcap::decode(QEMU_PMRCAP & !(1 << 4))),
        Err(PmrError::Unsupported { .. })
    ));
    // BIR 0 and 1 are reserved (BAR0/1 hold the registers).
    for bir in [0u32, 1, 6, 7] {
        let v = QEMU_PMRCAP & !(7 << 5) | bir << 5;
        assert!(
            matches!(
                check_capabilities("a", Pmrcap::decode(v)),
                Err(PmrError::Unsupported { .. })
            ),
            "BIR {bir}"
        );
    }
    assert!(matches!(
        check_capabilities("a", Pmrcap::decode(u32::MAX)),
        Err(PmrError::Gone { .. })
    ));
}

#[test]
fn enable_sets_en_and_reports_a_bounded_wait() {
    let regs = window(0x2000);
    enable("a", &regs, Duration::ZERO).expect("ready at once");
    assert_eq!(regs.read32(reg::PMRCTL) & 1, 1, "PMRCTL.EN set");
    // NRDY that never clears: a typed timeout carrying PMRSTS, after the (here zero) PMRTO.
    regs.write32(reg::PMRSTS, 1 << 8);
    match enable("a", &regs, Duration::ZERO) {
        Err(PmrError::Timeout { pmrsts, .. }) => assert_eq!(pmrsts, 1 << 8),
        other => panic!("{other:?}"),
    }
    // Ready but unhealthy: the health status, not a timeout.
    regs.write32(reg::PMRSTS, 3 << 9);
    assert!(matches!(
        enable("a", &regs, Duration::ZERO),
        Err(PmrError::Health {
            hsts: PmrHealth::Unreliable,
            ..
        })
    ));
    regs.write32(reg::PMRSTS, u32::MAX);
    assert!(matches!(
        enable("a", &regs, Duration::ZERO),
        Err(PmrError::Gone { .. })
    ));
}

#[test]
fn split_hands_out_disjoint_slices_from_offset_zero() {
    let (mut pmr, _regs) = fake(4096, QEMU_PMRCAP);
    let mut s = pmr.split(3, 0).expect("split");
    // 4096 / 3 = 1365, rounded down to 64 bytes.
    assert_eq!(s.iter().map(PmrSlice::len).collect::<Vec<_>>(), [1344; 3]);
    assert_eq!(
        s.iter().map(PmrSlice::offset_in_pmr).collect::<Vec<_>>(),
        [0, 1344, 2688]
    );
    for (i, sl) in s.iter_mut().enumerate() {
        let len = sl.len();
        sl.write(0, &vec![i as u8 + 1; len]);
    }
    for (i, sl) in s.iter().enumerate() {
        let mut back = vec![0; sl.len()];
        sl.read(0, &mut back);
        assert!(back.iter().all(|&b| b == i as u8 + 1), "slice {i}");
        sl.barrier().expect("barrier");
    }
    assert!(matches!(
        pmr.split(1, 64),
        Err(PmrError::AlreadySplit { .. })
    ));
}

#[test]
fn split_refuses_what_does_not_fit() {
    for (count, each) in [(0, 0), (0, 64), (2, 4096), (65, 0), (usize::MAX, 2)] {
        let (mut pmr, _regs) = fake(4096, QEMU_PMRCAP);
        assert!(
            matches!(pmr.split(count, each), Err(PmrError::BadSplit { .. })),
            "{count} x {each}"
        );
    }
    let (mut pmr, _regs) = fake(4096, QEMU_PMRCAP);
    assert_eq!(pmr.split(2, 2048).expect("exact fit").len(), 2);
}

#[test]
fn slices_keep_the_mapping_alive() {
    let (mut pmr, _regs) = fake(4096, QEMU_PMRCAP);
    let weak = pmr.mapping();
    let mut s = pmr.split(1, 0).expect("split").remove(0);
    drop(pmr);
    assert!(weak.upgrade().is_some());
    s.write(4000, b"still here");
    let mut b = [0; 10];
    s.read(4000, &mut b);
    assert_eq!(&b, b"still here");
    drop(s);
    assert!(weak.upgrade().is_none(), "the last slice unmaps");
}

#[test]
#[should_panic(expected = "outside the 2048-byte slice")]
fn a_write_past_the_slice_panics_even_inside_the_pmr() {
    let (mut pmr, _regs) = fake(4096, QEMU_PMRCAP);
    let mut s = pmr.split(2, 0).expect("split");
    s[0].write(2040, &[0; 9]);
}

#[test]
fn the_pmrsts_barrier_reports_errors_and_a_vanished_device() {
    let (mut pmr, regs) = fake(4096, QEMU_PMRCAP);
    let s = pmr.split(1, 0).expect("split").remove(0);
    s.barrier().expect("healthy");
    type Want = fn(&PmrError) -> bool;
    let cases: [(u32, Want); 5] = [
        (u32::MAX, |e| {
            matches!(e, PmrError::Gone { .. }) && e.is_gone()
        }),
        (2 << 9, |e| {
            matches!(
                e,
                PmrError::Health {
                    hsts: PmrHealth::ReadOnly,
                    ..
                }
            )
        }),
        (1 << 12, |e| {
            matches!(e, PmrError::ControllerBaseAddressInvalid { .. })
        }),
        (0x17, |e| matches!(e, PmrError::Error { err: 0x17, .. })),
        (1 << 8, |e| matches!(e, PmrError::NotReady { .. })),
    ];
    for (pmrsts, want) in cases {
        regs.write32(reg::PMRSTS, pmrsts);
        let e = s.barrier().expect_err("PMRSTS error");
        assert!(want(&e), "PMRSTS {pmrsts:#x}: {e:?}");
        assert!(e.to_string().contains("test"), "names the controller: {e}");
    }
    regs.write32(reg::PMRSTS, 0);
    s.barrier().expect("healthy again");
}

#[test]
fn the_memory_read_barrier_reads_the_pmr_not_pmrsts() {
    let (mut pmr, regs) = fake(4096, QEMU_PMRCAP & !(0xf << 10) | 1 << 10);
    assert_eq!(pmr.write_barrier(), PmrWriteBarrier::MemoryRead);
    let s = pmr.split(4, 0).expect("split");
    // PMRSTS is not consulted by this barrier.
    regs.write32(reg::PMRSTS, 1 << 8);
    for sl in &s {
        sl.barrier().expect("memory read barrier");
    }
}

#[test]
fn a_slice_is_send() {
    fn send<T: Send>() {}
    send::<PmrSlice>();
    send::<Pmr>();
}
