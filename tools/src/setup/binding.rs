//! Moving a controller between the kernel's `nvme` driver and `vfio-pci`.

use crate::sysfs::{PciController, System, Usage};
use serde::Serialize;
use std::fmt;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// What a bind or release did.
#[derive(Debug, Clone, Serialize)]
pub struct Moved {
    pub addr: String,
    pub from: Option<String>,
    pub to: String,
    /// `/dev/vfio/N` after a bind; the block devices after a release.
    pub nodes: Vec<String>,
    /// Uses that --force overrode.
    pub forced_over: Vec<Usage>,
    /// Notes for the operator (other devices in the IOMMU group, ...).
    pub notes: Vec<String>,
}

impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.from {
            Some(from) if from == &self.to => write!(f, "{}: already on {}", self.addr, self.to)?,
            Some(from) => write!(f, "{}: {} -> {}", self.addr, from, self.to)?,
            None => write!(f, "{}: (no driver) -> {}", self.addr, self.to)?,
        }
        if !self.nodes.is_empty() {
            write!(f, " ({})", self.nodes.join(", "))?;
        }
        for u in &self.forced_over {
            write!(f, "\n  forced despite: {u}")?;
        }
        for n in &self.notes {
            write!(f, "\n  note: {n}")?;
        }
        Ok(())
    }
}

/// Makes sure a PCI driver is registered, loading its module if needed.
fn ensure_driver(
    sys: &System,
    driver: &'static str,
    module: &'static str,
) -> Result<(), SetupError> {
    let dir = sys.path("/sys/bus/pci/drivers").join(driver);
    if dir.exists() {
        return Ok(());
    }
    let why = match Command::new("modprobe").arg(module).output() {
        Ok(o) if o.status.success() => {
            if dir.exists() {
                return Ok(());
            }
            "the module loaded but the driver did not register".to_string()
        }
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run modprobe: {e}"),
    };
    Err(SetupError::DriverMissing {
        driver,
        module,
        why,
    })
}

fn wait_until(
    addr: &str,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), SetupError> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return Err(SetupError::Timeout {
                addr: addr.into(),
                what: what.into(),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn unbind(sys: &System, c: &PciController) -> Result<(), SetupError> {
    if let Some(d) = &c.driver {
        let p = sys.pci_device(&c.addr).join("driver/unbind");
        write(&p, &c.addr)?;
        let addr = c.addr.clone();
        wait_until(
            &c.addr,
            &format!("unbinding from {d}"),
            Duration::from_secs(20),
            || sys.driver(&addr).is_none(),
        )?;
    }
    Ok(())
}

/// Checks that `c` can be taken from the kernel: the reasons it cannot, empty when it can.
pub fn bind_blockers(sys: &System, c: &PciController) -> Vec<Usage> {
    if c.driver.as_deref() == Some("vfio-pci") {
        return Vec::new();
    }
    sys.usage(c)
}

/// Binds the controller at `addr` to vfio-pci. Refuses when one of its namespaces is in use, unless `force`.
pub fn bind_vfio(sys: &System, addr: &str, force: bool) -> Result<Moved, SetupError> {
    let c = sys.controller(addr)?;
    let from = c.driver.clone();
    let group = c
        .iommu_group
        .clone()
        .ok_or_else(|| SetupError::NoIommuGroup { addr: addr.into() })?;
    let node = format!("/dev/vfio/{group}");
    let mut notes = Vec::new();
    for (other, drv) in sys.iommu_group_devices(&group) {
        if other != addr && !matches!(drv.as_deref(), None | Some("vfio-pci") | Some("pcieport")) {
            notes.push(format!(
                "{other} shares IOMMU group {group} and is bound to {}; the group is not viable until it is bound to vfio-pci or unbound",
                drv.unwrap_or_default()
            ));
        }
    }
    if from.as_deref() == Some("vfio-pci") {
        return Ok(Moved {
            addr: addr.into(),
            from,
            to: "vfio-pci".into(),
            nodes: vec![node],
            forced_over: Vec::new(),
            notes,
        });
    }
    let uses = bind_blockers(sys, &c);
    if !uses.is_empty() && !force {
        return Err(SetupError::InUse {
            addr: addr.into(),
            uses,
        });
    }
    ensure_driver(sys, "vfio-pci", "vfio-pci")?;
    unbind(sys, &c)?;
    let dev = sys.pci_device(addr);
    write(&dev.join("driver_override"), "vfio-pci")?;
    write(&sys.path("/sys/bus/pci/drivers_probe"), addr)?;
    wait_until(addr, "binding to vfio-pci", Duration::from_secs(10), || {
        sys.driver(addr).is_some()
    })?;
    match sys.driver(addr) {
        Some(d) if d == "vfio-pci" => {}
        Some(d) => {
            return Err(SetupError::WrongDriver {
                addr: addr.into(),
                driver: d,
                wanted: "vfio-pci",
            })
        }
        None => no_driver_bound(addr)?,
    }
    let devnode = sys.path(&node);
    wait_until(
        addr,
        &format!("{node} appearing"),
        Duration::from_secs(10),
        || devnode.exists(),
    )?;
    Ok(Moved {
        addr: addr.into(),
        from,
        to: "vfio-pci".into(),
        nodes: vec![node],
        forced_over: uses,
        notes,
    })
}

fn no_driver_bound(addr: &str) -> Result<(), SetupError> {
    Err(SetupError::Timeout {
        addr: addr.into(),
        what: "binding a driver".into(),
        secs: 10,
    })
}

/// Gives the controller at `addr` back to the kernel's nvme driver. Refuses while a process has its VFIO
/// group open (a userspace driver is using it), unless `force`.
pub fn release(sys: &System, addr: &str, force: bool) -> Result<Moved, SetupError> {
    let c = sys.controller(addr)?;
    let from = c.driver.clone();
    if from.as_deref() == Some("nvme") {
        return Ok(Moved {
            addr: addr.into(),
            from,
            to: "nvme".into(),
            nodes: c
                .namespaces
                .iter()
                .map(|n| format!("/dev/{}", n.name))
                .collect(),
            forced_over: Vec::new(),
            notes: Vec::new(),
        });
    }
    if let (Some("vfio-pci"), Some(group)) = (from.as_deref(), &c.iommu_group) {
        let users = sys.vfio_users(group);
        if !users.is_empty() && !force {
            return Err(SetupError::VfioInUse {
                addr: addr.into(),
                group: group.clone(),
                users,
            });
        }
    }
    ensure_driver(sys, "nvme", "nvme")?;
    unbind(sys, &c)?;
    let dev = sys.pci_device(addr);
    // An empty line clears driver_override.
    write(&dev.join("driver_override"), "\n")?;
    write(&sys.path("/sys/bus/pci/drivers_probe"), addr)?;
    wait_until(addr, "binding to nvme", Duration::from_secs(20), || {
        sys.driver(addr).is_some()
    })?;
    match sys.driver(addr) {
        Some(d) if d == "nvme" => {}
        Some(d) => {
            return Err(SetupError::WrongDriver {
                addr: addr.into(),
                driver: d,
                wanted: "nvme",
            })
        }
        None => no_driver_bound(addr)?,
    }
    // The nvme driver probes asynchronously and scans namespaces one by one: wait until the controller is
    // live and its set of block devices has not changed for a second.
    let mut nodes: Vec<String> = Vec::new();
    let mut since = Instant::now();
    wait_until(
        addr,
        "the namespaces' block devices appearing",
        Duration::from_secs(30),
        || {
            let Ok(c) = sys.controller(addr) else {
                return false;
            };
            let live = c.kernel_name.as_ref().is_some_and(|k| {
                std::fs::read_to_string(sys.path("/sys/class/nvme").join(k).join("state"))
                    .map(|s| s.trim() == "live")
                    .unwrap_or(true)
            });
            let now: Vec<String> = c
                .namespaces
                .iter()
                .map(|n| format!("/dev/{}", n.name))
                .collect();
            if now != nodes {
                nodes = now;
                since = Instant::now();
            }
            live && !nodes.is_empty()
                && nodes.iter().all(|n| sys.path(n).exists())
                && since.elapsed() >= Duration::from_secs(1)
        },
    )?;
    Ok(Moved {
        addr: addr.into(),
        from,
        to: "nvme".into(),
        nodes,
        forced_over: Vec::new(),
        notes: Vec::new(),
    })
}
