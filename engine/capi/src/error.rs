//! Result codes of the C ABI and the typed errors behind them.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

/// What every `nvkv_` function returns. `NVKV_OK` is 0; `NVKV_NOT_FOUND` and `NVKV_END` are outcomes,
/// not failures; everything else is an error whose text `nvkv_strerror` gives (and `nvkv_last_error` the
/// details of the last one on the calling thread).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum nvkv_result {
    /// Success.
    NVKV_OK = 0,
    /// The key is absent.
    NVKV_NOT_FOUND = 1,
    /// The iterator has no more pairs.
    NVKV_END = 2,
    /// A pointer argument that must not be NULL was NULL (also a NULL handle).
    NVKV_NULL_POINTER = 3,
    /// An argument is out of range: unknown flag bits or backend, a misaligned output pointer, ...
    NVKV_INVALID_ARGUMENT = 4,
    /// The handle is not one this library handed out (or is a handle of another kind).
    NVKV_BAD_HANDLE = 5,
    /// The handle was valid once but has been closed or freed.
    NVKV_CLOSED = 6,
    /// The caller's buffer is too small; the needed size was stored.
    NVKV_BUFFER_TOO_SMALL = 7,
    /// Keys must be at least one byte.
    NVKV_EMPTY_KEY = 8,
    /// The key is longer than `NVKV_MAX_KEY_LEN`.
    NVKV_KEY_TOO_LONG = 9,
    /// The value is longer than `NVKV_MAX_VALUE_LEN` or than one write buffer of the database holds.
    NVKV_VALUE_TOO_LONG = 10,
    /// Compare-and-swap found another version.
    NVKV_VERSION_MISMATCH = 11,
    /// Increment on a value that is not an 8-byte little-endian integer.
    NVKV_NOT_AN_INTEGER = 12,
    /// Increment overflowed.
    NVKV_OVERFLOW = 13,
    /// The shard's part of the device is full.
    NVKV_NO_SPACE = 14,
    /// A device request failed, or the device could not be opened.
    NVKV_IO = 15,
    /// Data read back does not check out (never served as a value).
    NVKV_CORRUPT = 16,
    /// The device or its format does not fit the options.
    NVKV_CONFIG = 17,
    /// An nvkv database that cannot be recovered from what is valid on it; nothing was written.
    NVKV_UNRECOVERABLE = 18,
    /// The library could not allocate memory.
    NVKV_NO_MEMORY = 19,
    /// A bug: the library panicked; the panic was caught at the ABI boundary.
    NVKV_PANIC = 20,
    /// The device holds something that is not an nvkv database of this format (or is blank and
    /// `create` is off); nothing was written.
    NVKV_NOT_A_DATABASE = 21,
    /// The device is opened by another handle or process.
    NVKV_LOCKED = 22,
    /// The durable log (persistent memory) the database needs is missing, belongs to something
    /// else, or cannot be attached; nothing was written when an open fails with it.
    NVKV_DURABLE_LOG = 23,
}

use nvkv_result::*;

/// Everything an entry point can fail with (or end with, for the two non-error outcomes).
#[derive(Debug, thiserror::Error)]
pub enum CapiError {
    /// The key is absent.
    #[error("key not found")]
    NotFound,
    /// The iterator is exhausted.
    #[error("end of iteration")]
    End,
    /// A NULL pointer where one is required.
    #[error("NULL pointer: {0}")]
    Null(&'static str),
    /// An argument out of range.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Not a handle of this library, or of another kind.
    #[error("not a valid {0} handle")]
    BadHandle(&'static str),
    /// A handle that has been closed or freed.
    #[error("the {0} handle was closed or freed")]
    Closed(&'static str),
    /// The caller's buffer is too small.
    #[error("buffer of {cap} bytes is too small: {need} needed")]
    TooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes offered.
        cap: usize,
    },
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// The NVMe controller could not be opened.
    #[error("cannot open the NVMe controller {addr}: {why}")]
    Device {
        /// PCI address.
        addr: String,
        /// The driver's message.
        why: String,
    },
    /// An allocation failed.
    #[error("out of memory ({0} bytes)")]
    NoMemory(usize),
    /// A caught panic.
    #[error("panic in libnvkv: {0}")]
    Panic(String),
}

impl CapiError {
    /// The code the C caller sees.
    pub fn code(&self) -> nvkv_result {
        use engine::Error as E;
        match self {
            CapiError::NotFound => NVKV_NOT_FOUND,
            CapiError::End => NVKV_END,
            CapiError::Null(_) => NVKV_NULL_POINTER,
            CapiError::Invalid(_) => NVKV_INVALID_ARGUMENT,
            CapiError::BadHandle(_) => NVKV_BAD_HANDLE,
            CapiError::Closed(_) => NVKV_CLOSED,
            CapiError::TooSmall { .. } => NVKV_BUFFER_TOO_SMALL,
            CapiError::Device { .. } => NVKV_IO,
            CapiError::NoMemory(_) => NVKV_NO_MEMORY,
            CapiError::Panic(_) => NVKV_PANIC,
            // Exhaustive on purpose: a new engine error needs a decision here.
            CapiError::Engine(e) => match e {
                E::EmptyKey => NVKV_EMPTY_KEY,
                E::KeyTooLarge { .. } => NVKV_KEY_TOO_LONG,
                E::ValueTooLarge { .. } => NVKV_VALUE_TOO_LONG,
                E::VersionMismatch { .. } => NVKV_VERSION_MISMATCH,
                E::NotAnInteger => NVKV_NOT_AN_INTEGER,
                E::Overflow => NVKV_OVERFLOW,
                E::NoSpace => NVKV_NO_SPACE,
                E::Io(_) => NVKV_IO,
                E::Corrupt(_) => NVKV_CORRUPT,
                E::Config(_) => NVKV_CONFIG,
                E::Unrecoverable(_) => NVKV_UNRECOVERABLE,
                E::NotADatabase(_) => NVKV_NOT_A_DATABASE,
                E::Locked(_) => NVKV_LOCKED,
                E::DurableLog(_) => NVKV_DURABLE_LOG,
                E::Closed => NVKV_CLOSED,
            },
        }
    }
}

/// Static text of a code, NUL-terminated.
pub fn strerror(code: i32) -> &'static [u8] {
    const TEXTS: [&[u8]; 24] = [
        b"success\0",
        b"key not found\0",
        b"end of iteration\0",
        b"NULL pointer argument\0",
        b"invalid argument\0",
        b"not a valid handle\0",
        b"handle closed or freed\0",
        b"buffer too small\0",
        b"empty key\0",
        b"key too long\0",
        b"value too long\0",
        b"version mismatch\0",
        b"value is not an integer\0",
        b"integer overflow\0",
        b"no space left\0",
        b"I/O error\0",
        b"corrupt data\0",
        b"invalid configuration\0",
        b"unrecoverable database\0",
        b"out of memory\0",
        b"panic in libnvkv (a bug)\0",
        b"not an nvkv database\0",
        b"database in use by another handle or process\0",
        b"durable log missing, foreign or failed\0",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| TEXTS.get(i).copied())
        .unwrap_or(b"unknown result code\0")
}

thread_local! {
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

/// Remembers the message of the calling thread's last failure.
pub fn set_last(e: &CapiError) {
    // Interior NULs (from an engine message) would cut the text; replace them.
    let text = e.to_string().replace('\0', " ");
    let c = CString::new(text).unwrap_or_default();
    LAST.with(|l| *l.borrow_mut() = c);
}

/// The calling thread's last failure message; valid until its next failing call.
pub fn last() -> *const c_char {
    LAST.with(|l| l.borrow().as_ptr())
}

/// Runs an entry point's body: errors become codes (with their message kept), panics become
/// `NVKV_PANIC`, so nothing unwinds into C.
pub fn guard(f: impl FnOnce() -> Result<(), CapiError>) -> nvkv_result {
    let r = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(CapiError::Panic(msg))
        }
    };
    match r {
        Ok(()) => NVKV_OK,
        Err(e) => {
            set_last(&e);
            e.code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_text() {
        for c in 0..=NVKV_DURABLE_LOG as i32 {
            assert_ne!(strerror(c), b"unknown result code\0", "code {c}");
        }
        assert_eq!(strerror(-1), b"unknown result code\0");
        assert_eq!(
            strerror(NVKV_DURABLE_LOG as i32 + 1),
            b"unknown result code\0"
        );
    }

    #[test]
    fn guard_turns_panics_and_errors_into_codes() {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = guard(|| panic!("boom"));
        std::panic::set_hook(prev);
        assert_eq!(r, NVKV_PANIC);
        let msg = LAST.with(|l| l.borrow().to_string_lossy().into_owned());
        assert!(msg.contains("boom"), "{msg}");
        assert_eq!(guard(|| Err(CapiError::Null("key"))), NVKV_NULL_POINTER);
        assert_eq!(guard(|| Ok(())), NVKV_OK);
    }
}
