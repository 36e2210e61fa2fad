//! Operator tools for nvkv.
//!
//! - `nvkv-setup` ([`setup`], [`sysfs`]): list NVMe controllers, bind them to vfio-pci and give them back to the
//!   kernel's nvme driver (refusing while a namespace is in use), reserve hugepages, check the system.
//! - `nvkv-identify` ([`identify`]): Identify Controller / Namespace through nvkv's own driver, as text or as
//!   JSON whose fields match nvme-cli's; the PMR registers ([`pmr`]) as `nvme show-regs` shows them.

pub mod identify;
pub mod pmr;
pub mod setup;
pub mod sysfs;
