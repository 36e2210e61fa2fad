//! The driver's VM suite (`vm.rs`), part two: queue depth, ring wrap-around, doorbells and shadow doorbells,
//! resets and stalls.

use super::*;

/// Random 4 KiB reads at queue depth `qd`. With `ring_each`, the SQ doorbell is rung after every submission
/// (an application that does not batch), which is where shadow doorbells save MMIO writes.
fn run_reads(
    c: &Controller,
    qp: &mut QueuePair,
    ns: &Namespace,
    total: u64,
    qd: usize,
    ring_each: bool,
) -> R {
    let mut free: Vec<DmaBuf> = Vec::new();
    for _ in 0..qd {
        free.push(c.alloc(4096)?);
    }
    let mut rng = Rng(42);
    let (mut submitted, mut done) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(120);
    while done < total {
        while submitted < total {
            let Some(b) = free.pop() else { break };
            let lba = rng.below(ns.blocks);
            match qp.read(ns, lba, b, 0..4096, lba) {
                Ok(()) => {
                    submitted += 1;
                    if ring_each {
                        qp.ring();
                    }
                }
                Err(e) => {
                    free.push(e.buf.ok_or("buffer lost")?);
                    break;
                }
            }
        }
        let mut err = None;
        qp.poll(usize::MAX, |comp| {
            if let Err(e) = comp.result {
                err = Some(e);
            }
            if let Some(b) = comp.buf {
                free.push(b);
            }
            done += 1;
        });
        if let Some(e) = err {
            return Err(format!(
                "read failed: {e} after {done} of {total}; {:?} outstanding {}",
                qp.stats(),
                qp.outstanding()
            )
            .into());
        }
        check!(Instant::now() < deadline, "reads stalled: {done}/{total}");
    }
    Ok(())
}

pub(crate) fn shadow_doorbells_on_and_off() -> R {
    let ns;
    let n = 3000;
    let s_on = {
        let opts = nvme_driver::ControllerOptions {
            shadow_doorbells: true,
            ..Default::default()
        };
        let c = Controller::open_with(C_512, opts)?;
        check!(
            c.info().oacs & nvme_driver::spec::OACS_DBBUF != 0,
            "QEMU 7.2 should advertise Doorbell Buffer Config"
        );
        check!(c.shadow_doorbells(), "shadow doorbells not configured");
        ns = c.namespace(1)?;
        let mut on = c.queue_pair()?;
        check!(on.shadow_doorbells(), "queue pair without shadow slots");
        run_reads(&c, &mut on, &ns, n, 32, true)?;
        verified_random_io(&c, &mut on, &ns, 0, ns.blocks, 10, 11)?;
        on.stats()
    };
    let s_off = {
        let opts = nvme_driver::ControllerOptions {
            shadow_doorbells: false,
            ..Default::default()
        };
        let c = Controller::open_with(C_512, opts)?;
        check!(
            !c.shadow_doorbells(),
            "shadow doorbells were not switched off"
        );
        let mut off = c.queue_pair()?;
        check!(!off.shadow_doorbells(), "queue pair has shadow slots");
        run_reads(&c, &mut off, &ns, n, 32, true)?;
        verified_random_io(&c, &mut off, &ns, 0, ns.blocks, 10, 12)?;
        off.stats()
    };
    println!("shadow on: {s_on:?}\nshadow off: {s_off:?}");
    check!(
        s_on.sq_shadow_updates > 0,
        "no shadow updates with shadow on: {s_on:?}"
    );
    check!(
        s_off.sq_shadow_updates == 0,
        "shadow updates with shadow off: {s_off:?}"
    );
    check!(
        s_on.mmio_writes() < s_off.mmio_writes(),
        "MMIO writes with shadow {} >= without {}",
        s_on.mmio_writes(),
        s_off.mmio_writes()
    );
    Ok(())
}

/// A controller reset while a thread keeps 16 reads in flight, without and with shadow doorbells (the reset
/// zeroes the Doorbell Buffer pages and configures them again; the queue pair re-creates its queues on them).
pub(crate) fn controller_reset_mid_run() -> R {
    for shadow in [false, true] {
        reset_mid_run(shadow).map_err(|e| format!("shadow doorbells {shadow}: {e}"))?;
    }
    Ok(())
}

fn reset_mid_run(shadow: bool) -> R {
    let c = Controller::open_with(
        C_512,
        nvme_driver::ControllerOptions {
            shadow_doorbells: shadow,
            ..Default::default()
        },
    )?;
    check!(
        c.shadow_doorbells() == shadow,
        "shadow doorbells not as asked"
    );
    let ns = c.namespace(1)?;
    let worker = {
        let c = c.clone();
        let mut qp = c.queue_pair()?;
        std::thread::spawn(move || -> Result<(u64, u64, u64), String> {
            let mut free: Vec<DmaBuf> = (0..16).filter_map(|_| c.alloc(4096).ok()).collect();
            let (mut ok, mut reset_errs, mut other) = (0u64, 0u64, 0u64);
            let start = Instant::now();
            let mut lba = 512u64;
            while start.elapsed() < Duration::from_secs(6) {
                while let Some(b) = free.pop() {
                    lba = 512 + (lba + 1) % 1024;
                    if let Err(e) = qp.read(&ns, lba, b, 0..4096, lba) {
                        free.push(e.buf.ok_or("buffer lost")?);
                        break;
                    }
                }
                qp.poll(usize::MAX, |comp| {
                    match comp.result {
                        Ok(()) => ok += 1,
                        Err(IoError::ControllerReset) => reset_errs += 1,
                        Err(_) => other += 1,
                    }
                    if let Some(b) = comp.buf {
                        free.push(b);
                    }
                });
            }
            qp.drain(|_| {});
            if qp.stats().resets_seen != 1 {
                return Err(format!("queue pair saw {} resets", qp.stats().resets_seen));
            }
            // New I/O works after the reset, verified.
            verified_random_io(&c, &mut qp, &ns, 2048, 4096, 10, 5).map_err(|e| e.to_string())?;
            Ok((ok, reset_errs, other))
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    c.reset()?;
    check!(c.resets() == 1, "reset count {}", c.resets());
    let (ok, reset_errs, other) = worker.join().map_err(|_| "worker panicked")??;
    println!(
        "reset mid-run (shadow doorbells {shadow}): {ok} ok, {reset_errs} failed with ControllerReset, {other} other errors"
    );
    check!(
        other == 0,
        "{other} requests failed with errors other than ControllerReset"
    );
    check!(ok > 0, "no I/O completed");
    Ok(())
}

/// Commands the device sits on (a throttle of 1 I/O per second against a 300 ms timeout): the queue pair
/// aborts them (together), then recovers on its own — Delete and Create I/O SQ/CQ, the controller untouched —
/// or, when the controller does not finish the deletion within a second (QEMU cancels throttled requests only
/// as the throttle lets them through), resets the controller; either way they complete with
/// `IoError::Timeout`, and new I/O works after.
pub(crate) fn stuck_commands_time_out_abort_reset() -> R {
    let c = Controller::open(C_SLOW)?;
    let ns = c.namespace(1)?;
    let mut qp = c.queue_pair_with(QueueConfig {
        io_timeout: Duration::from_millis(300),
        ..QueueConfig::default()
    })?;
    for i in 0..4u64 {
        qp.read(&ns, i, c.alloc(4096)?, 0..4096, i)
            .map_err(|e| e.to_string())?;
    }
    let mut results = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while results.len() < 4 {
        qp.poll(8, |comp| results.push((comp.tag, comp.result)));
        check!(
            Instant::now() < deadline,
            "only {} of 4 completed: {results:?}",
            results.len()
        );
    }
    let timeouts = results
        .iter()
        .filter(|r| r.1 == Err(IoError::Timeout))
        .count();
    let others = results
        .iter()
        .filter(|r| matches!(r.1, Err(e) if e != IoError::Timeout))
        .count();
    let s = qp.stats();
    println!(
        "stuck commands: {results:?}; {s:?}; controller resets {}",
        c.resets()
    );
    check!(timeouts >= 1, "no command timed out: {results:?}");
    check!(others == 0, "unexpected errors: {results:?}");
    check!(s.aborts_sent >= 1, "no Abort was completed: {s:?}");
    check!(
        (s.queue_resets == 1 && s.resets_seen == 0 && c.resets() == 0)
            || (s.resets_seen == 1 && c.resets() == 1),
        "recovery: queue pair reset itself {} times, saw {} controller resets, controller did {}",
        s.queue_resets,
        s.resets_seen,
        c.resets()
    );
    check!(
        c.dead().is_none(),
        "controller declared dead: {:?}",
        c.dead()
    );
    drop(qp);
    // After the recovery: a queue pair with the default timeout reads (slowly, at 1 I/O per second).
    let mut qp = c.queue_pair()?;
    let (r, _) = io(&mut qp, &ns, Op::Read, 7, c.alloc(4096)?, 0..4096)?;
    r.map_err(|e| format!("read after the recovery: {e}"))?;
    Ok(())
}

/// Keeps `qd` requests in flight on `qp` until `target` commands were submitted: slot `i` owns LBA `lba0 + i`
/// and cycles write → read → compare with a new pattern each time, so the rings wrap many times with data
/// checked at depth. A wait of `stall` without any completion is a stall and fails (bounded: never a hang).
/// Returns the reads verified.
#[allow(clippy::too_many_arguments)]
fn slot_cycles(
    c: &Controller,
    qp: &mut QueuePair,
    ns: &Namespace,
    qd: usize,
    lba0: u64,
    target: u64,
    stall: Duration,
    what: &str,
) -> Result<u64, Box<dyn StdError>> {
    // Slot i: tag i << 1 for its write, i << 1 | 1 for its read.
    let mut wbufs: Vec<Option<DmaBuf>> = Vec::new();
    let mut rbufs: Vec<Option<DmaBuf>> = Vec::new();
    for _ in 0..qd {
        wbufs.push(Some(c.alloc(4096)?));
        rbufs.push(Some(c.alloc(4096)?));
    }
    let mut gen = vec![0u32; qd];
    let fill = |b: &mut [u8], slot: usize, g: u32| {
        for (k, w) in b.chunks_mut(4).enumerate() {
            w.copy_from_slice(&((slot as u32) << 20 ^ g << 12 ^ k as u32).to_le_bytes());
        }
    };
    let start_commands = qp.stats().commands;
    let submitted = |qp: &QueuePair| qp.stats().commands - start_commands;
    for (slot, w) in wbufs.iter_mut().enumerate() {
        let mut b = w.take().ok_or("buffer")?;
        fill(&mut b, slot, 0);
        qp.write(ns, lba0 + slot as u64, b, 0..4096, (slot as u64) << 1)
            .map_err(|e| format!("{what}: {e}"))?;
    }
    let mut verified = 0u64;
    let mut last_progress = Instant::now();
    let mut err: Option<String> = None;
    while submitted(qp) < target || qp.outstanding() > 0 {
        let mut done = Vec::new();
        qp.poll(usize::MAX, |comp| done.push(comp));
        if !done.is_empty() {
            last_progress = Instant::now();
        }
        for comp in done {
            let (slot, is_read) = ((comp.tag >> 1) as usize, comp.tag & 1 == 1);
            if let Err(e) = comp.result {
                err.get_or_insert(format!("{what}: slot {slot}: {e}"));
                continue;
            }
            let b = comp.buf.ok_or("buffer lost")?;
            let more = submitted(qp) < target;
            if !is_read {
                wbufs[slot] = Some(b);
                let mut r = rbufs[slot].take().ok_or("read buffer")?;
                r.fill(0xee);
                qp.read(ns, lba0 + slot as u64, r, 0..4096, (slot as u64) << 1 | 1)
                    .map_err(|e| format!("{what}: {e}"))?;
            } else {
                let w = wbufs[slot].as_ref().ok_or("write buffer")?;
                if b[..] != w[..] {
                    err.get_or_insert(format!(
                        "{what}: slot {slot} generation {} read back wrong data",
                        gen[slot]
                    ));
                }
                verified += 1;
                rbufs[slot] = Some(b);
                if more {
                    gen[slot] += 1;
                    let mut w = wbufs[slot].take().ok_or("write buffer")?;
                    fill(&mut w, slot, gen[slot]);
                    qp.write(ns, lba0 + slot as u64, w, 0..4096, (slot as u64) << 1)
                        .map_err(|e| format!("{what}: {e}"))?;
                }
            }
        }
        if let Some(e) = err {
            return Err(e.into());
        }
        check!(
            last_progress.elapsed() < stall,
            "{what}: stalled: no completion for {} s with {} commands outstanding, after {} commands; {:?}",
            stall.as_secs(),
            qp.outstanding(),
            submitted(qp),
            qp.stats()
        );
    }
    Ok(verified)
}

/// Queue depths 1, 32 and 1023, without and with shadow doorbells: see [`slot_cycles`].
pub(crate) fn deep_queues_verified_with_wraparound() -> R {
    for (qd, shadow) in [
        (1usize, false),
        (32, false),
        (1023, false),
        (1, true),
        (32, true),
        (1023, true),
    ] {
        let opts = nvme_driver::ControllerOptions {
            shadow_doorbells: shadow,
            ..Default::default()
        };
        let c = Controller::open_with(C_4K, opts)?;
        let ns = c.namespace(1)?;
        let sq = (qd + 1).max(2);
        let mqes = c.cap().mqes() as usize;
        check!(sq <= mqes, "QD {qd} needs {sq} entries, MQES is {mqes}");
        let cq = (4 * sq).max(256).min(mqes);
        let mut qp = c.queue_pair_with(QueueConfig {
            sq_entries: sq as u16,
            cq_entries: cq as u16,
            ..QueueConfig::default()
        })?;
        check!(
            qp.max_outstanding() == qd,
            "max outstanding {} for QD {qd}",
            qp.max_outstanding()
        );
        let target = (10 * sq).max(3000) as u64;
        let what = format!("QD {qd} shadow {shadow}");
        let verified = slot_cycles(
            &c,
            &mut qp,
            &ns,
            qd,
            100,
            target,
            Duration::from_secs(20),
            &what,
        )?;
        let s = qp.stats();
        let wraps = s.commands / sq as u64;
        println!("{what}: {verified} verified reads, {} commands, SQ wrapped {wraps} times, {:.4} MMIO writes per command", s.commands, s.mmio_writes() as f64 / s.commands as f64);
        check!(wraps >= 8, "QD {qd}: the SQ wrapped only {wraps} times");
        check!(
            verified >= s.commands / 2 - 1,
            "QD {qd}: only {verified} reads verified of {} commands",
            s.commands
        );
    }
    Ok(())
}

/// Issue 17: with shadow doorbells on, runs at QD 1, 32 and 128 one after another on one controller, each on a
/// new queue pair (the same queue id again, sized as the benchmark sizes them), every write read back and
/// compared. Before the fix the second run stalled: the Doorbell Buffer slots kept the CQ head of the previous
/// queue with that id, the controller read it as the new queue's head and saw the CQ full after a few entries,
/// while the driver waited for `cq - sq` completions before it would write the head. A run with no completion
/// for 10 s fails the test (the driver's own stall handling starts at 30 s).
pub(crate) fn shadow_doorbells_never_stall() -> R {
    let opts = nvme_driver::ControllerOptions {
        shadow_doorbells: true,
        ..Default::default()
    };
    let c = Controller::open_with(C_4K, opts)?;
    check!(c.shadow_doorbells(), "shadow doorbells not configured");
    let ns = c.namespace(1)?;
    let mqes = c.cap().mqes() as usize;
    let mut runs = 0;
    for round in 0..3u64 {
        for qd in [1usize, 32, 128] {
            let sq = (qd + 1).max(32).min(mqes);
            let cq = (4 * sq).min(mqes);
            let mut qp = c.queue_pair_with(QueueConfig {
                sq_entries: sq as u16,
                cq_entries: cq as u16,
                ..QueueConfig::default()
            })?;
            check!(qp.shadow_doorbells(), "queue pair without shadow slots");
            let what = format!("round {round} QD {qd} (sq {sq} cq {cq}, qid {})", qp.qid());
            let target = 3000 + 1000 * round + 7 * qd as u64;
            let verified = slot_cycles(
                &c,
                &mut qp,
                &ns,
                qd,
                4096,
                target,
                Duration::from_secs(10),
                &what,
            )?;
            let s = qp.stats();
            println!(
                "{what}: {verified} reads verified, {:.4} MMIO writes per command (SQ {}, CQ {}), {} SQ shadow updates",
                s.mmio_writes() as f64 / s.commands as f64,
                s.sq_doorbell_writes,
                s.cq_doorbell_writes,
                s.sq_shadow_updates
            );
            runs += 1;
        }
    }
    println!("{runs} runs with shadow doorbells, none stalled");
    Ok(())
}
