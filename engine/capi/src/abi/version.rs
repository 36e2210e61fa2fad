//! Version and error texts.

use super::*;

/// The library's version ("0.1.0"), a static string.
#[no_mangle]
pub extern "C" fn nvkv_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The library's ABI version; compare with `NVKV_ABI_VERSION` from the header you compiled against.
#[no_mangle]
pub extern "C" fn nvkv_abi_version() -> u32 {
    NVKV_ABI_VERSION
}

/// A static description of a result code (any int; unknown ones get "unknown result code").
#[no_mangle]
pub extern "C" fn nvkv_strerror(code: c_int) -> *const c_char {
    crate::error::strerror(code).as_ptr().cast()
}

/// Details of the calling thread's last failure ("" if none), e.g. which pointer was NULL or the device's
/// error. Valid until the thread's next failing call.
#[no_mangle]
pub extern "C" fn nvkv_last_error() -> *const c_char {
    crate::error::last()
}
