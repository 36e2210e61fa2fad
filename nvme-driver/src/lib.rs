//! A userspace NVMe driver over VFIO.
//!
//! [`Controller::open`] maps BAR0 of a controller bound to vfio-pci, brings it up per the NVMe spec and
//! identifies it; [`Controller::queue_pair`] creates an I/O queue pair that one thread owns and polls: no
//! interrupts, no locks on the I/O path. Buffers are [`DmaBuf`]s, passed by value into a submission and handed
//! back in its [`Completion`].
//!
//! Modules follow the spec's concepts: [`spec`] (registers and structures), [`status`] (status codes),
//! [`vfio`], [`dma`], [`mmio`], [`controller`], [`queue`], [`namespace`], [`pmr`] (the Persistent Memory
//! Region: [`Controller::pmr`]).

pub mod controller;
pub mod dma;
pub mod error;
pub mod health;
#[cfg(any(test, feature = "loopback"))]
pub mod loopback;
pub mod memlock;
pub mod mmio;
pub mod namespace;
pub mod pmr;
pub mod queue;
pub mod spec;
pub mod status;
pub mod vfio;

pub use controller::{Controller, ControllerInfo, ControllerOptions};
pub use dma::{DmaBuf, Iommu};
pub use error::{Error, IoError, Result, SubmitError, SubmitErrorKind};
pub use health::DeathCause;
pub use namespace::Namespace;
pub use pmr::{Pmr, PmrError, PmrSlice};
pub use queue::{Completion, QueueConfig, QueuePair, QueueStats};
pub use status::NvmeStatus;
