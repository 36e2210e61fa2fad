//! How an I/O's outcome reaches fio: an errno for `io_u->error` and the text `errdetails` hands fio, with the NVMe
//! status spelled out. Also the LBA arithmetic of a request.

use nvme_driver::IoError;

/// The errno fio gets for a failed request.
pub fn errno(e: &IoError) -> i32 {
    match e {
        IoError::Status(_) => libc::EIO,
        IoError::Timeout => libc::ETIMEDOUT,
        IoError::ControllerReset => libc::EIO,
        IoError::ControllerDead => libc::ENODEV,
    }
}

/// What fio prints after its own "io_u error" line.
pub fn detail(op: &str, offset: u64, len: u64, target: &str, e: &IoError) -> String {
    let why = match e {
        IoError::Status(s) => format!("NVMe status {s}"),
        other => other.to_string(),
    };
    format!("nvkv: {op} of {len} bytes at offset {offset} on {target} failed: {why}")
}

/// First LBA and block count of `len` bytes at byte `offset`, for blocks of `1 << lba_shift` bytes.
pub fn lba_range(offset: u64, len: u64, lba_shift: u32) -> Result<(u64, u64), String> {
    let mask = (1u64 << lba_shift) - 1;
    if offset & mask != 0 || len & mask != 0 {
        return Err(format!(
            "offset {offset} and length {len} must be multiples of the namespace's {}-byte logical block \
             (set bs and offset alignment accordingly)",
            1u64 << lba_shift
        ));
    }
    Ok((offset >> lba_shift, len >> lba_shift))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_driver::NvmeStatus;

    #[test]
    fn lba_arithmetic() {
        assert_eq!(lba_range(8192, 4096, 12), Ok((2, 1)));
        assert_eq!(lba_range(512, 1024, 9), Ok((1, 2)));
        assert!(matches!(lba_range(512, 4096, 12), Err(e) if e.contains("4096-byte")));
        assert!(lba_range(4096, 512, 12).is_err());
    }

    #[test]
    fn status_is_in_the_message() {
        let s = NvmeStatus::from_completion((0x2 << 9) | (0x81 << 1)).expect("an error status");
        let e = IoError::Status(s);
        assert_eq!(errno(&e), libc::EIO);
        let d = detail("read", 1 << 20, 4096, "0000:00:12.0 namespace 1", &e);
        assert!(d.contains("SCT 0x2, SC 0x81"), "{d}");
        assert!(d.contains("offset 1048576"), "{d}");
        assert_eq!(errno(&IoError::Timeout), libc::ETIMEDOUT);
        assert!(detail("write", 0, 4096, "x", &IoError::Timeout).contains("timed out"));
    }
}
