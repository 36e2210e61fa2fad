//! The Persistent Memory Region registers of a controller as nvme-cli's `nvme show-regs` shows them: raw values
//! under nvme-cli's JSON names (`pmrcap`, `pmrctl`, `pmrsts`, `pmrebs`, `pmrswtp`, `pmrmscl`, `pmrmscu`), and
//! as text in the layout of `show-regs -H` (`name : value`, then one decoded line per field, with nvme-cli's
//! wording).

use nvme_driver::pmr::{PmrRegisters, PmrTimeUnits};
use serde::Serialize;
use std::fmt::Write as _;

/// The PMR registers, raw, named as nvme-cli's `show-regs -o json` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PmrRegs {
    pub pmrcap: u32,
    pub pmrctl: u32,
    pub pmrsts: u32,
    pub pmrebs: u32,
    pub pmrswtp: u32,
    pub pmrmscl: u32,
    pub pmrmscu: u32,
}

/// What the text report says when CAP.PMRS is clear.
pub const NO_PMR: &str = "no PMR (CAP.PMRS = 0)";

impl PmrRegs {
    pub fn from_registers(r: &PmrRegisters) -> Self {
        Self {
            pmrcap: r.pmrcap.raw,
            pmrctl: r.pmrctl.raw,
            pmrsts: r.pmrsts.raw,
            pmrebs: r.pmrebs.raw,
            pmrswtp: r.pmrswtp.raw,
            pmrmscl: r.pmrmsc.raw_lower,
            pmrmscu: r.pmrmsc.raw_upper,
        }
    }

    fn decoded(&self) -> PmrRegisters {
        PmrRegisters::decode([
            self.pmrcap,
            self.pmrctl,
            self.pmrsts,
            self.pmrebs,
            self.pmrswtp,
            self.pmrmscl,
            self.pmrmscu,
        ])
    }

    /// `show-regs -H` text for the PMR registers.
    pub fn text(&self) -> String {
        let r = self.decoded();
        let (cap, ctl, sts, ebs, swtp, msc) =
            (r.pmrcap, r.pmrctl, r.pmrsts, r.pmrebs, r.pmrswtp, r.pmrmsc);
        let mut s = String::new();
        let mut reg = |name: &str, value: u32, fields: &[(&str, String)]| {
            let _ = writeln!(s, "{name:<8}: {value:#x}");
            for (f, v) in fields {
                let _ = writeln!(s, "\t{f:<58}: {v}");
            }
        };
        let supported = |b: bool| if b { "" } else { "not " };
        reg(
            "pmrcap",
            self.pmrcap,
            &[
                (
                    "Controller Memory Space Supported (CMSS)",
                    format!(
                        "Referencing PMR with host supplied addresses is {}Supported",
                        if cap.cmss { "" } else { "Not " }
                    ),
                ),
                (
                    "Persistent Memory Region Timeout (PMRTO)",
                    format!("{:x}", cap.pmrto),
                ),
                (
                    "Persistent Memory Region Write Barrier Mechanisms (PMRWBM)",
                    format!("{:x}", cap.pmrwbm),
                ),
                (
                    "Persistent Memory Region Time Units (PMRTU)",
                    format!(
                        "PMR time unit is {}",
                        match cap.pmrtu {
                            PmrTimeUnits::HalfSeconds => "500 milliseconds",
                            _ => "minutes",
                        }
                    ),
                ),
                ("Base Indicator Register (BIR)", format!("{:x}", cap.bir)),
                (
                    "Write Data Support (WDS)",
                    format!("Write data to the PMR is {}supported", supported(cap.wds)),
                ),
                (
                    "Read Data Support (RDS)",
                    format!("Read data from the PMR is {}supported", supported(cap.rds)),
                ),
            ],
        );
        reg(
            "pmrctl",
            self.pmrctl,
            &[(
                "Enable (EN)",
                format!("PMR is {}", if ctl.en { "READY" } else { "Disabled" }),
            )],
        );
        reg(
            "pmrsts",
            self.pmrsts,
            &[
                ("Controller Base Address Invalid (CBAI)", format!("{:x}", sts.cbai as u8)),
                ("Health Status (HSTS)", sts.hsts.to_string()),
                (
                    "Not Ready (NRDY)",
                    format!(
                        "The Persistent Memory Region is {} to process PCI Express memory read and write requests",
                        if !sts.nrdy && ctl.en { "READY" } else { "Not Ready" }
                    ),
                ),
                ("Error (ERR)", format!("{:x}", sts.err)),
            ],
        );
        reg(
            "pmrebs",
            self.pmrebs,
            &[
                ("PMR Elasticity Buffer Size Base (PMRWBZ)", format!("{:x}", ebs.pmrwbz)),
                (
                    "Read Bypass Behavior",
                    format!(
                        "memory reads not conflicting with memory writes in the PMR Elasticity Buffer {} bypass those memory writes",
                        if ebs.rbb { "SHALL" } else { "MAY" }
                    ),
                ),
                ("PMR Elasticity Buffer Size Units (PMRSZU)", ebs.pmrszu.to_string()),
            ],
        );
        reg(
            "pmrswtp",
            self.pmrswtp,
            &[
                (
                    "PMR Sustained Write Throughput (PMRSWTV)",
                    format!("{:x}", swtp.pmrswtv),
                ),
                (
                    "PMR Sustained Write Throughput Units (PMRSWTU)",
                    format!("{}/second", swtp.pmrswtu),
                ),
            ],
        );
        reg(
            "pmrmscl",
            self.pmrmscl,
            &[
                (
                    "Controller Base Address (CBA)",
                    format!("{:#x}", self.pmrmscl >> 12),
                ),
                (
                    "Controller Memory Space Enable (CMSE)",
                    format!("{:#x}", msc.cmse as u8),
                ),
            ],
        );
        reg(
            "pmrmscu",
            self.pmrmscu,
            &[(
                "Controller Base Address (CBA)",
                format!("{:#x}", self.pmrmscu),
            )],
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 7.2's PMR once enabled: PMRCAP 0x1000898, PMRCTL 1, the rest 0.
    fn qemu() -> PmrRegs {
        PmrRegs {
            pmrcap: 0x0100_0898,
            pmrctl: 1,
            pmrsts: 0,
            pmrebs: 0,
            pmrswtp: 0,
            pmrmscl: 0,
            pmrmscu: 0,
        }
    }

    #[test]
    fn json_names_are_nvme_clis() {
        let v = serde_json::to_value(qemu()).expect("json");
        let mut keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["pmrcap", "pmrctl", "pmrebs", "pmrmscl", "pmrmscu", "pmrsts", "pmrswtp"]
        );
        assert_eq!(v["pmrcap"], 0x0100_0898);
    }

    /// The decoded value of field `name` (the first line that starts with it).
    fn field<'a>(text: &'a str, name: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix('\t').filter(|l| l.starts_with(name)))
            .and_then(|l| l.split_once(": ").map(|(_, v)| v))
            .unwrap_or_else(|| panic!("no field {name:?} in:\n{text}"))
    }

    #[test]
    fn text_decodes_qemus_pmr_as_show_regs_does() {
        let t = qemu().text();
        for want in [
            "pmrcap  : 0x1000898",
            "pmrctl  : 0x1",
            "pmrsts  : 0x0",
            "pmrmscu : 0x0",
        ] {
            assert!(t.contains(want), "{want:?} missing:\n{t}");
        }
        let f = |name| field(&t, name);
        assert_eq!(
            f("Controller Memory Space Supported (CMSS)"),
            "Referencing PMR with host supplied addresses is Supported"
        );
        assert_eq!(
            f("Persistent Memory Region Write Barrier Mechanisms (PMRWBM)"),
            "2"
        );
        assert_eq!(f("Persistent Memory Region Timeout (PMRTO)"), "0");
        assert_eq!(
            f("Persistent Memory Region Time Units (PMRTU)"),
            "PMR time unit is 500 milliseconds"
        );
        assert_eq!(f("Base Indicator Register (BIR)"), "4");
        assert_eq!(
            f("Write Data Support (WDS)"),
            "Write data to the PMR is supported"
        );
        assert_eq!(
            f("Read Data Support (RDS)"),
            "Read data from the PMR is supported"
        );
        assert_eq!(f("Enable (EN)"), "PMR is READY");
        assert_eq!(f("Health Status (HSTS)"), "Normal Operation");
        assert!(f("Not Ready (NRDY)").contains("is READY to process"), "{t}");
        assert_eq!(f("PMR Elasticity Buffer Size Units (PMRSZU)"), "Bytes");
        assert_eq!(
            f("PMR Sustained Write Throughput Units (PMRSWTU)"),
            "Bytes/second"
        );
        // Disabled, not ready, read only, an error, a controller base address.
        let r = PmrRegs {
            pmrctl: 0,
            pmrsts: 1 << 8 | 2 << 9 | 0x42,
            pmrmscl: 0xfee0_0002,
            pmrmscu: 0x1,
            ..qemu()
        };
        let t = r.text();
        let f = |name| field(&t, name);
        assert_eq!(f("Enable (EN)"), "PMR is Disabled");
        assert_eq!(f("Health Status (HSTS)"), "Read Only");
        assert!(
            f("Not Ready (NRDY)").contains("is Not Ready to process"),
            "{t}"
        );
        assert_eq!(f("Error (ERR)"), "42");
        assert_eq!(f("Controller Memory Space Enable (CMSE)"), "0x1");
        assert_eq!(f("Controller Base Address (CBA)"), "0xfee00");
    }
}
