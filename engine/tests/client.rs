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
