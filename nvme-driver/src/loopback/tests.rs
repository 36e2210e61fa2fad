//! Host tests of the queue pair against the loopback controller.

use super::*;
use crate::dma::DmaBuf;
use crate::error::{IoError, SubmitErrorKind};
use crate::health::DeathCause;
use crate::queue::Completion;

fn run_until_done(lb: &mut Loopback, qp: &mut QueuePair, want: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        qp.ring();
        lb.step();
        qp.poll(usize::MAX, |c| out.push(c));
        if out.len() >= want {
            return out;
        }
    }
    panic!("only {} of {want} requests completed", out.len());
}

#[test]
fn prp_lists_and_mdts_splits_move_the_right_bytes() {
    let mut lb = Loopback::new(4096, 512, true, 32 << 10).expect("loopback");
    let ns = lb.namespace();
    let mut qp = lb
        .queue_pair(QueueConfig {
            sq_entries: 64,
            cq_entries: 128,
            ..Default::default()
        })
        .expect("qp");
    let mut seed = 1u32;
    for (i, &len) in [512usize, 4096, 8192, 12288, 32 << 10, 100 << 10, 513 * 512]
        .iter()
        .enumerate()
    {
        for off in [0usize, 4, 512, 4092] {
            let mut w = lb.dma().alloc(len + 8192).expect("alloc");
            for b in w[off..off + len].iter_mut() {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (seed >> 16) as u8;
            }
            let slba = (i as u64 * 300) % (4096 - 300);
            qp.write(&ns, slba, w, off..off + len, 1).expect("write");
            let w = run_until_done(&mut lb, &mut qp, 1)
                .pop()
                .expect("c")
                .buf
                .expect("buf");
            let r = lb.dma().alloc(len + 8192).expect("alloc");
            qp.read(&ns, slba, r, 4..4 + len, 2).expect("read");
            let c = run_until_done(&mut lb, &mut qp, 1).pop().expect("c");
            assert!(c.result.is_ok());
            let r = c.buf.expect("buf");
            assert!(r[4..4 + len] == w[off..off + len], "len {len} offset {off}");
        }
    }
    assert!(
        qp.stats().commands > qp.stats().requests,
        "large requests were split"
    );
}

#[test]
fn rings_wrap_many_times_and_cq_head_is_reported_often_enough() {
    for (sq, cq) in [(2u16, 2u16), (33, 33), (33, 132), (1024, 2048)] {
        let mut lb = Loopback::new(1 << 16, 4096, false, 128 << 10).expect("loopback");
        let ns = lb.namespace();
        let mut qp = lb
            .queue_pair(QueueConfig {
                sq_entries: sq,
                cq_entries: cq,
                ..Default::default()
            })
            .expect("qp");
        let mut free: Vec<DmaBuf> = (0..qp.max_outstanding())
            .map(|_| lb.dma().alloc(4096).expect("alloc"))
            .collect();
        let total = 20 * cq as u64 + 100;
        let (mut submitted, mut completed) = (0u64, 0u64);
        let mut spins = 0;
        while completed < total {
            while submitted < total {
                let Some(b) = free.pop() else { break };
                match qp.read(&ns, submitted % 1000, b, 0..4096, submitted) {
                    Ok(()) => submitted += 1,
                    Err(e) => {
                        assert_eq!(e.kind, SubmitErrorKind::Busy);
                        free.push(e.buf.expect("buffer back"));
                        break;
                    }
                }
            }
            qp.ring();
            lb.step();
            qp.poll(usize::MAX, |c| {
                assert!(c.result.is_ok());
                completed += 1;
                free.push(c.buf.expect("buf"));
            });
            spins += 1;
            assert!(
                spins < 10_000_000,
                "stalled at {completed}/{total} with sq {sq} cq {cq}"
            );
        }
        let s = qp.stats();
        // CQ head writes: about one per (cq - sq) completions (one per completion when cq == sq).
        let expect = total / (cq - sq).max(1) as u64;
        assert!(s.cq_doorbell_writes <= expect + 1, "sq {sq} cq {cq}: {s:?}");
    }
}

#[test]
fn borrowed_buffers_round_trip_and_counters_add_up() {
    let mut lb = Loopback::new(1 << 12, 4096, true, 8 << 10).expect("loopback");
    let ns = lb.namespace();
    let mut qp = lb
        .queue_pair(QueueConfig {
            sq_entries: 9,
            cq_entries: 20,
            ..Default::default()
        })
        .expect("qp");
    let depth = qp.max_outstanding();
    // Each slot writes its pattern (16 KiB: split in two at the 8 KiB transfer limit), then reads it back.
    let mut bufs: Vec<DmaBuf> = (0..depth)
        .map(|_| lb.dma().alloc(16 << 10).expect("alloc"))
        .collect();
    let total = 40 * depth as u64;
    let mut next_lba = 0u64;
    let mut lba_of = vec![0u64; depth];
    let mut free: Vec<usize> = (0..depth).collect();
    let (mut submitted, mut verified) = (0u64, 0u64);
    let mut reading = vec![false; depth];
    let mut spins = 0u32;
    while verified < total {
        while submitted < total {
            let Some(&i) = free.last() else { break };
            bufs[i].fill((submitted % 251) as u8);
            lba_of[i] = next_lba % 4000;
            next_lba += 4;
            // SAFETY: slot i is not touched until its completion (tag i) comes back.
            let r = unsafe { qp.write_borrowed(&ns, lba_of[i], &bufs[i], 0..16 << 10, i as u64) };
            match r {
                Ok(()) => {
                    free.pop();
                    submitted += 1;
                }
                Err(k) => {
                    assert_eq!(k, SubmitErrorKind::Busy);
                    break;
                }
            }
        }
        qp.ring();
        lb.step();
        let mut done = Vec::new();
        qp.poll(usize::MAX, |c| {
            assert!(c.result.is_ok() && c.buf.is_none());
            done.push(c.tag as usize);
        });
        for i in done {
            if reading[i] {
                let want = bufs[i][0];
                let bad: Vec<usize> = (0..bufs[i].len()).filter(|&j| bufs[i][j] != want).collect();
                assert!(
                    bad.is_empty(),
                    "slot {i} lba {} want {want}: {} bad from {:?} to {:?}",
                    lba_of[i],
                    bad.len(),
                    bad.first(),
                    bad.last()
                );
                reading[i] = false;
                verified += 1;
                free.push(i);
            } else {
                let want = bufs[i][0];
                bufs[i].fill(!want);
                bufs[i][0] = want; // the read must restore every other byte
                                   // SAFETY: as above.
                unsafe { qp.read_borrowed(&ns, lba_of[i], &bufs[i], 0..16 << 10, i as u64) }
                    .expect("room: the write's slot is free");
                reading[i] = true;
            }
        }
        spins += 1;
        assert!(spins < 1_000_000, "stalled at {verified}/{total}");
    }
    let s = qp.stats();
    assert_eq!(s.requests, 2 * total);
    assert_eq!(s.commands, 4 * total, "16 KiB requests split in two");
    assert_eq!(s.completions, s.commands);
    // Range checks still apply on the borrowed path.
    // SAFETY: rejected before anything is submitted.
    let e = unsafe { qp.read_borrowed(&ns, 0, &bufs[0], 0..(16 << 10) + 512, 1) };
    assert!(matches!(e, Err(SubmitErrorKind::OutsideBuffer { .. })));
}

#[test]
fn device_errors_come_back_typed() {
    let mut lb = Loopback::new(100, 4096, true, 128 << 10).expect("loopback");
    let ns = lb.namespace();
    let mut qp = lb.queue_pair(QueueConfig::default()).expect("qp");
    let b = lb.dma().alloc(8192).expect("alloc");
    qp.read(&ns, 99, b, 0..8192, 5).expect("submit");
    let c = run_until_done(&mut lb, &mut qp, 1).pop().expect("c");
    let s = c
        .result
        .expect_err("past the end")
        .status()
        .expect("status");
    assert!(s.is(crate::status::sc::LBA_OUT_OF_RANGE), "{s}");
    assert_eq!(c.tag, 5);
    // Write zeroes and deallocate clear data.
    let mut w = lb.dma().alloc(4096).expect("alloc");
    w.fill(7);
    qp.write(&ns, 3, w, 0..4096, 1).expect("write");
    run_until_done(&mut lb, &mut qp, 1);
    qp.deallocate(&ns, 3, 1, 2).expect("dsm");
    assert!(run_until_done(&mut lb, &mut qp, 1)[0].result.is_ok());
    let r = lb.dma().alloc(4096).expect("alloc");
    qp.read(&ns, 3, r, 0..4096, 3).expect("read");
    let r = run_until_done(&mut lb, &mut qp, 1)
        .pop()
        .expect("c")
        .buf
        .expect("buf");
    assert!(r.iter().all(|&x| x == 0));
}

/// Polls (stepping the loopback) until `want` completions came back; bounded by a deadline (a failure,
/// not a timing assertion).
fn poll_until(lb: &mut Loopback, qp: &mut QueuePair, want: usize) -> Vec<Completion> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < want {
        lb.step();
        qp.poll(usize::MAX, |c| out.push(c));
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {want} completions: {qp:?}",
            out.len()
        );
    }
    out
}

fn short_timeout() -> QueueConfig {
    QueueConfig {
        sq_entries: 16,
        cq_entries: 64,
        io_timeout: std::time::Duration::from_millis(50),
    }
}

#[test]
fn a_dead_controller_fails_every_command_typed_and_quarantines_its_buffers() {
    for fault in [
        LoopbackFault::AllOnes,
        LoopbackFault::Fatal,
        LoopbackFault::StopAnswering,
    ] {
        let mut lb = Loopback::new(1 << 12, 4096, true, 128 << 10).expect("loopback");
        let ns = lb.namespace();
        let mut qp = lb.supervised_queue_pair(short_timeout()).expect("qp");
        // Some I/O works first.
        for i in 0..4 {
            qp.read(&ns, i, lb.dma().alloc(4096).expect("alloc"), 0..4096, i)
                .expect("submit");
        }
        assert!(poll_until(&mut lb, &mut qp, 4)
            .iter()
            .all(|c| c.result.is_ok()));
        // Then the controller dies with 10 requests in flight (some split in two).
        lb.fail(fault);
        for i in 0..10u64 {
            let len = if i % 3 == 0 { 256 << 10 } else { 4096 };
            qp.read(
                &ns,
                i * 64,
                lb.dma().alloc(len).expect("alloc"),
                0..len,
                100 + i,
            )
            .expect("accepted: the queue pair has not noticed yet");
        }
        let done = poll_until(&mut lb, &mut qp, 10);
        for c in &done {
            assert_eq!(c.result, Err(IoError::ControllerDead), "{fault:?}: {c:?}");
            assert!(
                c.buf.is_none(),
                "{fault:?}: a dead command's buffer was handed back"
            );
        }
        let cause = lb.owner().dead().expect("declared dead");
        let want = match fault {
            LoopbackFault::AllOnes => DeathCause::AllOnes,
            LoopbackFault::Fatal => DeathCause::Fatal,
            LoopbackFault::StopAnswering => DeathCause::ResetFailed,
        };
        assert_eq!(cause, want);
        assert_eq!(lb.owner().quarantined(), 10, "{fault:?}");
        assert!(qp.is_dead());
        assert_eq!(qp.outstanding(), 0);
        // Never Busy: a dead queue pair says so, on every path.
        let b = lb.dma().alloc(4096).expect("alloc");
        let e = qp.read(&ns, 0, b, 0..4096, 1).expect_err("dead");
        assert_eq!(e.kind, SubmitErrorKind::ControllerDead);
        assert!(e.buf.is_some(), "a refused request's buffer comes back");
        // SAFETY: refused before anything is submitted.
        let e = unsafe { qp.read_borrowed(&ns, 0, &lb.dma().alloc(4096).expect("a"), 0..4096, 1) };
        assert_eq!(e, Err(SubmitErrorKind::ControllerDead));
        assert_eq!(
            qp.flush(&ns, 2).expect_err("dead").kind,
            SubmitErrorKind::ControllerDead
        );
        // Polls and drains return at once.
        assert_eq!(qp.poll(usize::MAX, |_| panic!("nothing is left")), 0);
        qp.drain(|_| panic!("nothing is left"));
        // Dropping it quarantines the rings (the device might still write them).
        drop(qp);
        assert_eq!(lb.owner().quarantined(), 13, "{fault:?}: rings quarantined");
    }
}

#[test]
fn aborts_go_out_together_then_the_queue_pair_recovers_alone() {
    let mut lb = Loopback::new(1 << 12, 4096, true, 128 << 10).expect("loopback");
    let ns = lb.namespace();
    let mut qp = lb.supervised_queue_pair(short_timeout()).expect("qp");
    for i in 0..12u64 {
        qp.read(&ns, i, lb.dma().alloc(4096).expect("alloc"), 0..4096, i)
            .expect("submit");
    }
    // The controller answers admin commands but sits on these 12: no step, so no completion.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut done = Vec::new();
    while done.len() < 12 {
        qp.poll(usize::MAX, |c| done.push(c));
        assert!(std::time::Instant::now() < deadline, "stuck: {qp:?}");
    }
    assert_eq!(
        lb.owner().aborts_asked.load(Ordering::Acquire),
        12,
        "one abort per command, sent together"
    );
    for c in &done {
        assert_eq!(c.result, Err(IoError::Timeout));
        assert!(
            c.buf.is_some(),
            "the queues were deleted: buffers are safe to reuse"
        );
    }
    let s = qp.stats();
    assert_eq!((s.queue_resets, s.resets_seen), (1, 0), "{s:?}");
    assert_eq!(lb.owner().resets(), 0, "no controller reset");
    assert_eq!(lb.owner().quarantined(), 0);
    assert!(!qp.is_dead());
    // New I/O works on the re-created queues, data verified.
    let mut w = lb.dma().alloc(8192).expect("alloc");
    w.fill(0x3c);
    qp.write(&ns, 7, w, 0..8192, 1).expect("write");
    assert!(poll_until(&mut lb, &mut qp, 1)[0].result.is_ok());
    qp.read(&ns, 7, lb.dma().alloc(8192).expect("alloc"), 0..8192, 2)
        .expect("read");
    let c = poll_until(&mut lb, &mut qp, 1).pop().expect("c");
    assert!(c.result.is_ok());
    assert!(c.buf.expect("buf").iter().all(|&b| b == 0x3c));
}

#[test]
fn drain_and_drop_are_bounded_on_a_dead_controller() {
    let mut lb = Loopback::new(1 << 12, 4096, false, 128 << 10).expect("loopback");
    let ns = lb.namespace();
    let mut qp = lb.supervised_queue_pair(short_timeout()).expect("qp");
    for i in 0..15u64 {
        qp.read(&ns, i, lb.dma().alloc(4096).expect("alloc"), 0..4096, i)
            .expect("submit");
    }
    lb.fail(LoopbackFault::StopAnswering);
    let mut results = Vec::new();
    qp.drain(|c| results.push(c.result));
    assert_eq!(results.len(), 15);
    assert!(results.iter().all(|r| *r == Err(IoError::ControllerDead)));
    // A queue pair dropped with commands in flight on a dead controller quarantines them and its rings.
    let mut qp2 = lb.supervised_queue_pair(short_timeout()).expect("qp");
    let before = lb.owner().quarantined();
    for i in 0..3u64 {
        qp2.read(&ns, i, lb.dma().alloc(4096).expect("alloc"), 0..4096, i)
            .expect("submit");
    }
    drop(qp2);
    assert_eq!(lb.owner().quarantined(), before + 3 + 3);
}
