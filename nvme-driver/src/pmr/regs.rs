//! The Persistent Memory Region registers of BAR0 (NVMe Base spec 1.4 §3.1.21–3.1.27, 2.0 §3.1.4.18–24),
//! decoded into structures that carry the spec's field names. Each keeps the raw register value too, for
//! reports (`nvkv-identify` prints both, as nvme-cli's `show-regs` does).

use crate::mmio::Bar;
use crate::spec::reg;
use std::time::Duration;

const fn bits(v: u32, lo: u32, width: u32) -> u32 {
    (v >> lo) & ((1 << width) - 1)
}

const fn bit(v: u32, n: u32) -> bool {
    (v >> n) & 1 == 1
}

/// PMRCAP.PMRTU: the unit of PMRCAP.PMRTO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmrTimeUnits {
    /// 00b: 500 milliseconds.
    HalfSeconds,
    /// 01b: minutes.
    Minutes,
    /// 10b, 11b: reserved (the driver waits as if they were minutes: the longest bound it knows).
    Reserved(u8),
}

impl PmrTimeUnits {
    fn decode(v: u32) -> Self {
        match v {
            0 => PmrTimeUnits::HalfSeconds,
            1 => PmrTimeUnits::Minutes,
            r => PmrTimeUnits::Reserved(r as u8),
        }
    }
    /// One unit.
    pub fn unit(self) -> Duration {
        match self {
            PmrTimeUnits::HalfSeconds => Duration::from_millis(500),
            PmrTimeUnits::Minutes | PmrTimeUnits::Reserved(_) => Duration::from_secs(60),
        }
    }
}

/// The write barrier mechanism a driver uses, from PMRCAP.PMRWBM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmrWriteBarrier {
    /// PMRWBM bit 1: the completion of a read of PMRSTS makes earlier PMR writes persistent.
    PmrstsRead,
    /// PMRWBM bit 0: the completion of a memory read from the PMR makes earlier PMR writes persistent.
    MemoryRead,
}

/// Persistent Memory Region Capabilities (PMRCAP, offset E00h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pmrcap {
    pub raw: u32,
    /// Read Data Support (bit 3): the PMR may be read with PCIe memory reads.
    pub rds: bool,
    /// Write Data Support (bit 4): the PMR may be written with PCIe memory writes.
    pub wds: bool,
    /// Base Indicator Register (bits 7:5): the BAR holding the PMR (2h–5h; 0h and 1h are reserved, BAR0/1
    /// holding the controller's registers).
    pub bir: u8,
    /// Persistent Memory Region Time Units (bits 9:8).
    pub pmrtu: PmrTimeUnits,
    /// Persistent Memory Region Write Barrier Mechanisms (bits 13:10): bit 0 = completion of a PMR memory
    /// read, bit 1 = completion of a PMRSTS read; bits 3:2 reserved.
    pub pmrwbm: u8,
    /// Persistent Memory Region Timeout (bits 23:16), in PMRTU units: the longest PMRSTS.NRDY may take to
    /// clear after PMRCTL.EN is set.
    pub pmrto: u8,
    /// Controller Memory Space Supported (bit 24): the controller may address the PMR through PMRMSC.
    pub cmss: bool,
}

impl Pmrcap {
    pub fn decode(raw: u32) -> Self {
        Self {
            raw,
            rds: bit(raw, 3),
            wds: bit(raw, 4),
            bir: bits(raw, 5, 3) as u8,
            pmrtu: PmrTimeUnits::decode(bits(raw, 8, 2)),
            pmrwbm: bits(raw, 10, 4) as u8,
            pmrto: bits(raw, 16, 8) as u8,
            cmss: bit(raw, 24),
        }
    }

    /// The longest PMRSTS.NRDY may take to clear after enabling: PMRTO × PMRTU, at least one unit (a PMRTO
    /// of 0, as QEMU reports, still gets a bounded wait of one unit instead of none).
    pub fn timeout(&self) -> Duration {
        self.pmrtu.unit() * u32::from(self.pmrto.max(1))
    }

    /// The write barrier to use: a PMRSTS read when PMRWBM bit 1 offers it, else a PMR read (bit 0); None when
    /// the controller advertises neither (then no write is ever known to be persistent).
    pub fn write_barrier(&self) -> Option<PmrWriteBarrier> {
        if self.pmrwbm & 0b10 != 0 {
            Some(PmrWriteBarrier::PmrstsRead)
        } else if self.pmrwbm & 0b01 != 0 {
            Some(PmrWriteBarrier::MemoryRead)
        } else {
            None
        }
    }
}

/// Persistent Memory Region Control (PMRCTL, offset E04h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pmrctl {
    pub raw: u32,
    /// Enable (bit 0).
    pub en: bool,
}

impl Pmrctl {
    pub const EN: u32 = 1;

    pub fn decode(raw: u32) -> Self {
        Self {
            raw,
            en: bit(raw, 0),
        }
    }
}

/// PMRSTS.HSTS: the PMR's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmrHealth {
    /// 000b: Normal Operation.
    NormalOperation,
    /// 001b: Restore Error: the contents were not restored after a power cycle or reset.
    RestoreError,
    /// 010b: Read Only: writes are not made persistent.
    ReadOnly,
    /// 011b: Unreliable: reads and writes may fail or return wrong data.
    Unreliable,
    /// 100b–111b: reserved.
    Reserved(u8),
}

impl PmrHealth {
    fn decode(v: u32) -> Self {
        match v {
            0 => PmrHealth::NormalOperation,
            1 => PmrHealth::RestoreError,
            2 => PmrHealth::ReadOnly,
            3 => PmrHealth::Unreliable,
            r => PmrHealth::Reserved(r as u8),
        }
    }
}

impl std::fmt::Display for PmrHealth {
    /// The strings nvme-cli prints for HSTS.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PmrHealth::NormalOperation => "Normal Operation",
            PmrHealth::RestoreError => "Restore Error",
            PmrHealth::ReadOnly => "Read Only",
            PmrHealth::Unreliable => "Unreliable",
            PmrHealth::Reserved(_) => "Reserved",
        })
    }
}

/// Persistent Memory Region Status (PMRSTS, offset E08h). Reading it is the PMRWBM bit 1 write barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pmrsts {
    pub raw: u32,
    /// Error (bits 7:0): implementation specific; non-zero means the PMR is in error.
    pub err: u8,
    /// Not Ready (bit 8): the PMR does not accept memory reads and writes.
    pub nrdy: bool,
    /// Health Status (bits 11:9).
    pub hsts: PmrHealth,
    /// Controller Base Address Invalid (bit 12): PMRMSC.CBA is invalid (with PMRMSC.CMSE set).
    pub cbai: bool,
}

impl Pmrsts {
    pub fn decode(raw: u32) -> Self {
        Self {
            raw,
            err: bits(raw, 0, 8) as u8,
            nrdy: bit(raw, 8),
            hsts: PmrHealth::decode(bits(raw, 9, 3)),
            cbai: bit(raw, 12),
        }
    }
}

/// The size unit of PMREBS.PMRSZU and PMRSWTP.PMRSWTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmrSizeUnit {
    /// 0h: bytes.
    Bytes,
    /// 1h: 1 KiB.
    KiB,
    /// 2h: 1 MiB.
    MiB,
    /// 3h: 1 GiB.
    GiB,
    /// 4h–Fh: reserved.
    Reserved(u8),
}

impl PmrSizeUnit {
    fn decode(v: u32) -> Self {
        match v {
            0 => PmrSizeUnit::Bytes,
            1 => PmrSizeUnit::KiB,
            2 => PmrSizeUnit::MiB,
            3 => PmrSizeUnit::GiB,
            r => PmrSizeUnit::Reserved(r as u8),
        }
    }
    /// Bytes in one unit; None when reserved.
    pub fn bytes(self) -> Option<u64> {
        match self {
            PmrSizeUnit::Bytes => Some(1),
            PmrSizeUnit::KiB => Some(1 << 10),
            PmrSizeUnit::MiB => Some(1 << 20),
            PmrSizeUnit::GiB => Some(1 << 30),
            PmrSizeUnit::Reserved(_) => None,
        }
    }
}

impl std::fmt::Display for PmrSizeUnit {
    /// The strings nvme-cli prints for these units.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PmrSizeUnit::Bytes => "Bytes",
            PmrSizeUnit::KiB => "One KB",
            PmrSizeUnit::MiB => "One MB",
            PmrSizeUnit::GiB => "One GB",
            PmrSizeUnit::Reserved(_) => "Reserved",
        })
    }
}

/// Persistent Memory Region Elasticity Buffer Size (PMREBS, offset E0Ch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pmrebs {
    pub raw: u32,
    /// PMR Elasticity Buffer Size Units (bits 3:0).
    pub pmrszu: PmrSizeUnit,
    /// Read Bypass Behavior (bit 4): reads that do not conflict with buffered writes bypass them.
    pub rbb: bool,
    /// PMR Elasticity Buffer Size Base (bits 31:8), in PMRSZU units.
    pub pmrwbz: u32,
}

impl Pmrebs {
    pub fn decode(raw: u32) -> Self {
        Self {
            raw,
            pmrszu: PmrSizeUnit::decode(bits(raw, 0, 4)),
            rbb: bit(raw, 4),
            pmrwbz: raw >> 8,
        }
    }
    /// The elasticity buffer in bytes (0: not reported); None when the unit is reserved.
    pub fn buffer_bytes(&self) -> Option<u64> {
        self.pmrszu.bytes().map(|u| u * u64::from(self.pmrwbz))
    }
}

/// Persistent Memory Region Sustained Write Throughput (PMRSWTP, offset E10h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pmrswtp {
    pub raw: u32,
    /// PMR Sustained Write Throughput Units (bits 3:0), per second.
    pub pmrswtu: PmrSizeUnit,
    /// PMR Sustained Write Throughput (bits 31:8), in PMRSWTU units per second.
    pub pmrswtv: u32,
}

impl Pmrswtp {
    pub fn decode(raw: u32) -> Self {
        Self {
            raw,
            pmrswtu: PmrSizeUnit::decode(bits(raw, 0, 4)),
            pmrswtv: raw >> 8,
        }
    }
    /// Bytes per second (0: not reported); None when the unit is reserved.
    pub fn bytes_per_second(&self) -> Option<u64> {
        self.pmrswtu.bytes().map(|u| u * u64::from(self.pmrswtv))
    }
}

/// Persistent Memory Region Controller Memory Space Control (PMRMSCL at E14h, PMRMSCU at E18h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pmrmsc {
    /// PMRMSCL.
    pub raw_lower: u32,
    /// PMRMSCU.
    pub raw_upper: u32,
    /// Controller Memory Space Enable (PMRMSCL bit 1).
    pub cmse: bool,
    /// Controller Base Address (PMRMSCL bits 31:12 and PMRMSCU): the address, 4 KiB aligned.
    pub cba: u64,
}

impl Pmrmsc {
    pub fn decode(lower: u32, upper: u32) -> Self {
        Self {
            raw_lower: lower,
            raw_upper: upper,
            cmse: bit(lower, 1),
            cba: u64::from(upper) << 32 | u64::from(lower & 0xffff_f000),
        }
    }
}

/// All PMR registers as read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmrRegisters {
    pub pmrcap: Pmrcap,
    pub pmrctl: Pmrctl,
    pub pmrsts: Pmrsts,
    pub pmrebs: Pmrebs,
    pub pmrswtp: Pmrswtp,
    pub pmrmsc: Pmrmsc,
}

impl PmrRegisters {
    /// Decodes raw values in register order: PMRCAP, PMRCTL, PMRSTS, PMREBS, PMRSWTP, PMRMSCL, PMRMSCU.
    pub fn decode(raw: [u32; 7]) -> Self {
        Self {
            pmrcap: Pmrcap::decode(raw[0]),
            pmrctl: Pmrctl::decode(raw[1]),
            pmrsts: Pmrsts::decode(raw[2]),
            pmrebs: Pmrebs::decode(raw[3]),
            pmrswtp: Pmrswtp::decode(raw[4]),
            pmrmsc: Pmrmsc::decode(raw[5], raw[6]),
        }
    }

    /// Reads them from BAR0. Reading PMRSTS is a write barrier on controllers whose PMRWBM has bit 1 (QEMU
    /// then msyncs the PMR's backing file): harmless, but not free.
    pub(crate) fn read(bar: &Bar) -> Self {
        Self::decode([
            bar.read32(reg::PMRCAP),
            bar.read32(reg::PMRCTL),
            bar.read32(reg::PMRSTS),
            bar.read32(reg::PMREBS),
            bar.read32(reg::PMRSWTP),
            bar.read32(reg::PMRMSCL),
            bar.read32(reg::PMRMSCU),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PMRCAP as QEMU 7.2 builds it (`nvme_init_pmr`): RDS, WDS, BIR 4, PMRWBM 02h, CMSS; PMRTU and PMRTO 0.
    const QEMU_PMRCAP: u32 = 1 << 3 | 1 << 4 | 4 << 5 | 0x2 << 10 | 1 << 24;

    #[test]
    fn pmrcap_of_qemu_decodes_field_by_field() {
        let c = Pmrcap::decode(QEMU_PMRCAP);
        assert_eq!(QEMU_PMRCAP, 0x0100_0898);
        assert!(c.rds && c.wds && c.cmss);
        assert_eq!(c.bir, 4);
        assert_eq!(c.pmrtu, PmrTimeUnits::HalfSeconds);
        assert_eq!(c.pmrwbm, 0x2);
        assert_eq!(c.pmrto, 0);
        assert_eq!(c.write_barrier(), Some(PmrWriteBarrier::PmrstsRead));
        // PMRTO 0 still waits one unit.
        assert_eq!(c.timeout(), Duration::from_millis(500));
    }

    #[test]
    fn pmrcap_fields_at_their_bit_positions() {
        // Every field at its maximum, nothing else: each lands in its own field only.
        let c = Pmrcap::decode(7 << 5);
        assert_eq!(
            (c.bir, c.rds, c.wds, c.pmrwbm, c.pmrto),
            (7, false, false, 0, 0)
        );
        let c = Pmrcap::decode(0xf << 10);
        assert_eq!((c.bir, c.pmrwbm, c.pmrto), (0, 0xf, 0));
        let c = Pmrcap::decode(0xff << 16 | 1 << 8);
        assert_eq!((c.pmrto, c.pmrtu), (0xff, PmrTimeUnits::Minutes));
        assert_eq!(c.timeout(), Duration::from_secs(255 * 60));
        assert_eq!(Pmrcap::decode(3 << 8).pmrtu, PmrTimeUnits::Reserved(3));
        // Reserved bits 2:0, 15:14 and 31:25 decode to nothing.
        let c = Pmrcap::decode(0b111 | 0b11 << 14 | 0x7f << 25);
        assert!(!c.rds && !c.wds && !c.cmss);
        assert_eq!((c.bir, c.pmrwbm, c.pmrto), (0, 0, 0));
    }

    #[test]
    fn write_barrier_prefers_the_pmrsts_read() {
        let wbm = |v: u32| Pmrcap::decode(v << 10).write_barrier();
        assert_eq!(wbm(0b00), None);
        assert_eq!(wbm(0b01), Some(PmrWriteBarrier::MemoryRead));
        assert_eq!(wbm(0b10), Some(PmrWriteBarrier::PmrstsRead));
        assert_eq!(wbm(0b11), Some(PmrWriteBarrier::PmrstsRead));
        // Reserved bits alone are no barrier.
        assert_eq!(wbm(0b1100), None);
    }

    #[test]
    fn pmrctl_and_pmrsts_decode() {
        assert!(Pmrctl::decode(1).en);
        assert!(!Pmrctl::decode(0xffff_fffe).en);
        let s = Pmrsts::decode(0);
        assert_eq!(
            (s.err, s.nrdy, s.hsts, s.cbai),
            (0, false, PmrHealth::NormalOperation, false)
        );
        let s = Pmrsts::decode(0x5a | 1 << 8);
        assert_eq!(
            (s.err, s.nrdy, s.hsts, s.cbai),
            (0x5a, true, PmrHealth::NormalOperation, false)
        );
        assert_eq!(Pmrsts::decode(1 << 9).hsts, PmrHealth::RestoreError);
        assert_eq!(Pmrsts::decode(2 << 9).hsts, PmrHealth::ReadOnly);
        assert_eq!(Pmrsts::decode(3 << 9).hsts, PmrHealth::Unreliable);
        assert_eq!(Pmrsts::decode(7 << 9).hsts, PmrHealth::Reserved(7));
        let s = Pmrsts::decode(1 << 12);
        assert!(s.cbai && !s.nrdy && s.err == 0);
        assert_eq!(PmrHealth::ReadOnly.to_string(), "Read Only");
    }

    #[test]
    fn pmrebs_pmrswtp_pmrmsc_decode() {
        let e = Pmrebs::decode(0x40 << 8 | 1 << 4 | 2);
        assert_eq!((e.pmrszu, e.rbb, e.pmrwbz), (PmrSizeUnit::MiB, true, 0x40));
        assert_eq!(e.buffer_bytes(), Some(64 << 20));
        assert_eq!(Pmrebs::decode(0xff_ffff << 8).pmrwbz, 0xff_ffff);
        assert_eq!(Pmrebs::decode(5).buffer_bytes(), None);
        let w = Pmrswtp::decode(100 << 8 | 1);
        assert_eq!((w.pmrswtu, w.pmrswtv), (PmrSizeUnit::KiB, 100));
        assert_eq!(w.bytes_per_second(), Some(100 << 10));
        assert_eq!(PmrSizeUnit::GiB.to_string(), "One GB");
        let m = Pmrmsc::decode(0xfee0_0000 | 0x2 | 0x1, 0x12);
        assert!(m.cmse);
        assert_eq!(m.cba, 0x12_fee0_0000);
        // Bits 11:2 are reserved: they do not leak into CBA.
        let m = Pmrmsc::decode(0xffd, 0);
        assert!(!m.cmse);
        assert_eq!(m.cba, 0);
    }

    #[test]
    fn registers_decode_in_register_order() {
        let r = PmrRegisters::decode([QEMU_PMRCAP, 1, 0, 0, 0, 0, 0]);
        assert_eq!(r.pmrcap.bir, 4);
        assert!(r.pmrctl.en);
        assert!(!r.pmrsts.nrdy);
        assert_eq!(r.pmrebs.buffer_bytes(), Some(0));
        assert_eq!(r.pmrmsc.cba, 0);
    }
}
