//! The checkpoint decoder on arbitrary bytes: never a panic, nothing out of the slice accepted.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nvkv::format;

fuzz_target!(|data: &[u8]| {
    let slice_blocks = 1 << 14;
    if let Ok((_, extents, segs, entries)) = format::decode_ckpt(data, slice_blocks, 512) {
        for (l, n) in extents {
            assert!(l + n <= slice_blocks);
        }
        for s in segs {
            assert!(s.blocks > 0);
        }
        for e in entries {
            assert!(e.loc < slice_blocks * 512);
        }
    }
    let _ = format::decode_ckpt_header(data, slice_blocks);
});
