//! The nvkv benchmark harness.
//!
//! - [`conditions`]: when and on which CPU a result was measured.
//! - [`plan`]: what to measure (workloads, contenders, durations) and the result records.
//! - [`driver_perf`]: nvkv's own driver under a workload (like SPDK's perf).
//! - [`embed`]: libnvkv from C against the Rust handle on the same workloads, alternating.
//! - [`dlog_cost`]: a durable put through the durable log against the plain copy and msync it builds on.
//! - [`loopback`]: the driver's own cost per I/O against an in-memory controller.
//! - [`fio`]: the kernel NVMe path under the same workload, measured by fio.
//! - [`runner`]: runs a plan where the device is (in the guest or on bare metal), alternating contenders and
//!   rebinding the device between vfio-pci and the kernel driver in the same boot.
//! - [`report`]: medians, ratios, `report.json`, the plots and `report.html`.
//! - [`tables`]: the report's tables as cells, printed as text (`table.txt`) and as HTML.
//! - [`plots`]: the plots, drawn with `plotters` (SVG).
//! - [`progress`]: the main job's progress bar (indicatif), or plain lines when stderr is not a terminal.
//! - [`html`]: `report.html`, one page with the conditions, the tables and the plots.
//!
//! Nothing here asserts a timing: the harness measures and reports.

pub mod conditions;
pub mod dlog_cost;
pub mod driver_perf;
pub mod embed;
pub mod fio;
pub mod html;
pub mod kv;
pub mod loopback;
pub mod plan;
pub mod plots;
pub mod progress;
pub mod report;
pub mod runner;
pub mod tables;
