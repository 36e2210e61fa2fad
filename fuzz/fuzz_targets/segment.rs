//! A segment header, its payload and its records on arbitrary bytes: never a panic, and every record
//! that decodes lies inside the payload with lengths within the engine's limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nvkv::format::{self, SegmentHeader};

fuzz_target!(|data: &[u8]| {
    for bs in [512u32, 4096] {
        if let Ok((h, _)) = SegmentHeader::decode(data, bs) {
            if let Ok(p) = h.check_payload(data) {
                for r in format::records(p) {
                    match r {
                        Ok((off, rec)) => {
                            assert!(off < p.len());
                            assert!(!rec.key.is_empty() && rec.key.len() <= nvkv::MAX_KEY_LEN);
                            assert!(rec.value.len() <= nvkv::MAX_VALUE_LEN);
                        }
                        Err(_) => break,
                    }
                }
            }
        }
    }
    // The record decoder alone, from every offset of the input's first bytes.
    for at in 0..data.len().min(64) {
        let _ = format::decode_record(&data[at..]);
    }
});
