//! `api::Client`: its point calls and batches against a model of what was written, and what it answers
//! once the database is closed (an error, never a hang).

use nvkv::api::{Answer, Wait};
use nvkv::bdev::MemDisk;
use nvkv::{Db, Error, Options, WriteOpts};

#[test]
fn point_calls_and_batches_then_closed() {
    let mut o = Options::memory(MemDisk::new(4096, 1 << 14));
    o.shards = 2;
    let db = Db::open(o).expect("open");
    let mut c = db.handle().client();
    let durable = WriteOpts {
        durable: true,
        ..WriteOpts::default()
    };
    for how in [Wait::Spin, Wait::Park, Wait::default()] {
        c.set_wait(how);
        c.put(b"a", b"1", durable).expect("put");
        let mut out = vec![9; 50];
        assert!(c.get_into(b"a", &mut out).expect("get").is_some());
        assert_eq!(out, b"1");
        assert_eq!(c.incr(b"n", 2, WriteOpts::default()).expect("incr") % 2, 0);
        c.delete(b"a", WriteOpts::default()).expect("delete");
        assert!(c.get_into(b"a", &mut out).expect("get").is_none());
    }
    for round in 0..3u32 {
        for i in 0..64u32 {
            c.batch_put(
                format!("k{i}").as_bytes(),
                &(i + round).to_le_bytes(),
                durable,
            );
        }
        for i in 0..64u32 {
            c.batch_get(format!("k{i}").as_bytes());
        }
        c.batch_wait();
        assert_eq!(c.batch_len(), 128);
        for i in 0..64usize {
            assert!(matches!(c.batch_answer(i), Some(Ok(Answer::Write(_)))));
            let want = (i as u32 + round).to_le_bytes();
            match c.batch_answer(64 + i) {
                Some(Ok(Answer::Value(Some((v, _))))) => assert_eq!(v, &want[..]),
                other => panic!("get {i}: {other:?}"),
            }
        }
        c.batch_clear();
    }
    db.close().expect("close");
    assert!(matches!(c.put(b"a", b"2", durable), Err(Error::Closed)));
    let mut out = Vec::new();
    assert!(matches!(c.get_into(b"a", &mut out), Err(Error::Closed)));
    c.batch_get(b"k1");
    c.batch_wait();
    assert!(matches!(c.batch_answer(0), Some(Err(Error::Closed))));
}

/// A slot holds small keys and values in itself and longer ones on the heap; a slot reused across
/// both sizes, in either order, must send exactly the bytes of this call (never a longer earlier
/// one's tail). Lengths step across both limits (64 B keys, 256 B values) and back, each checked
/// against a model and through a reopen.
#[test]
fn keys_and_values_on_both_sides_of_the_slots_inline_room() {
    let disk = MemDisk::new(4096, 1 << 14);
    let mut o = Options::memory(disk.clone());
    o.shards = 2;
    let db = Db::open(o).expect("open");
    let mut c = db.handle().client();
    let mut model = std::collections::BTreeMap::new();
    let key_lens = [1usize, 63, 64, 65, 200, 64, 3, 1022, 2];
    let value_lens = [0usize, 255, 256, 257, 4000, 10, 256, 300, 1];
    for (round, (&kl, &vl)) in key_lens.iter().zip(&value_lens).enumerate() {
        let key: Vec<u8> = (0..kl).map(|i| b'a' + ((i + round) % 26) as u8).collect();
        let value: Vec<u8> = (0..vl).map(|i| (i * 7 + round) as u8).collect();
        c.put(&key, &value, WriteOpts::default()).expect("put");
        model.insert(key.clone(), value.clone());
        // Batched, the same lengths through the batch's slots.
        let bkey = [&key[..], b"/b"].concat();
        c.batch_put(&bkey, &value, WriteOpts::default());
        c.batch_get(&key);
        c.batch_wait();
        assert!(
            matches!(c.batch_answer(0), Some(Ok(Answer::Write(_)))),
            "round {round}"
        );
        match c.batch_answer(1) {
            Some(Ok(Answer::Value(Some((v, _))))) => assert_eq!(v, &value[..], "round {round}"),
            other => panic!("round {round}: {other:?}"),
        }
        c.batch_clear();
        model.insert(bkey, value);
    }
    // A cas with a long new value after short ones, and a delete of a long key.
    let long_key = vec![b'z'; 300];
    let v1 = c
        .put(&long_key, b"short", WriteOpts::default())
        .expect("put");
    c.cas(
        &long_key,
        Some(v1.version),
        Some(&[5u8; 700]),
        WriteOpts::default(),
    )
    .expect("cas");
    model.insert(long_key.clone(), vec![5u8; 700]);
    c.delete(&key_lens.map(|_| b'q')[..], WriteOpts::default())
        .expect("delete of an absent key");
    // Too long: a typed error, and the slot serves the next call as before.
    assert!(matches!(
        c.put(&[b'x'; 1025], b"v", WriteOpts::default()),
        Err(Error::KeyTooLarge { len: 1025, .. })
    ));
    let mut out = Vec::new();
    for (k, v) in &model {
        assert!(c.get_into(k, &mut out).expect("get").is_some(), "{k:?}");
        assert_eq!(&out, v, "{k:?}");
    }
    drop(c);
    db.close().expect("close");
    let mut o = Options::memory(disk);
    o.shards = 2;
    let db = Db::open(o).expect("reopen");
    let h = db.handle();
    for (k, v) in &model {
        assert_eq!(
            h.get(k).expect("get").as_ref(),
            Some(v),
            "{k:?} after reopen"
        );
    }
    db.close().expect("close");
}
