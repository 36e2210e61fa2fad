//! The durable log against the crash model of `MemPmem`.
use super::*;
use crate::pmem::MemPmemImage;

const VOL: VolumeId = [9; 16];

fn attach(img: &MemPmemImage, epoch: u64) -> DurableLog {
    DurableLog::attach(Box::new(img.region(0, img.len())), VOL, 0, epoch).expect("test")
}

fn scan_img(img: &MemPmemImage, epoch: u64) -> Scan {
    scan(&img.region(0, img.len()), &VOL, 0, epoch).expect("test")
}

fn key(i: u64) -> Vec<u8> {
    format!("key{i:06}").into_bytes()
}

#[test]
fn appended_and_barriered_records_scan_back_in_order() {
    let img = MemPmemImage::new(64 << 10);
    let mut log = attach(&img, 3);
    for i in 0..100 {
        let lsn = log
            .append(
                1,
                i % 7 == 0,
                i,
                1000 + i,
                &key(i),
                if i % 7 == 0 { b"" } else { b"value" },
            )
            .expect("test");
        assert_eq!(lsn, i + 1);
    }
    assert!(!log.is_durable(100));
    log.barrier().expect("test");
    assert!(log.is_durable(100));
    img.crash(1);
    let s = scan_img(&img, 3);
    assert_eq!(s.writes.len(), 100, "{}", s.stop);
    for (i, w) in s.writes.iter().enumerate() {
        assert_eq!(
            (w.key.clone(), w.version, w.tombstone),
            (key(i as u64), 1000 + i as u64, i % 7 == 0)
        );
    }
    // Another epoch's scan finds no header.
    assert!(scan(&img.region(0, img.len()), &VOL, 0, 4).is_err());
    assert!(scan(&img.region(0, img.len()), &[1; 16], 0, 3).is_err());
}

#[test]
fn wraps_many_times_and_a_crash_keeps_every_barriered_record() {
    let img = MemPmemImage::new(DLOG_DATA_START + 8192);
    let mut log = attach(&img, 1);
    let mut gen = 1;
    let mut acked: Vec<u64> = Vec::new();
    for i in 0..2000u64 {
        let v = vec![i as u8; (i % 50) as usize];
        match log.append(gen, false, i, i + 1, &key(i), &v) {
            Ok(_) => acked.push(i + 1),
            Err(NotLogged::Full) => {
                // A persistence cycle makes everything so far durable and retires it.
                log.retire(gen);
                gen += 1;
                acked.clear();
                log.append(gen, false, i, i + 1, &key(i), &v)
                    .expect("room after retiring");
                acked.push(i + 1);
            }
            Err(e) => panic!("{e:?}"),
        }
        log.barrier().expect("test");
        if i % 97 == 0 {
            gen += 1;
        }
    }
    assert!(
        log.tail.pos > 10 * log.cap,
        "wrapped {} times",
        log.tail.pos / log.cap
    );
    img.crash(5);
    let s = scan_img(&img, 1);
    let got: Vec<u64> = s.writes.iter().map(|w| w.version).collect();
    // Everything not retired is there, in order (the scan may also return retired records the
    // persisted head still covers: recovery skips those by version).
    assert!(got.ends_with(&acked), "stop: {}", s.stop);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn torn_unbarriered_records_end_the_scan_never_served() {
    for seed in 0..200 {
        let img = MemPmemImage::new(16 << 10);
        let mut log = attach(&img, 2);
        for i in 0..20 {
            log.append(1, false, i, i + 1, &key(i), b"durable")
                .expect("test");
        }
        log.barrier().expect("test");
        for i in 20..40 {
            log.append(1, false, i, i + 1, &key(i), b"not yet")
                .expect("test");
        }
        img.crash(seed);
        let s = scan_img(&img, 2);
        assert!(s.writes.len() >= 20, "seed {seed}: {}", s.stop);
        for (i, w) in s.writes.iter().enumerate() {
            assert_eq!(w.version, i as u64 + 1, "seed {seed}: a prefix, in order");
            assert_eq!(w.key, key(i as u64));
            assert_eq!(
                w.value,
                if i < 20 {
                    &b"durable"[..]
                } else {
                    &b"not yet"[..]
                }
            );
        }
    }
}

#[test]
fn every_bit_flip_in_the_records_ends_the_scan_there() {
    let img = MemPmemImage::new(8 << 10);
    let mut log = attach(&img, 2);
    for i in 0..8 {
        log.append(1, false, i, i + 1, &key(i), b"vv")
            .expect("test");
    }
    log.barrier().expect("test");
    let clean = img.persisted();
    let end = DLOG_DATA_START + log.tail.pos as usize;
    for bit in (0..DLOG_HDR_SLOT + DLOG_HDR_LEN)
        .chain(DLOG_DATA_START..end)
        .flat_map(|b| (0..8).map(move |i| b * 8 + i))
    {
        img.corrupt(0, |b| b.copy_from_slice(&clean));
        img.corrupt(bit / 8, |b| b[0] ^= 1 << (bit % 8));
        match scan(&img.region(0, img.len()), &VOL, 0, 2) {
            // A damaged header copy: the other (older or zeroed) one decides.
            Err(_) => assert!(bit / 8 < DLOG_DATA_START, "bit {bit}"),
            Ok(s) => {
                for (i, w) in s.writes.iter().enumerate() {
                    assert_eq!(
                        (w.version, &w.key[..], &w.value[..]),
                        (i as u64 + 1, &key(i as u64)[..], &b"vv"[..]),
                        "bit {bit}"
                    );
                }
                if bit / 8 >= DLOG_DATA_START {
                    let rec =
                        (bit / 8 - DLOG_DATA_START) / dlog_record_len(format::record_len(9, 2));
                    let within =
                        (bit / 8 - DLOG_DATA_START) % dlog_record_len(format::record_len(9, 2));
                    if within < DLOG_REC_HDR_LEN + format::record_len(9, 2) {
                        assert_eq!(
                            s.writes.len(),
                            rec,
                            "bit {bit}: stops at the damaged record"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn crashes_around_header_writes_keep_every_acknowledged_unretired_record() {
    for seed in 0..8u64 {
        let img = MemPmemImage::new(DLOG_DATA_START + 4096);
        let mut log = attach(&img, 1);
        let (mut gen, mut v) = (1u64, 0u64);
        // (version, generation) of records a barrier covered.
        let mut acked: Vec<(u64, u64)> = Vec::new();
        let mut pending: Vec<(u64, u64)> = Vec::new();
        let mut retired = 0;
        for step in 0..3000u64 {
            v += 1;
            match log.append(gen, false, v, v, &key(v), &[7; 40]) {
                Ok(_) => pending.push((v, gen)),
                Err(NotLogged::Full) => {
                    // The cycle path: everything up to here becomes durable in segments.
                    retired = gen;
                    log.retire(gen);
                    gen += 1;
                    v -= 1;
                    continue;
                }
                Err(e) => panic!("{e:?}"),
            }
            if step % 3 == 0 {
                log.barrier().expect("test");
                acked.append(&mut pending);
            }
            if step % 11 == 0 {
                gen += 1;
            }
            if step % 17 == 0 {
                retired = gen - 1;
                log.retire(retired);
            }
            acked.retain(|&(_, g)| g > retired);
            {
                // A crash after every step.
                let copy = img.fork();
                copy.crash(seed * 1000 + step);
                let s = scan(&copy.region(0, copy.len()), &VOL, 0, 1)
                    .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
                let got: Vec<u64> = s.writes.iter().map(|w| w.version).collect();
                for &(a, _) in &acked {
                    assert!(
                        got.contains(&a),
                        "seed {seed} step {step}: {a} lost ({})",
                        s.stop
                    );
                }
                assert!(
                    got.windows(2).all(|w| w[1] == w[0] + 1),
                    "seed {seed}: in order"
                );
            }
        }
    }
}
