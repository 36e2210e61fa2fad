//! The snapshot file: the state machine's live keys and values, streamed from a range scan, with the
//! snapshot's metadata in front and a checksum at the end. Built and read a record at a time, never
//! whole in memory.
//!
//! ```text
//! magic "NVKVSNP1" | u32 LE meta length | meta (bincode SnapshotMeta)
//! { u8 1 | u32 LE key length | u32 LE value length | key | value }*
//! u8 0 | u64 LE record count | u32 LE crc32c of every byte before it
//! ```

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::StoreError;
use crate::log_store::{decode, encode};
use crate::types::SnapshotMeta;

/// A key and its value.
pub(crate) type Record = (Vec<u8>, Vec<u8>);

const MAGIC: &[u8; 8] = b"NVKVSNP1";
/// Largest metadata section accepted (a membership of many nodes is still far below).
const MAX_META: u32 = 1 << 20;

/// Writes a snapshot file record by record; `finish` makes it durable under its final name.
pub(crate) struct SnapshotWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    crc: u32,
    count: u64,
}

impl SnapshotWriter {
    /// Starts `path` (written as `path.tmp`, renamed at the end).
    pub(crate) fn create(path: &Path, meta: &SnapshotMeta) -> Result<SnapshotWriter, StoreError> {
        let tmp = path.with_extension("tmp");
        let f = File::create(&tmp)
            .map_err(|e| StoreError::io(format!("create {}", tmp.display()), e))?;
        let mut w = SnapshotWriter {
            out: BufWriter::new(f),
            tmp,
            path: path.to_path_buf(),
            crc: 0,
            count: 0,
        };
        let m = encode("snapshot meta", meta)?;
        w.put(MAGIC)?;
        w.put(&(m.len() as u32).to_le_bytes())?;
        w.put(&m)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), StoreError> {
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.out
            .write_all(b)
            .map_err(|e| StoreError::io(format!("write {}", self.tmp.display()), e))
    }

    /// Appends one key and value.
    pub(crate) fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.put(&[1])?;
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(value)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer, syncs the file, renames it into place and syncs the directory.
    pub(crate) fn finish(mut self) -> Result<PathBuf, StoreError> {
        self.put(&[0])?;
        let count = self.count;
        self.put(&count.to_le_bytes())?;
        let crc = self.crc;
        let io = |what: &str, p: &Path, e| StoreError::io(format!("{what} {}", p.display()), e);
        self.out
            .write_all(&crc.to_le_bytes())
            .map_err(|e| io("write", &self.tmp, e))?;
        let f = self
            .out
            .into_inner()
            .map_err(|e| io("write", &self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| io("sync", &self.tmp, e))?;
        fs::rename(&self.tmp, &self.path).map_err(|e| io("rename", &self.tmp, e))?;
        sync_dir(&self.path)?;
        Ok(self.path)
    }
}

/// Syncs the directory holding `path`, so a rename in it survives a crash.
pub(crate) fn sync_dir(path: &Path) -> Result<(), StoreError> {
    // A bare file name's parent is the empty path: the current directory.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("sync directory {}", dir.display()), e))
}

/// Reads a snapshot file record by record, checking its framing and (at the end) its checksum.
pub(crate) struct SnapshotReader<R: Read> {
    input: BufReader<R>,
    name: String,
    crc: u32,
    count: u64,
    done: bool,
    /// The metadata at the front.
    pub(crate) meta: SnapshotMeta,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads the header of `input` (named `name` in errors).
    pub(crate) fn new(input: R, name: &str) -> Result<SnapshotReader<R>, StoreError> {
        let mut r = SnapshotReader {
            input: BufReader::new(input),
            name: name.to_string(),
            crc: 0,
            count: 0,
            done: false,
            meta: SnapshotMeta::default(),
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic)?;
        if &magic != MAGIC {
            return Err(r.bad("not an nvkv-raft snapshot (magic)"));
        }
        let len = r.u32()?;
        if len > MAX_META {
            return Err(r.bad(format!("metadata of {len} bytes")));
        }
        let mut m = vec![0u8; len as usize];
        r.take(&mut m)?;
        r.meta = decode("snapshot meta", &m)?;
        Ok(r)
    }

    fn bad(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Snapshot {
            file: self.name.clone(),
            detail: detail.into(),
        }
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), StoreError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => self.bad("truncated"),
            _ => StoreError::io(format!("read snapshot {}", self.name), e),
        })?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// The next key and value; None at the (checked) end.
    pub(crate) fn next_record(&mut self) -> Result<Option<Record>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.take(&mut tag)?;
        match tag[0] {
            1 => {
                let kl = self.u32()? as usize;
                let vl = self.u32()? as usize;
                if kl > nvkv::MAX_KEY_LEN || vl > nvkv::MAX_VALUE_LEN {
                    return Err(self.bad(format!("record of {kl} + {vl} bytes")));
                }
                let mut k = vec![0u8; kl];
                self.take(&mut k)?;
                let mut v = vec![0u8; vl];
                self.take(&mut v)?;
                self.count += 1;
                Ok(Some((k, v)))
            }
            0 => {
                let mut c = [0u8; 8];
                self.take(&mut c)?;
                let expected_crc = self.crc;
                let mut b = [0u8; 4];
                self.input
                    .read_exact(&mut b)
                    .map_err(|_| self.bad("truncated"))?;
                if u32::from_le_bytes(b) != expected_crc {
                    return Err(self.bad("checksum mismatch"));
                }
                if u64::from_le_bytes(c) != self.count {
                    return Err(self.bad("record count mismatch"));
                }
                let mut extra = [0u8; 1];
                if self
                    .input
                    .read(&mut extra)
                    .map_err(|e| StoreError::io("read snapshot", e))?
                    != 0
                {
                    return Err(self.bad("bytes after the end"));
                }
                self.done = true;
                Ok(None)
            }
            t => Err(self.bad(format!("record tag {t}"))),
        }
    }

    /// Reads to the end, checking everything; the number of records.
    pub(crate) fn verify(mut self) -> Result<u64, StoreError> {
        while self.next_record()?.is_some() {}
        Ok(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> PathBuf {
        let meta = SnapshotMeta {
            snapshot_id: "1-2-3".into(),
            ..Default::default()
        };
        let mut w = SnapshotWriter::create(&dir.join("s.bin"), &meta).expect("create");
        for i in 0..100u32 {
            w.record(format!("key{i}").as_bytes(), &vec![i as u8; i as usize])
                .expect("record");
        }
        w.finish().expect("finish")
    }

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = sample(d.path());
        let mut r = SnapshotReader::new(File::open(&p).expect("open"), "s").expect("header");
        assert_eq!(r.meta.snapshot_id, "1-2-3");
        let mut n = 0;
        while let Some((k, v)) = r.next_record().expect("record") {
            assert_eq!(k, format!("key{n}").into_bytes());
            assert_eq!(v, vec![n as u8; n]);
            n += 1;
        }
        assert_eq!(n, 100);
        assert!(!d.path().join("s.tmp").exists());
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let good = fs::read(sample(d.path())).expect("read");
        for i in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = good.clone();
                bad[i] ^= bit;
                let r = SnapshotReader::new(&bad[..], "s").and_then(|r| r.verify());
                assert!(r.is_err(), "flip of bit {bit:#x} at byte {i} accepted");
            }
        }
        for len in 0..good.len() {
            let r = SnapshotReader::new(&good[..len], "s").and_then(|r| r.verify());
            assert!(r.is_err(), "truncation to {len} bytes accepted");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(SnapshotReader::new(&longer[..], "s")
            .and_then(|r| r.verify())
            .is_err());
        assert_eq!(
            SnapshotReader::new(&good[..], "s")
                .and_then(|r| r.verify())
                .expect("good"),
            100
        );
    }
}
