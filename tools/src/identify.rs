//! Identify Controller and Identify Namespace data, with the field names and value encodings of nvme-cli's
//! `nvme id-ctrl -o json` / `nvme id-ns -o json`, so the two outputs can be compared field by field.
//!
//! Encodings that follow nvme-cli: strings (`sn`, `mn`, `fr`, `subnqn`) are the raw bytes up to the first NUL,
//! trailing spaces kept; `ieee` is the 3-byte OUI read little-endian (`ieee[2] << 16 | ieee[1] << 8 | ieee[0]`);
//! `nguid` and `eui64` are lower-case hex of the bytes in order; `subnqn` is left out when empty; `lbafs` holds
//! NLBAF + 1 entries of `ms`, `ds` (LBADS) and `rp`.

use nvme_driver::spec::{IdentifyController, IdentifyNamespace};
use serde::Serialize;
use std::fmt::Write as _;

/// Identify Controller fields, named as nvme-cli names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdCtrl {
    pub vid: u16,
    pub ssvid: u16,
    pub sn: String,
    pub mn: String,
    pub fr: String,
    pub rab: u8,
    pub ieee: u32,
    pub cmic: u8,
    pub mdts: u8,
    pub cntlid: u16,
    pub ver: u32,
    pub oacs: u16,
    pub acl: u8,
    pub aerl: u8,
    pub frmw: u8,
    pub lpa: u8,
    pub elpe: u8,
    pub npss: u8,
    pub sqes: u8,
    pub cqes: u8,
    pub maxcmd: u16,
    pub nn: u32,
    pub oncs: u16,
    pub fuses: u16,
    pub fna: u8,
    pub vwc: u8,
    pub awun: u16,
    pub awupf: u16,
    pub sgls: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnqn: Option<String>,
}

/// One LBA format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lbaf {
    pub ms: u16,
    pub ds: u8,
    pub rp: u8,
}

/// Identify Namespace fields, named as nvme-cli names them, plus the NSID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdNs {
    pub nsid: u32,
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    pub nsfeat: u8,
    pub nlbaf: u8,
    pub flbas: u8,
    pub mc: u8,
    pub dpc: u8,
    pub dps: u8,
    pub nmic: u8,
    pub dlfeat: u8,
    pub nawun: u16,
    pub nawupf: u16,
    pub nguid: String,
    pub eui64: String,
    pub lbafs: Vec<Lbaf>,
}

/// What `nvkv-identify --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub address: String,
    pub controller: IdCtrl,
    pub namespaces: Vec<IdNs>,
    /// The PMR registers (raw, with `nvme show-regs -o json`'s names); null when CAP.PMRS is clear.
    pub pmr: Option<crate::pmr::PmrRegs>,
}

/// Bytes up to the first NUL, as nvme-cli's `"%-.*s"` prints them (trailing spaces kept).
fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

impl IdCtrl {
    pub fn from_raw(c: &IdentifyController) -> Self {
        let subnqn = c_string(&c.subnqn);
        Self {
            vid: c.vid,
            ssvid: c.ssvid,
            sn: c_string(&c.sn),
            mn: c_string(&c.mn),
            fr: c_string(&c.fr),
            rab: c.rab,
            ieee: (c.ieee[2] as u32) << 16 | (c.ieee[1] as u32) << 8 | c.ieee[0] as u32,
            cmic: c.cmic,
            mdts: c.mdts,
            cntlid: c.cntlid,
            ver: c.ver,
            oacs: c.oacs,
            acl: c.acl,
            aerl: c.aerl,
            frmw: c.frmw,
            lpa: c.lpa,
            elpe: c.elpe,
            npss: c.npss,
            sqes: c.sqes,
            cqes: c.cqes,
            maxcmd: c.maxcmd,
            nn: c.nn,
            oncs: c.oncs,
            fuses: c.fuses,
            fna: c.fna,
            vwc: c.vwc,
            awun: c.awun,
            awupf: c.awupf,
            sgls: c.sgls,
            subnqn: (!subnqn.is_empty()).then_some(subnqn),
        }
    }

    /// Human-readable text, in nvme-cli's `name : value` layout, with a decoded line where it helps.
    pub fn text(&self) -> String {
        let ver = format!(
            "{:#x} (NVMe {}.{}.{})",
            self.ver,
            self.ver >> 16,
            (self.ver >> 8) & 0xff,
            self.ver & 0xff
        );
        let mdts = if self.mdts == 0 {
            "0 (no limit)".to_string()
        } else {
            format!("{} (2^{} minimum pages per transfer)", self.mdts, self.mdts)
        };
        let rows: Vec<(&str, String)> = vec![
            ("vid", format!("{:#x}", self.vid)),
            ("ssvid", format!("{:#x}", self.ssvid)),
            ("sn", self.sn.clone()),
            ("mn", self.mn.clone()),
            ("fr", self.fr.clone()),
            ("rab", self.rab.to_string()),
            ("ieee", format!("{:06x}", self.ieee)),
            ("cmic", format!("{:#x}", self.cmic)),
            ("mdts", mdts),
            ("cntlid", format!("{:#x}", self.cntlid)),
            ("ver", ver),
            (
                "oacs",
                format!("{:#x}{}", self.oacs, flags(self.oacs as u32, OACS)),
            ),
            ("acl", self.acl.to_string()),
            ("aerl", self.aerl.to_string()),
            ("frmw", format!("{:#x}", self.frmw)),
            ("lpa", format!("{:#x}", self.lpa)),
            ("elpe", self.elpe.to_string()),
            ("npss", self.npss.to_string()),
            ("sqes", format!("{:#x}", self.sqes)),
            ("cqes", format!("{:#x}", self.cqes)),
            ("maxcmd", self.maxcmd.to_string()),
            ("nn", self.nn.to_string()),
            (
                "oncs",
                format!("{:#x}{}", self.oncs, flags(self.oncs as u32, ONCS)),
            ),
            ("fuses", format!("{:#x}", self.fuses)),
            ("fna", format!("{:#x}", self.fna)),
            (
                "vwc",
                format!(
                    "{:#x}{}",
                    self.vwc,
                    if self.vwc & 1 != 0 {
                        " (volatile write cache present: data is durable after Flush)"
                    } else {
                        ""
                    }
                ),
            ),
            ("awun", self.awun.to_string()),
            ("awupf", self.awupf.to_string()),
            ("sgls", format!("{:#x}", self.sgls)),
            ("subnqn", self.subnqn.clone().unwrap_or_default()),
        ];
        table(&rows)
    }
}

const OACS: &[(u32, &str)] = &[
    (0, "Security"),
    (1, "Format NVM"),
    (2, "Firmware"),
    (3, "Namespace Management"),
    (4, "Device Self-test"),
    (5, "Directives"),
    (6, "NVMe-MI"),
    (7, "Virtualization Management"),
    (8, "Doorbell Buffer Config"),
    (9, "Get LBA Status"),
];

const ONCS: &[(u32, &str)] = &[
    (0, "Compare"),
    (1, "Write Uncorrectable"),
    (2, "Dataset Management"),
    (3, "Write Zeroes"),
    (4, "Save/Select in Features"),
    (5, "Reservations"),
    (6, "Timestamp"),
    (7, "Verify"),
    (8, "Copy"),
];

fn flags(v: u32, names: &[(u32, &str)]) -> String {
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| v >> bit & 1 == 1)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!(" ({})", set.join(", "))
    }
}

fn table(rows: &[(&str, String)]) -> String {
    let mut s = String::new();
    for (k, v) in rows {
        let _ = writeln!(s, "{k:<10}: {v}");
    }
    s
}

impl IdNs {
    pub fn from_raw(nsid: u32, n: &IdentifyNamespace) -> Self {
        let count = (n.nlbaf as usize + 1).min(n.lbaf.len());
        Self {
            nsid,
            nsze: n.nsze,
            ncap: n.ncap,
            nuse: n.nuse,
            nsfeat: n.nsfeat,
            nlbaf: n.nlbaf,
            flbas: n.flbas,
            mc: n.mc,
            dpc: n.dpc,
            dps: n.dps,
            nmic: n.nmic,
            dlfeat: n.dlfeat,
            nawun: n.nawun,
            nawupf: n.nawupf,
            nguid: hex(&n.nguid),
            eui64: hex(&n.eui64),
            lbafs: n.lbaf[..count]
                .iter()
                .map(|f| Lbaf {
                    ms: f.ms,
                    ds: f.lbads,
                    rp: f.rp & 3,
                })
                .collect(),
        }
    }

    /// The LBA format in use (FLBAS bits 3:0, with bits 6:5 as the upper bits).
    pub fn format_index(&self) -> usize {
        (self.flbas & 0xf) as usize | (((self.flbas >> 5) & 3) as usize) << 4
    }

    /// Human-readable text, in nvme-cli's layout, with the size decoded.
    pub fn text(&self) -> String {
        let in_use = self.format_index();
        let block = self
            .lbafs
            .get(in_use)
            .map(|f| 1u64.checked_shl(f.ds as u32).unwrap_or(0))
            .unwrap_or(0);
        let bytes = self.nsze.saturating_mul(block);
        let mut rows: Vec<(&str, String)> = vec![
            (
                "nsze",
                format!(
                    "{:#x} ({} blocks of {} B = {})",
                    self.nsze,
                    self.nsze,
                    block,
                    size(bytes)
                ),
            ),
            ("ncap", format!("{:#x}", self.ncap)),
            ("nuse", format!("{:#x}", self.nuse)),
            ("nsfeat", format!("{:#x}", self.nsfeat)),
            ("nlbaf", self.nlbaf.to_string()),
            ("flbas", format!("{:#x}", self.flbas)),
            ("mc", format!("{:#x}", self.mc)),
            ("dpc", format!("{:#x}", self.dpc)),
            ("dps", format!("{:#x}", self.dps)),
            ("nmic", format!("{:#x}", self.nmic)),
            ("dlfeat", self.dlfeat.to_string()),
            ("nawun", self.nawun.to_string()),
            ("nawupf", self.nawupf.to_string()),
            ("nguid", self.nguid.clone()),
            ("eui64", self.eui64.clone()),
        ];
        let lbaf_rows: Vec<String> = self
            .lbafs
            .iter()
            .enumerate()
            .map(|(i, f)| {
                format!(
                    "ms:{:<3} lbads:{:<2} rp:{:#x}{}",
                    f.ms,
                    f.ds,
                    f.rp,
                    if i == in_use { " (in use)" } else { "" }
                )
            })
            .collect();
        let names: Vec<String> = (0..lbaf_rows.len())
            .map(|i| format!("lbaf {i:>2}"))
            .collect();
        for (n, r) in names.iter().zip(lbaf_rows) {
            rows.push((n.as_str(), r));
        }
        table(&rows)
    }
}

fn size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Size in bytes, human-readable (`64.00 MiB`).
pub fn human_size(b: u64) -> String {
    size(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_driver::spec::from_bytes;

    /// An Identify Controller page as QEMU's NVMe fills it (the fields that matter here).
    fn ctrl_bytes() -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..2].copy_from_slice(&0x1b36u16.to_le_bytes()); // vid
        b[2..4].copy_from_slice(&0x1af4u16.to_le_bytes()); // ssvid
        b[4..24].copy_from_slice(b"NVKV-TOOLS          "); // sn, space padded
        b[24..64].copy_from_slice(format!("{:<40}", "QEMU NVMe Ctrl").as_bytes());
        b[64..72].copy_from_slice(b"7.2.0   ");
        b[72] = 6; // rab
        b[73..76].copy_from_slice(&[0x00, 0x54, 0x52]); // ieee OUI 525400, stored LSB first
        b[77] = 7; // mdts
        b[78..80].copy_from_slice(&0u16.to_le_bytes());
        b[80..84].copy_from_slice(&0x0001_0400u32.to_le_bytes()); // ver 1.4.0
        b[256..258].copy_from_slice(&0x010au16.to_le_bytes()); // oacs
        b[258] = 3; // acl
        b[259] = 3; // aerl
        b[260] = 3; // frmw
        b[261] = 7; // lpa
        b[262] = 0x7f; // elpe
        b[512] = 0x66; // sqes
        b[513] = 0x44; // cqes
        b[516..520].copy_from_slice(&256u32.to_le_bytes()); // nn
        b[520..522].copy_from_slice(&0x015du16.to_le_bytes()); // oncs
        b[525] = 7; // vwc
        b[536..540].copy_from_slice(&0x0010_0001u32.to_le_bytes()); // sgls
        let nqn = b"nqn.2019-08.org.qemu:NVKV-TOOLS";
        b[768..768 + nqn.len()].copy_from_slice(nqn);
        b
    }

    #[test]
    fn id_ctrl_json_names_and_encodings_follow_nvme_cli() {
        let raw: IdentifyController = from_bytes(&ctrl_bytes()).expect("4096 bytes");
        let v = serde_json::to_value(IdCtrl::from_raw(&raw)).expect("json");
        let o = v.as_object().expect("object");
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut want = vec![
            "vid", "ssvid", "sn", "mn", "fr", "rab", "ieee", "cmic", "mdts", "cntlid", "ver",
            "oacs", "acl", "aerl", "frmw", "lpa", "elpe", "npss", "sqes", "cqes", "maxcmd", "nn",
            "oncs", "fuses", "fna", "vwc", "awun", "awupf", "sgls", "subnqn",
        ];
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(v["vid"], 6966);
        assert_eq!(v["ssvid"], 6900);
        // nvme-cli keeps the space padding ("%-.*s" over the whole field).
        assert_eq!(v["sn"], "NVKV-TOOLS          ");
        assert_eq!(v["mn"].as_str().map(str::len), Some(40));
        assert_eq!(v["fr"], "7.2.0   ");
        assert_eq!(v["ieee"], 0x525400);
        assert_eq!(v["ver"], 0x10400);
        assert_eq!(v["oacs"], 266);
        assert_eq!(v["sqes"], 102);
        assert_eq!(v["nn"], 256);
        assert_eq!(v["sgls"], 0x100001);
        assert_eq!(v["subnqn"], "nqn.2019-08.org.qemu:NVKV-TOOLS");
        let text = IdCtrl::from_raw(&raw).text();
        assert!(text.contains("vid       : 0x1b36"), "{text}");
        assert!(text.contains("ieee      : 525400"), "{text}");
        assert!(text.contains("Doorbell Buffer Config"), "{text}");
        assert!(text.contains("NVMe 1.4.0"), "{text}");
    }

    #[test]
    fn empty_subnqn_is_left_out_like_nvme_cli() {
        let mut b = ctrl_bytes();
        b[768..1024].fill(0);
        let raw: IdentifyController = from_bytes(&b).expect("4096 bytes");
        let v = serde_json::to_value(IdCtrl::from_raw(&raw)).expect("json");
        assert!(v.get("subnqn").is_none(), "{v}");
    }

    #[test]
    fn id_ns_json_names_and_encodings_follow_nvme_cli() {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(&16384u64.to_le_bytes()); // nsze
        b[8..16].copy_from_slice(&16384u64.to_le_bytes()); // ncap
        b[16..24].copy_from_slice(&100u64.to_le_bytes()); // nuse
        b[24] = 0x14; // nsfeat
        b[25] = 7; // nlbaf: 8 formats
        b[26] = 4; // flbas: format 4
        b[33] = 9; // dlfeat
        b[34..36].copy_from_slice(&3u16.to_le_bytes()); // nawun
        b[36..38].copy_from_slice(&1u16.to_le_bytes()); // nawupf
        for (i, x) in b[104..120].iter_mut().enumerate() {
            *x = 0xa0 + i as u8; // nguid
        }
        b[120..128].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 0, 0, 0x01]); // eui64
        for i in 0..8 {
            let ms: u16 = [0, 8, 16, 64, 0, 8, 16, 64][i];
            let ds = if i < 4 { 9 } else { 12 };
            let o = 128 + 4 * i;
            b[o..o + 2].copy_from_slice(&ms.to_le_bytes());
            b[o + 2] = ds;
            b[o + 3] = 0xfc | (i as u8 & 3); // reserved bits set: rp is bits 1:0 only
        }
        let raw: IdentifyNamespace = from_bytes(&b).expect("4096 bytes");
        let ns = IdNs::from_raw(1, &raw);
        let v = serde_json::to_value(&ns).expect("json");
        let mut keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let mut want = vec![
            "nsid", "nsze", "ncap", "nuse", "nsfeat", "nlbaf", "flbas", "mc", "dpc", "dps", "nmic",
            "dlfeat", "nawun", "nawupf", "nguid", "eui64", "lbafs",
        ];
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(v["nsze"], 16384);
        assert_eq!(v["nuse"], 100);
        assert_eq!(v["nguid"], "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf");
        assert_eq!(v["eui64"], "5254000000000001");
        let lbafs = v["lbafs"].as_array().expect("array");
        assert_eq!(lbafs.len(), 8, "NLBAF is 0-based");
        assert_eq!(lbafs[4], serde_json::json!({"ms": 0, "ds": 12, "rp": 0}));
        assert_eq!(lbafs[3], serde_json::json!({"ms": 64, "ds": 9, "rp": 3}));
        assert_eq!(ns.format_index(), 4);
        let text = ns.text();
        assert!(text.contains("64.00 MiB"), "{text}");
        assert!(
            text.contains("lbaf  4   : ms:0   lbads:12 rp:0x0 (in use)"),
            "{text}"
        );
    }
}
