//! How to open a database: the backend and the settings.

use super::*;

/// Which device the database lives on.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A RAM disk (kept by the caller, so it can be reopened).
    Memory(MemDisk),
    /// A file or block device, opened with O_DIRECT when possible; `size` extends a smaller file.
    File {
        /// Path.
        path: PathBuf,
        /// Size to extend a regular file to.
        size: Option<u64>,
    },
}

/// How to open a database.
#[derive(Debug, Clone)]
pub struct Options {
    /// The device.
    pub backend: Backend,
    /// Number of shards (threads); the device is split in as many slices. Fixed at format time.
    pub shards: usize,
    /// Write-buffer size per shard (also the largest segment), bytes.
    pub buffer_bytes: usize,
    /// Longest a write stays buffered before its cycle starts (1 ms .. minutes).
    pub commit_interval: Duration,
    /// Write buffers' worth of log at least between index checkpoints (a checkpoint also waits until the
    /// log since the last one is as large as the checkpoint itself).
    pub checkpoint_every: u32,
    /// Conflict strategy.
    pub conflict: Conflict,
    /// Format a blank device.
    pub create: bool,
    /// GC runs while a slice's free fraction is below this.
    pub gc_free_low: f64,
    /// Pin shard threads to cores (falls back to unpinned when that fails).
    pub pin_threads: bool,
    /// Request queue capacity per shard.
    pub queue_capacity: usize,
    /// Spin instead of sleeping when idle (lowest latency, burns a core per shard).
    pub busy_poll: bool,
    /// Bytes of recently written segments each shard keeps in memory for reads (0: none).
    pub cache_bytes: usize,
    /// Segments each shard writes at once (at least 1; each holds a write buffer of `buffer_bytes` while
    /// its write is in flight). More absorb longer device stalls before writers wait.
    pub max_inflight_cycles: usize,
    /// Where durable writes are acknowledged from: a persistent-memory log (microseconds) or the
    /// persistence cycle (a segment write and a Flush). A database opened with a durable log must be
    /// reopened with it after a crash (its records may hold acknowledged writes); after a clean close
    /// it opens without it.
    pub durable_log: DurableLogDevice,
    /// Bytes of the durable-log device each shard uses (0: an equal share of the whole device).
    pub durable_log_bytes: usize,
}

impl Options {
    /// Defaults on the given backend: 1 shard, 256 KiB buffers, 5 ms commit interval.
    pub fn new(backend: Backend) -> Self {
        Options {
            backend,
            shards: 1,
            buffer_bytes: 256 << 10,
            commit_interval: Duration::from_millis(5),
            checkpoint_every: 64,
            conflict: Conflict::LastWriterWins,
            create: true,
            gc_free_low: 0.25,
            pin_threads: true,
            queue_capacity: 4096,
            busy_poll: false,
            cache_bytes: crate::shard::DEFAULT_CACHE_BYTES,
            max_inflight_cycles: crate::shard::DEFAULT_INFLIGHT_CYCLES,
            durable_log: DurableLogDevice::None,
            durable_log_bytes: 0,
        }
    }

    /// On a RAM disk.
    pub fn memory(disk: MemDisk) -> Self {
        Self::new(Backend::Memory(disk))
    }

    /// On a file or block device.
    pub fn file(path: impl Into<PathBuf>, size: Option<u64>) -> Self {
        Self::new(Backend::File {
            path: path.into(),
            size,
        })
    }

    /// The settings of shard `id`.
    pub fn shard_config(&self, id: usize) -> ShardConfig {
        ShardConfig {
            shard_id: id as u32,
            shard_count: self.shards as u32,
            buffer_bytes: self.buffer_bytes,
            commit_interval: self
                .commit_interval
                .clamp(Duration::from_millis(1), Duration::from_secs(3600)),
            checkpoint_every: self.checkpoint_every.max(1),
            conflict: self.conflict.clone(),
            create: self.create,
            gc_free_low: self.gc_free_low,
            cache_bytes: self.cache_bytes,
            max_inflight_cycles: self.max_inflight_cycles.max(1),
        }
    }
}
