//! Salvage: what the segments of a slice hold, read without the superblock's or a checkpoint's help —
//! for a database that `open` refuses as unrecoverable. Every block is tried as a segment header; a
//! segment whose header and payload check out and that belongs to the database's volume contributes its
//! records; per key the record with the highest version wins (a tombstone wins as a deletion).
//!
//! It reads only. What it finds is the newest version of each key still on the device: a key deleted
//! long ago can come back when its tombstone's segment was cleaned while an older copy was not, and a
//! write whose segment was overwritten is gone. The `nvkv salvage` command copies the result into a new
//! database.

use std::collections::HashMap;

use crate::bdev::{BlockDevice, Completion, SubmitError};
use crate::error::Error;
use crate::format::{self, SegmentHeader, Superblock, VolumeId, SB_BLOCKS};

/// What salvaging one slice found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SalvageReport {
    /// Shard number.
    pub shard: u32,
    /// The volume salvaged: the superblock's, or (when none is readable) the one most segments carry.
    pub volume: Option<VolumeId>,
    /// Segments that checked out and belong to the volume.
    pub segments: u64,
    /// Records read from them.
    pub records: u64,
    /// Segments of other volumes (earlier formats) left alone.
    pub foreign_segments: u64,
    /// Keys found (the newest record of each is not a tombstone).
    pub keys: u64,
}

/// One key's newest record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Its timestamp and version.
    pub ts: u64,
    pub version: u64,
}

/// Blocks read at once while scanning.
const SCAN_BLOCKS: u64 = 256;

fn read<D: BlockDevice>(dev: &mut D, lba: u64, n: u64) -> Result<D::Buf, Error> {
    let bs = u64::from(dev.block_size());
    let buf = dev.alloc_buf((n * bs) as usize)?;
    let mut pending = Some(buf);
    let tag = 1;
    loop {
        let Some(b) = pending.take() else { break };
        match dev.submit_read(lba, n as u32, b, 0, tag) {
            Ok(()) => break,
            Err(SubmitError::Busy(b)) => {
                pending = b;
                dev.poll(16, drop);
            }
            Err(SubmitError::Invalid(_, why)) => return Err(Error::Config(why.into())),
            Err(SubmitError::Gone(_)) => return Err(Error::Io(crate::bdev::IoError::Gone)),
        }
    }
    // Every backend completes a read within a poll or a device timeout (the driver's stall timeout);
    // a bound of our own all the same.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if std::time::Instant::now() > deadline {
            return Err(Error::Io(crate::bdev::IoError::Device(libc::ETIMEDOUT)));
        }
        let mut got: Option<Completion<D::Buf>> = None;
        dev.poll(16, |c| {
            if c.tag == tag {
                got = Some(c);
            }
        });
        if let Some(c) = got {
            c.result?;
            return c
                .buf
                .ok_or(Error::Config("read completed without its buffer".into()));
        }
    }
}

/// Scans slice `shard` of `shard_count` on `dev` and returns the newest record of every key found.
pub fn salvage_slice<D: BlockDevice>(
    dev: &mut D,
    shard: u32,
    shard_count: u32,
) -> Result<(Vec<Salvaged>, SalvageReport), Error> {
    let bs = u64::from(dev.block_size());
    let slice_blocks = dev.num_blocks() / u64::from(shard_count.max(1));
    let base = u64::from(shard) * slice_blocks;
    let mut rep = SalvageReport {
        shard,
        ..Default::default()
    };
    // The volume: a readable superblock copy says it.
    let sbs = read(dev, base, SB_BLOCKS)?;
    rep.volume = (0..SB_BLOCKS as usize)
        .filter_map(|c| Superblock::decode(&sbs[c * bs as usize..(c + 1) * bs as usize]).ok())
        .max_by_key(|s| s.seq)
        .map(|s| s.volume);
    // Every segment that checks out, by volume: (key → newest) per volume.
    type Newest = HashMap<Vec<u8>, (u64, u64, Option<Vec<u8>>)>;
    let mut by_volume: HashMap<VolumeId, (u64, u64, Newest)> = HashMap::new();
    let mut lba = SB_BLOCKS;
    while lba < slice_blocks {
        let n = SCAN_BLOCKS.min(slice_blocks - lba);
        let chunk = read(dev, base + lba, n)?;
        let mut i = 0u64;
        while i < n {
            let at = (i * bs) as usize;
            let Ok((h, _)) = SegmentHeader::decode(&chunk[at..(n * bs) as usize], bs as u32) else {
                i += 1;
                continue;
            };
            if h.shard_id != shard || lba + i + u64::from(h.nblocks) > slice_blocks {
                i += 1;
                continue;
            }
            // The segment may run past this chunk: read it whole.
            let whole;
            let seg: &[u8] = if i + u64::from(h.nblocks) <= n {
                &chunk[at..at + (u64::from(h.nblocks) * bs) as usize]
            } else {
                whole = read(dev, base + lba + i, u64::from(h.nblocks))?;
                &whole[..(u64::from(h.nblocks) * bs) as usize]
            };
            let Ok(payload) = h.check_payload(seg) else {
                i += 1;
                continue;
            };
            let (segs, recs, newest) = by_volume.entry(h.volume).or_default();
            *segs += 1;
            for r in format::records(payload) {
                let Ok((_, rec)) = r else { break };
                *recs += 1;
                let cur = newest.get(rec.key).map(|x| x.0);
                if cur.is_none_or(|v| rec.version > v) {
                    let value = (!rec.tombstone).then(|| rec.value.to_vec());
                    newest.insert(rec.key.to_vec(), (rec.version, rec.ts, value));
                }
            }
            i += u64::from(h.nblocks);
        }
        lba += n;
    }
    let volume = rep.volume.or_else(|| {
        by_volume
            .iter()
            .max_by_key(|(_, (segs, _, _))| *segs)
            .map(|(v, _)| *v)
    });
    rep.volume = volume;
    let mut out = Vec::new();
    for (v, (segs, recs, newest)) in by_volume {
        if Some(v) != volume {
            rep.foreign_segments += segs;
            continue;
        }
        rep.segments = segs;
        rep.records = recs;
        for (key, (version, ts, value)) in newest {
            if let Some(value) = value {
                out.push(Salvaged {
                    key,
                    value,
                    ts,
                    version,
                });
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    rep.keys = out.len() as u64;
    Ok((out, rep))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::MemDisk;
    use crate::shard::{Shard, ShardConfig, WriteOpts};

    #[test]
    fn salvages_the_newest_records_when_every_checkpoint_is_gone() {
        let disk = MemDisk::new(512, 4096);
        let cfg = ShardConfig {
            buffer_bytes: 4096,
            ..Default::default()
        };
        let (mut s, _) = Shard::open(disk.bdev(), cfg.clone()).expect("open");
        for round in 0..3u32 {
            for i in 0..100u32 {
                let v = format!("value {i} round {round}");
                s.put(
                    format!("k{i:03}").as_bytes(),
                    v.as_bytes(),
                    WriteOpts::default(),
                )
                .expect("put");
            }
        }
        for i in 0..10u32 {
            s.delete(format!("k{i:03}").as_bytes(), WriteOpts::default())
                .expect("delete");
        }
        s.close().expect("close");
        // Destroy both superblocks: open refuses, salvage still finds everything.
        let mut img = disk.image();
        img[..1024].fill(0xab);
        let d = MemDisk::from_image(512, &img);
        assert!(Shard::open(d.bdev(), cfg).is_err());
        let (got, rep) = salvage_slice(&mut d.bdev(), 0, 1).expect("salvage");
        assert_eq!(rep.keys, 90, "{rep:?}");
        for g in &got {
            let i: u32 = std::str::from_utf8(&g.key[1..])
                .expect("utf8")
                .parse()
                .expect("n");
            assert!(i >= 10);
            assert_eq!(g.value, format!("value {i} round 2").into_bytes());
        }
        assert!(d.image() == img, "salvage wrote to the device");
    }
}
