//! The Status Field of a completion (Base spec 4.6.1): Status Code Type, Status Code, and the spec's names.

use core::fmt;

/// A non-success NVMe status, decoded from a completion's Status Field.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NvmeStatus {
    /// Status Code Type (0 generic, 1 command specific, 2 media and data integrity, 3 path related, 7 vendor).
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
    /// Do Not Retry.
    pub dnr: bool,
    /// More: the Error Information log has more.
    pub more: bool,
}

/// Status Code Types.
pub mod sct {
    pub const GENERIC: u8 = 0x0;
    pub const COMMAND_SPECIFIC: u8 = 0x1;
    pub const MEDIA: u8 = 0x2;
    pub const PATH: u8 = 0x3;
}

/// Common status codes, by (SCT, SC).
pub mod sc {
    pub const INVALID_OPCODE: (u8, u8) = (0, 0x01);
    pub const INVALID_FIELD: (u8, u8) = (0, 0x02);
    pub const ABORT_REQUESTED: (u8, u8) = (0, 0x07);
    pub const ABORTED_SQ_DELETION: (u8, u8) = (0, 0x08);
    pub const INVALID_NAMESPACE: (u8, u8) = (0, 0x0B);
    pub const LBA_OUT_OF_RANGE: (u8, u8) = (0, 0x80);
    pub const CAPACITY_EXCEEDED: (u8, u8) = (0, 0x81);
    pub const INVALID_QUEUE_IDENTIFIER: (u8, u8) = (1, 0x01);
    pub const INVALID_QUEUE_SIZE: (u8, u8) = (1, 0x02);
    pub const WRITE_FAULT: (u8, u8) = (2, 0x80);
    pub const UNRECOVERED_READ_ERROR: (u8, u8) = (2, 0x81);
}

impl NvmeStatus {
    /// Decodes the 16-bit status word of a completion entry (bit 0 is the phase tag and is ignored).
    /// Returns None for success.
    #[inline]
    pub fn from_completion(status: u16) -> Option<Self> {
        // Success has SC and SCT (bits 1..=11) zero: one test on the hot path.
        if status & 0x0ffe == 0 {
            return None;
        }
        let field = status >> 1;
        let sc = (field & 0xff) as u8;
        let sct = ((field >> 8) & 0x7) as u8;
        if sc == 0 && sct == 0 {
            return None;
        }
        Some(Self {
            sct,
            sc,
            dnr: field >> 14 & 1 == 1,
            more: field >> 13 & 1 == 1,
        })
    }

    pub fn is(&self, code: (u8, u8)) -> bool {
        (self.sct, self.sc) == code
    }

    /// The spec's name for this status, or a generic description.
    pub fn name(&self) -> &'static str {
        match (self.sct, self.sc) {
            (0, 0x01) => "Invalid Command Opcode",
            (0, 0x02) => "Invalid Field in Command",
            (0, 0x03) => "Command ID Conflict",
            (0, 0x04) => "Data Transfer Error",
            (0, 0x05) => "Commands Aborted due to Power Loss Notification",
            (0, 0x06) => "Internal Error",
            (0, 0x07) => "Command Abort Requested",
            (0, 0x08) => "Command Aborted due to SQ Deletion",
            (0, 0x09) => "Command Aborted due to Failed Fused Command",
            (0, 0x0A) => "Command Aborted due to Missing Fused Command",
            (0, 0x0B) => "Invalid Namespace or Format",
            (0, 0x0C) => "Command Sequence Error",
            (0, 0x0D) => "Invalid SGL Segment Descriptor",
            (0, 0x0F) => "Invalid Number of SGL Descriptors",
            (0, 0x13) => "PRP Offset Invalid",
            (0, 0x15) => "Operation Denied",
            (0, 0x1D) => "Namespace is Write Protected",
            (0, 0x1E) => "Command Interrupted",
            (0, 0x80) => "LBA Out of Range",
            (0, 0x81) => "Capacity Exceeded",
            (0, 0x82) => "Namespace Not Ready",
            (0, 0x83) => "Reservation Conflict",
            (0, 0x84) => "Format In Progress",
            (1, 0x00) => "Completion Queue Invalid",
            (1, 0x01) => "Invalid Queue Identifier",
            (1, 0x02) => "Invalid Queue Size",
            (1, 0x03) => "Abort Command Limit Exceeded",
            (1, 0x05) => "Asynchronous Event Request Limit Exceeded",
            (1, 0x08) => "Invalid Interrupt Vector",
            (1, 0x09) => "Invalid Log Page",
            (1, 0x0A) => "Invalid Format",
            (1, 0x0C) => "Invalid Queue Deletion",
            (1, 0x0D) => "Feature Identifier Not Saveable",
            (1, 0x0E) => "Feature Not Changeable",
            (1, 0x0F) => "Feature Not Namespace Specific",
            (1, 0x80) => "Conflicting Attributes",
            (1, 0x81) => "Invalid Protection Information",
            (1, 0x82) => "Attempted Write to Read Only Range",
            (2, 0x80) => "Write Fault",
            (2, 0x81) => "Unrecovered Read Error",
            (2, 0x82) => "End-to-end Guard Check Error",
            (2, 0x83) => "End-to-end Application Tag Check Error",
            (2, 0x84) => "End-to-end Reference Tag Check Error",
            (2, 0x85) => "Compare Failure",
            (2, 0x86) => "Access Denied",
            (2, 0x87) => "Deallocated or Unwritten Logical Block",
            (3, 0x00) => "Internal Path Error",
            (3, _) => "Path Related Status",
            (7, _) => "Vendor Specific",
            (0, _) => "Generic Command Status (unnamed)",
            (1, _) => "Command Specific Status (unnamed)",
            (2, _) => "Media and Data Integrity Error (unnamed)",
            _ => "Reserved Status Code Type",
        }
    }
}

impl fmt::Display for NvmeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (SCT {:#x}, SC {:#04x}{})",
            self.name(),
            self.sct,
            self.sc,
            if self.dnr { ", DNR" } else { "" }
        )
    }
}

impl fmt::Debug for NvmeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for NvmeStatus {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_lba_out_of_range_and_media_error() {
        // SC 0x80, SCT 0, DNR set, phase bit set.
        let w: u16 = (0x80 << 1) | (1 << 15) | 1;
        let s = NvmeStatus::from_completion(w).expect("error status");
        assert!(s.is(sc::LBA_OUT_OF_RANGE));
        assert!(s.dnr);
        assert_eq!(s.to_string(), "LBA Out of Range (SCT 0x0, SC 0x80, DNR)");
        let m = NvmeStatus::from_completion((2 << 9) | (0x81 << 1)).expect("error status");
        assert!(m.is(sc::UNRECOVERED_READ_ERROR));
        assert_eq!(m.name(), "Unrecovered Read Error");
    }

    #[test]
    fn success_is_none_regardless_of_phase() {
        assert_eq!(NvmeStatus::from_completion(0), None);
        assert_eq!(NvmeStatus::from_completion(1), None);
    }
}
