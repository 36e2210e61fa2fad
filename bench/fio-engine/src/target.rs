//! What a fio `filename` names: a PCI address and a namespace.
//!
//! fio splits `filename` at `:` (its list separator), so the PCI address is written with `.` instead of `:`,
//! as SPDK's plugin does. Accepted forms (the namespace defaults to 1 when none is given):
//!
//! | form | example |
//! | --- | --- |
//! | address `/` namespace | `0000.00.10.0/1` |
//! | address `-ns` namespace | `0000.00.10.0-ns1` |
//! | SPDK's key=value form | `trtype=PCIe traddr=0000.00.10.0 ns=1` |
//! | address alone (namespace 1) | `0000.00.10.0` |
//!
//! The domain may be left out (`00.10.0` is `0000:00:10.0`); `:` is accepted too where fio lets it through
//! (escaped as `\:` in a job file).

use std::fmt;

/// A namespace of a controller: the target of one fio file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Canonical PCI address (`dddd:bb:dd.f`, lowercase), as sysfs and `nvme_driver::Controller::open` want it.
    pub addr: String,
    pub nsid: u32,
}

/// Why a filename is not a target; the message shows the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFilename {
    pub filename: String,
    pub why: String,
}

pub const FORMS: &str = "expected `DDDD.BB.DD.F/NSID` (e.g. 0000.00.10.0/1), `DDDD.BB.DD.F-nsNSID`, \
     `trtype=PCIe traddr=DDDD.BB.DD.F ns=NSID` or `DDDD.BB.DD.F` (namespace 1); '.' stands for ':' because fio \
     splits filenames at ':'";

impl fmt::Display for BadFilename {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad filename {:?}: {}; {FORMS}", self.filename, self.why)
    }
}

impl std::error::Error for BadFilename {}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} namespace {}", self.addr, self.nsid)
    }
}

impl Target {
    /// Parses a fio filename (see the module documentation).
    pub fn parse(filename: &str) -> Result<Self, BadFilename> {
        let bad = |why: String| BadFilename {
            filename: filename.to_string(),
            why,
        };
        let s = filename.trim();
        if s.is_empty() {
            return Err(bad("empty".into()));
        }
        if s.starts_with('/') {
            return Err(bad(
                "a path: this engine drives a controller bound to vfio-pci, named by its PCI address, not a \
                 kernel block device (use ioengine=io_uring or libaio for that)"
                    .into(),
            ));
        }
        let (addr, ns) = if s.contains('=') {
            let mut addr = None;
            let mut ns = None;
            for kv in s.split_whitespace() {
                let Some((k, v)) = kv.split_once('=') else {
                    return Err(bad(format!("{kv:?} is not key=value")));
                };
                match k.to_ascii_lowercase().as_str() {
                    "trtype" if v.eq_ignore_ascii_case("pcie") => {}
                    "trtype" => {
                        return Err(bad(format!("transport {v:?} is not supported (only PCIe)")))
                    }
                    "traddr" => addr = Some(v),
                    "ns" => ns = Some(v),
                    _ => {
                        return Err(bad(format!(
                            "unknown key {k:?} (known: trtype, traddr, ns)"
                        )))
                    }
                }
            }
            (addr.ok_or_else(|| bad("no traddr=".into()))?, ns)
        } else if let Some((a, n)) = s.split_once('/') {
            (a, Some(n))
        } else if let Some(i) = s.find("-ns") {
            (&s[..i], Some(&s[i + 3..]))
        } else {
            (s, None)
        };
        let addr = pci_address(addr).map_err(bad)?;
        let nsid = match ns {
            None => 1,
            Some(n) => match n.parse::<u32>() {
                Ok(0) => return Err(bad("namespace 0 does not exist (NSIDs start at 1)".into())),
                Ok(0xffff_ffff) => {
                    return Err(bad(
                        "namespace 0xffffffff is the broadcast NSID, not a namespace".into(),
                    ))
                }
                Ok(n) => n,
                Err(_) => return Err(bad(format!("namespace {n:?} is not a number"))),
            },
        };
        Ok(Target { addr, nsid })
    }
}

/// `dddd.bb.dd.f`, `bb.dd.f` (domain 0) or the same with ':' → `dddd:bb:dd.f`.
fn pci_address(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split(['.', ':']).collect();
    let (domain, bus, dev, func) = match parts.as_slice() {
        [d, b, v, f] => (*d, *b, *v, *f),
        [b, v, f] => ("0000", *b, *v, *f),
        _ => {
            return Err(format!(
                "{s:?} is not a PCI address (domain.bus.device.function)"
            ))
        }
    };
    let hex = |what: &str, v: &str, digits: usize, max: u32| -> Result<u32, String> {
        if v.is_empty() || v.len() > digits || !v.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "PCI {what} {v:?} in {s:?} is not {digits} hex digits"
            ));
        }
        let n = u32::from_str_radix(v, 16).map_err(|e| e.to_string())?;
        if n > max {
            return Err(format!("PCI {what} {v:?} in {s:?} is above {max:#x}"));
        }
        Ok(n)
    };
    let domain = hex("domain", domain, 4, 0xffff)?;
    let bus = hex("bus", bus, 2, 0xff)?;
    let dev = hex("device", dev, 2, 0x1f)?;
    let func = hex("function", func, 1, 7)?;
    Ok(format!("{domain:04x}:{bus:02x}:{dev:02x}.{func:x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(addr: &str, nsid: u32) -> Target {
        Target {
            addr: addr.into(),
            nsid,
        }
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(Target::parse("0000.00.10.0/1"), Ok(t("0000:00:10.0", 1)));
        assert_eq!(Target::parse("0000.00.10.0/2"), Ok(t("0000:00:10.0", 2)));
        assert_eq!(Target::parse("0000.00.10.0-ns3"), Ok(t("0000:00:10.0", 3)));
        assert_eq!(
            Target::parse("trtype=PCIe traddr=0000.01.00.0 ns=1"),
            Ok(t("0000:01:00.0", 1))
        );
        assert_eq!(
            Target::parse("traddr=0000.01.00.0"),
            Ok(t("0000:01:00.0", 1))
        );
        assert_eq!(Target::parse("0000.00.10.0"), Ok(t("0000:00:10.0", 1)));
        assert_eq!(Target::parse("00.10.0/1"), Ok(t("0000:00:10.0", 1)));
        // ':' where fio passes it through (escaped in a job file), upper case hex, surrounding blanks.
        assert_eq!(Target::parse("0000:0A:1F.7/1"), Ok(t("0000:0a:1f.7", 1)));
        assert_eq!(Target::parse(" 0000.00.10.0/1 "), Ok(t("0000:00:10.0", 1)));
    }

    #[test]
    fn bad_names_say_why_and_show_the_forms() {
        for (name, why) in [
            ("", "empty"),
            ("/dev/nvme0n1", "kernel block device"),
            ("0000.00.10.0/0", "namespace 0"),
            ("0000.00.10.0/x", "not a number"),
            ("0000.00.10.0/4294967295", "broadcast"),
            ("0000.00.20.0/1", "device \"20\""),
            ("0000.00.10.8/1", "function \"8\""),
            ("00000.00.10.0/1", "domain"),
            ("0000.100.10.0/1", "bus"),
            ("0000.00.10/1", "bus \"0000\""),
            ("0.1.2.3.4/1", "not a PCI address"),
            ("trtype=RDMA traddr=0000.00.10.0", "only PCIe"),
            ("trtype=PCIe ns=1", "no traddr"),
            ("trtype=PCIe traddr=0000.00.10.0 foo=1", "unknown key"),
            ("traddr=0000.00.10.0 ns", "not key=value"),
        ] {
            let e = Target::parse(name).expect_err(name);
            let msg = e.to_string();
            assert!(msg.contains(why), "{name:?}: {msg}");
            assert!(msg.contains("0000.00.10.0/1"), "{name:?}: {msg}");
        }
    }

    #[test]
    fn display() {
        assert_eq!(t("0000:00:10.0", 1).to_string(), "0000:00:10.0 namespace 1");
    }
}
