//! `libnvkv_fio.so`: an external fio ioengine on nvkv's userspace NVMe driver, in the manner of SPDK's fio plugin,
//! so that fio itself measures nvkv's driver against the kernel path with the same job files.
//!
//! ```text
//! fio --thread=1 --ioengine=external:/path/to/libnvkv_fio.so --filename=0000.00.10.0/1 \
//!     --rw=randread --bs=4k --iodepth=32 --time_based --runtime=10 --name=nvkv
//! ```
//!
//! - `filename` names a PCI address (with `.` for `:`) and a namespace: see [`target`] for the forms.
//! - Jobs must run as threads (`thread=1`): a controller is opened once per fio process (one VFIO container) and
//!   shared by the jobs; each job gets its own [`nvme_driver::QueuePair`], polled by the job's thread.
//! - `queue` places the command in the submission ring, `commit` rings the SQ doorbell once for the batch,
//!   `getevents` polls the completion ring; a full queue pair answers `FIO_Q_BUSY`.
//! - Data moves without a copy: each io_u gets its own DMA buffer (`Controller::alloc`) in `io_u_init`, and
//!   `post_init` points the io_u at it (after copying what fio pre-filled).
//! - read, write, trim (Dataset Management, Deallocate) and sync/datasync (Flush). Errors set `io_u->error`
//!   (EIO for an NVMe error status, ETIMEDOUT, EINVAL) and fio prints the NVMe status through `errdetails`.
//!
//! The engine needs fio's headers (feature `fio`, see `build.rs`); without the feature this crate builds only the
//! parts below that need none.

pub mod errors;
pub mod target;

#[cfg(feature = "fio")]
mod engine;
#[cfg(feature = "fio")]
#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/fio_sys.rs"));
}
