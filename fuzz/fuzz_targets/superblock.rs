//! The superblock decoder on arbitrary bytes: never a panic; what decodes re-encodes to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nvkv::format::{Superblock, SB_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(sb) = Superblock::decode(data) {
        let mut out = vec![0u8; SB_LEN];
        sb.encode(&mut out);
        assert_eq!(Superblock::decode(&out).as_ref(), Ok(&sb));
    }
});
