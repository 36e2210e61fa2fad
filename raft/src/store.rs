//! Opening a node's storage: its nvkv database (RAM disk, file or NVMe controller), the thread that
//! reaches it, and the log store and state machine on top.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nvkv::bdev::{MemDisk, NvmeFactory};
use nvkv::{Db, DurableLogDevice, Options};

use crate::db_thread::DbThread;
use crate::error::StoreError;
use crate::log_store::LogStore;
use crate::state_machine::StateMachine;

/// Where a node's database lives.
#[derive(Debug, Clone)]
pub enum StoreBackend {
    /// A RAM disk (tests; kept by the caller to reopen it).
    Memory(MemDisk),
    /// A file, created and extended to `size` when absent.
    File {
        /// The file.
        path: PathBuf,
        /// Its size when created.
        size: u64,
    },
    /// An NVMe controller bound to vfio-pci, through nvkv's userspace driver (namespace 1).
    Nvme {
        /// The controller's PCI address.
        pci: String,
    },
}

/// How to open a node's storage.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The database's device.
    pub backend: StoreBackend,
    /// The directory for snapshot files.
    pub snapshot_dir: PathBuf,
    /// nvkv's commit interval: the longest a durable write waits for its persistence cycle.
    pub commit_interval: Duration,
    /// nvkv's durable log (a PMR or persistent memory), which acknowledges durable writes in
    /// microseconds instead of a cycle.
    pub durable_log: DurableLogDevice,
    /// Bytes of the durable log (0: all of it).
    pub durable_log_bytes: usize,
    /// Pin the database's shard thread to a core.
    pub pin_threads: bool,
    /// Create an absent database file written full of zeros instead of sparse, so that the log's
    /// writes overwrite allocated blocks: a Flush then only empties the drive's cache, with no journal
    /// commit for the file system's block allocation (on ext4 over this project's virtio disk, a
    /// durable put's p50 went from about 390 to 290 µs). Costs one write of the whole file when it is
    /// created.
    pub zero_fill_new_file: bool,
}

impl StoreOptions {
    /// Defaults: 1 ms commit interval, no durable log, no pinning.
    pub fn new(backend: StoreBackend, snapshot_dir: impl Into<PathBuf>) -> StoreOptions {
        StoreOptions {
            backend,
            snapshot_dir: snapshot_dir.into(),
            commit_interval: Duration::from_millis(1),
            durable_log: DurableLogDevice::None,
            durable_log_bytes: 0,
            pin_threads: false,
            zero_fill_new_file: false,
        }
    }
}

/// A node's open storage: close it to see errors (dropping it closes it too).
#[derive(Debug)]
pub struct NodeStore {
    db: Option<Db>,
    thread: DbThread,
}

impl NodeStore {
    /// Opens (recovering, or formatting a blank device) the node's database, then reads the log's
    /// tail and the state machine's marker; finishes a snapshot install a crash interrupted.
    pub async fn open(
        opts: StoreOptions,
    ) -> Result<(NodeStore, LogStore, StateMachine), StoreError> {
        let mut o = match &opts.backend {
            StoreBackend::Memory(d) => Options::memory(d.clone()),
            StoreBackend::File { path, size } => Options::file(path.clone(), Some(*size)),
            StoreBackend::Nvme { .. } => Options::new(nvkv::Backend::Memory(MemDisk::new(4096, 1))),
        };
        // One shard: the state machine's marker is ordered after the writes it covers only within a
        // shard (see state_machine.rs).
        o.shards = 1;
        o.commit_interval = opts.commit_interval;
        o.pin_threads = opts.pin_threads;
        o.durable_log = opts.durable_log.clone();
        o.durable_log_bytes = opts.durable_log_bytes;
        let backend = opts.backend.clone();
        let zero_fill = opts.zero_fill_new_file;
        let db = tokio::task::spawn_blocking(move || -> Result<Db, StoreError> {
            if let (StoreBackend::File { path, size }, true) = (&backend, zero_fill) {
                create_zeroed(path, *size)?;
            }
            match backend {
                StoreBackend::Nvme { pci } => {
                    let f = NvmeFactory::open(&pci, 1)
                        .map_err(|e| StoreError::Config(format!("NVMe controller {pci}: {e}")))?;
                    Ok(Db::open_with(o, Arc::new(f))?)
                }
                _ => Ok(Db::open(o)?),
            }
        })
        .await
        .map_err(|e| StoreError::Config(format!("open task: {e}")))??;
        let thread = DbThread::start(db.handle())
            .map_err(|e| StoreError::io("start the database thread", e))?;
        let store = NodeStore {
            db: Some(db),
            thread: thread.clone(),
        };
        let log = LogStore::open(thread.clone()).await?;
        let sm = StateMachine::open(thread, &opts.snapshot_dir, log.last_index()).await?;
        Ok((store, log, sm))
    }

    /// The database handle (statistics, tests).
    pub fn handle(&self) -> nvkv::DbHandle {
        self.thread.handle().clone()
    }

    pub(crate) fn thread(&self) -> &DbThread {
        &self.thread
    }

    /// Stops the database thread and closes the database cleanly.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.thread.stop();
        match self.db.take() {
            Some(db) => db.close().map(|_| ()).map_err(StoreError::from),
            None => Ok(()),
        }
    }
}

impl Drop for NodeStore {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            self.thread.stop();
            // Dropped without close(): nobody to report a close error to, and the data is safe either
            // way (what was acknowledged durable is on the device).
            let _ = db.close();
        }
    }
}

/// Creates `path` holding `size` zero bytes, written and synced (nothing when it exists already). The
/// zeros go to `path` + `.zeroing` first, renamed into place once synced: a crash while filling leaves
/// no short database file behind, only the temporary one, which the next start writes afresh.
fn create_zeroed(path: &std::path::Path, size: u64) -> Result<(), StoreError> {
    use std::io::Write;
    let io =
        |what: &str, e: std::io::Error| StoreError::io(format!("{what} {}", path.display()), e);
    if path.exists() {
        return Ok(());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".zeroing");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io("creating a zero-filled", e))?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])
            .map_err(|e| io("zero-filling", e))?;
        left -= n as u64;
    }
    f.sync_all().map_err(|e| io("syncing", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io("renaming the zero-filled file to", e))?;
    crate::snapshot::sync_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crash while zero-filling leaves only the `.zeroing` file: the next start writes the database
    /// file whole; an existing database file is never touched.
    #[test]
    fn zero_filled_files_are_whole_or_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("node.db");
        let tmp = dir.path().join("node.db.zeroing");
        std::fs::write(&tmp, [0u8; 100]).expect("a short leftover of a crash");
        create_zeroed(&db, 3 << 20).expect("create");
        assert_eq!(std::fs::metadata(&db).expect("db").len(), 3 << 20);
        assert!(!tmp.exists(), "the temporary file was renamed into place");
        let bytes = std::fs::read(&db).expect("read");
        assert!(bytes.iter().all(|&b| b == 0));
        std::fs::write(&db, b"data").expect("overwrite");
        create_zeroed(&db, 3 << 20).expect("existing file");
        assert_eq!(std::fs::read(&db).expect("read"), b"data");
    }
}
