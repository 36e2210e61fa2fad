//! NVMe register and structure layouts, with the names the NVM Express Base Specification 2.0 gives them.
//! Layouts are `#[repr(C)]` and their sizes and key offsets are checked at compile time.

use core::mem::{offset_of, size_of};

/// Controller register offsets in BAR0 (Base spec 3.1.3).
pub mod reg {
    pub const CAP: usize = 0x00;
    pub const VS: usize = 0x08;
    pub const INTMS: usize = 0x0C;
    pub const CC: usize = 0x14;
    pub const CSTS: usize = 0x1C;
    pub const AQA: usize = 0x24;
    pub const ASQ: usize = 0x28;
    pub const ACQ: usize = 0x30;
    pub const PMRCAP: usize = 0xE00;
    pub const PMRCTL: usize = 0xE04;
    pub const PMRSTS: usize = 0xE08;
    pub const PMREBS: usize = 0xE0C;
    pub const PMRSWTP: usize = 0xE10;
    pub const PMRMSCL: usize = 0xE14;
    pub const PMRMSCU: usize = 0xE18;
    /// First doorbell (SQ 0 tail); doorbell `2*qid + is_cq` is at `DOORBELLS + n * (4 << CAP.DSTRD)`.
    pub const DOORBELLS: usize = 0x1000;
}

/// Controller Capabilities (CAP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported, as a count (the register is 0-based).
    pub fn mqes(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }
    /// Contiguous Queues Required.
    pub fn cqr(self) -> bool {
        self.0 >> 16 & 1 == 1
    }
    /// Timeout: worst-case time to wait for CSTS.RDY to change, in milliseconds (register unit: 500 ms).
    pub fn timeout_ms(self) -> u64 {
        ((self.0 >> 24) & 0xff).max(1) * 500
    }
    /// Doorbell Stride in bytes (4 << CAP.DSTRD).
    pub fn doorbell_stride(self) -> usize {
        4 << ((self.0 >> 32) & 0xf)
    }
    /// Command Sets Supported: bit 0 = NVM command set.
    pub fn css(self) -> u8 {
        ((self.0 >> 37) & 0xff) as u8
    }
    /// Memory Page Size Minimum in bytes.
    pub fn mpsmin(self) -> usize {
        4096 << ((self.0 >> 48) & 0xf)
    }
    /// Memory Page Size Maximum in bytes.
    pub fn mpsmax(self) -> usize {
        4096 << ((self.0 >> 52) & 0xf)
    }
    /// Persistent Memory Region Supported.
    pub fn pmrs(self) -> bool {
        self.0 >> 56 & 1 == 1
    }
}

/// Controller Configuration (CC) fields.
pub mod cc {
    pub const EN: u32 = 1;
    pub const CSS_NVM: u32 = 0 << 4;
    pub const MPS_SHIFT: u32 = 7;
    pub const AMS_RR: u32 = 0 << 11;
    pub const SHN_MASK: u32 = 3 << 14;
    pub const SHN_NORMAL: u32 = 1 << 14;
    /// I/O Submission Queue Entry Size: 2^6 = 64 bytes.
    pub const IOSQES_64: u32 = 6 << 16;
    /// I/O Completion Queue Entry Size: 2^4 = 16 bytes.
    pub const IOCQES_16: u32 = 4 << 20;
}

/// Controller Status (CSTS) fields.
pub mod csts {
    pub const RDY: u32 = 1;
    pub const CFS: u32 = 1 << 1;
    pub const SHST_MASK: u32 = 3 << 2;
    pub const SHST_COMPLETE: u32 = 2 << 2;
}

/// Admin command opcodes (Base spec 5).
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
    pub const DOORBELL_BUFFER_CONFIG: u8 = 0x7C;
}

/// NVM command set I/O opcodes (NVM Command Set spec 3).
pub mod nvm {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// Identify CNS values.
pub mod cns {
    pub const NAMESPACE: u32 = 0x00;
    pub const CONTROLLER: u32 = 0x01;
    pub const ACTIVE_NAMESPACES: u32 = 0x02;
}

/// Feature identifiers.
pub mod feature {
    pub const VOLATILE_WRITE_CACHE: u32 = 0x06;
    pub const NUMBER_OF_QUEUES: u32 = 0x07;
}

/// Optional Admin Command Support (OACS) bit: Doorbell Buffer Config.
pub const OACS_DBBUF: u16 = 1 << 8;
/// Optional NVM Command Support (ONCS) bits.
pub const ONCS_DSM: u16 = 1 << 2;
pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;

/// A 64-byte Submission Queue Entry (Base spec 4.2).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubmissionEntry {
    /// CDW0: opcode (7:0), fused (9:8), PSDT (15:14), command identifier (31:16).
    pub cdw0: u32,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    pub prp1: u64,
    pub prp2: u64,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

impl SubmissionEntry {
    pub fn new(opcode: u8, cid: u16, nsid: u32) -> Self {
        Self {
            cdw0: opcode as u32 | (cid as u32) << 16,
            nsid,
            ..Default::default()
        }
    }
    pub fn opcode(&self) -> u8 {
        self.cdw0 as u8
    }
    pub fn cid(&self) -> u16 {
        (self.cdw0 >> 16) as u16
    }
}

/// A 16-byte Completion Queue Entry (Base spec 4.6).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompletionEntry {
    /// DW0: command specific.
    pub dw0: u32,
    pub dw1: u32,
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    /// Phase tag (bit 0) and Status Field (bits 15:1).
    pub status: u16,
}

const _: () = assert!(size_of::<SubmissionEntry>() == 64);
const _: () = assert!(offset_of!(SubmissionEntry, prp1) == 24);
const _: () = assert!(offset_of!(SubmissionEntry, cdw10) == 40);
const _: () = assert!(size_of::<CompletionEntry>() == 16);
const _: () = assert!(offset_of!(CompletionEntry, cid) == 12);

/// A Dataset Management range (NVM Command Set spec 3.2.3, 16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DsmRange {
    pub context_attributes: u32,
    pub nlb: u32,
    pub slba: u64,
}
const _: () = assert!(size_of::<DsmRange>() == 16);

/// Identify Controller data structure (CNS 01h), 4096 bytes. Fields the driver uses are named; the rest are
/// kept as reserved byte ranges so offsets stay those of the spec.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IdentifyController {
    pub vid: u16,
    pub ssvid: u16,
    pub sn: [u8; 20],
    pub mn: [u8; 40],
    pub fr: [u8; 8],
    pub rab: u8,
    pub ieee: [u8; 3],
    pub cmic: u8,
    /// Maximum Data Transfer Size: 2^MDTS units of CAP.MPSMIN; 0 = no limit.
    pub mdts: u8,
    pub cntlid: u16,
    pub ver: u32,
    pub rtd3r: u32,
    pub rtd3e: u32,
    pub oaes: u32,
    pub ctratt: u32,
    _rsvd100: [u8; 156],
    pub oacs: u16,
    /// Abort Command Limit (0-based).
    pub acl: u8,
    pub aerl: u8,
    pub frmw: u8,
    pub lpa: u8,
    pub elpe: u8,
    pub npss: u8,
    _rsvd264: [u8; 16],
    pub tnvmcap: [u8; 16],
    pub unvmcap: [u8; 16],
    _rsvd312: [u8; 200],
    pub sqes: u8,
    pub cqes: u8,
    pub maxcmd: u16,
    /// Number of Namespaces (the largest valid NSID).
    pub nn: u32,
    pub oncs: u16,
    pub fuses: u16,
    pub fna: u8,
    /// Volatile Write Cache: bit 0 = present.
    pub vwc: u8,
    pub awun: u16,
    pub awupf: u16,
    pub icsvscc: u8,
    pub nwpc: u8,
    pub acwu: u16,
    pub ocfs: u16,
    pub sgls: u32,
    _rsvd540: [u8; 228],
    pub subnqn: [u8; 256],
    _rsvd1024: [u8; 1024],
    pub psd: [u8; 1024],
    pub vs: [u8; 1024],
}

const _: () = assert!(size_of::<IdentifyController>() == 4096);
const _: () = assert!(offset_of!(IdentifyController, sn) == 4);
const _: () = assert!(offset_of!(IdentifyController, mn) == 24);
const _: () = assert!(offset_of!(IdentifyController, mdts) == 77);
const _: () = assert!(offset_of!(IdentifyController, ver) == 80);
const _: () = assert!(offset_of!(IdentifyController, oacs) == 256);
const _: () = assert!(offset_of!(IdentifyController, tnvmcap) == 280);
const _: () = assert!(offset_of!(IdentifyController, sqes) == 512);
const _: () = assert!(offset_of!(IdentifyController, nn) == 516);
const _: () = assert!(offset_of!(IdentifyController, oncs) == 520);
const _: () = assert!(offset_of!(IdentifyController, vwc) == 525);
const _: () = assert!(offset_of!(IdentifyController, awupf) == 528);
const _: () = assert!(offset_of!(IdentifyController, sgls) == 536);
const _: () = assert!(offset_of!(IdentifyController, subnqn) == 768);
const _: () = assert!(offset_of!(IdentifyController, psd) == 2048);

/// LBA Format data structure (4 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbaFormat {
    /// Metadata Size (bytes per LBA).
    pub ms: u16,
    /// LBA Data Size as a power of two.
    pub lbads: u8,
    /// Relative Performance (bits 1:0).
    pub rp: u8,
}

/// Identify Namespace data structure for the NVM command set (CNS 00h), 4096 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IdentifyNamespace {
    /// Namespace Size in logical blocks.
    pub nsze: u64,
    /// Namespace Capacity in logical blocks.
    pub ncap: u64,
    /// Namespace Utilization in logical blocks.
    pub nuse: u64,
    pub nsfeat: u8,
    /// Number of LBA Formats (0-based).
    pub nlbaf: u8,
    /// Formatted LBA Size: bits 3:0 index the LBA format (bits 6:5 are its upper bits).
    pub flbas: u8,
    pub mc: u8,
    pub dpc: u8,
    pub dps: u8,
    pub nmic: u8,
    pub rescap: u8,
    pub fpi: u8,
    pub dlfeat: u8,
    pub nawun: u16,
    pub nawupf: u16,
    pub nacwu: u16,
    pub nabsn: u16,
    pub nabo: u16,
    pub nabspf: u16,
    pub noiob: u16,
    pub nvmcap: [u8; 16],
    pub npwg: u16,
    pub npwa: u16,
    pub npdg: u16,
    pub npda: u16,
    pub nows: u16,
    _rsvd74: [u8; 18],
    pub anagrpid: u32,
    _rsvd96: [u8; 3],
    pub nsattr: u8,
    pub nvmsetid: u16,
    pub endgid: u16,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub lbaf: [LbaFormat; 64],
    _rsvd384: [u8; 3712],
}

const _: () = assert!(size_of::<IdentifyNamespace>() == 4096);
const _: () = assert!(offset_of!(IdentifyNamespace, flbas) == 26);
const _: () = assert!(offset_of!(IdentifyNamespace, dlfeat) == 33);
const _: () = assert!(offset_of!(IdentifyNamespace, nawupf) == 36);
const _: () = assert!(offset_of!(IdentifyNamespace, nvmcap) == 48);
const _: () = assert!(offset_of!(IdentifyNamespace, nguid) == 104);
const _: () = assert!(offset_of!(IdentifyNamespace, eui64) == 120);
const _: () = assert!(offset_of!(IdentifyNamespace, lbaf) == 128);

impl IdentifyNamespace {
    /// The LBA format in use.
    pub fn lba_format(&self) -> LbaFormat {
        let idx = (self.flbas & 0xf) as usize | (((self.flbas >> 5) & 0x3) as usize) << 4;
        self.lbaf[idx.min(63)]
    }
}

/// Reads a structure of plain integers out of a byte buffer of at least its size.
pub fn from_bytes<T: Copy + PlainData>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `T: PlainData` promises every bit pattern is a valid T; the length was checked; read_unaligned
    // copes with any alignment of the source.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Structures made only of integers and arrays of integers, for which every bit pattern is valid.
///
/// # Safety
/// Implement only for `#[repr(C)]` types whose fields are all integers or arrays/structs of integers.
pub unsafe trait PlainData {}
// SAFETY: all fields are integers or integer arrays.
unsafe impl PlainData for IdentifyController {}
// SAFETY: all fields are integers, integer arrays or LbaFormat (integers).
unsafe impl PlainData for IdentifyNamespace {}
// SAFETY: all fields are integers.
unsafe impl PlainData for CompletionEntry {}
// SAFETY: all fields are integers.
unsafe impl PlainData for SubmissionEntry {}

impl core::fmt::Debug for IdentifyController {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentifyController")
            .field("vid", &self.vid)
            .field("sn", &String::from_utf8_lossy(&self.sn))
            .field("mn", &String::from_utf8_lossy(&self.mn))
            .field("mdts", &self.mdts)
            .field("nn", &self.nn)
            .finish_non_exhaustive()
    }
}

impl core::fmt::Debug for IdentifyNamespace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentifyNamespace")
            .field("nsze", &self.nsze)
            .field("flbas", &self.flbas)
            .field("lba_format", &self.lba_format())
            .finish_non_exhaustive()
    }
}
