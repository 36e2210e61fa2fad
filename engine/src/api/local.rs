//! The shard-local interface: what a closure run on a shard's own thread can call.

use super::*;

/// Operations a closure can run on a shard's own thread, without a hop per call.
pub trait LocalCtx {
    /// Shard number.
    fn shard_id(&self) -> u32;
    /// See [`Shard::get`].
    fn get(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, Meta)>, Error>;
    /// See [`Shard::put`]; `durable` is not waited for here (use `sync`).
    fn put(&mut self, key: &[u8], value: &[u8], opts: WriteOpts) -> Result<WriteResult, Error>;
    /// See [`Shard::delete`].
    fn delete(&mut self, key: &[u8], opts: WriteOpts) -> Result<WriteResult, Error>;
    /// See [`Shard::cas`].
    fn cas(
        &mut self,
        key: &[u8],
        expected: Option<u64>,
        new: Option<&[u8]>,
        opts: WriteOpts,
    ) -> Result<WriteResult, Error>;
    /// See [`Shard::incr`].
    fn incr(
        &mut self,
        key: &[u8],
        delta: i64,
        opts: WriteOpts,
    ) -> Result<(i64, WriteResult), Error>;
    /// See [`Shard::scan`] (this shard's keys only).
    fn scan(&mut self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KvPairs, Error>;
    /// See [`Shard::sync`].
    fn sync(&mut self) -> Result<(), Error>;
    /// See [`Shard::stats`].
    fn stats(&self) -> ShardStats;
    /// See [`Shard::tick`]: a closure that runs long calls this between operations, as the shard thread
    /// does between requests, so completions are reaped and persistence cycles start on time.
    fn tick(&mut self) -> Result<bool, Error>;
    /// See [`Shard::wait_durable`] (polls the device until generation `gen` is durable).
    fn wait_durable(&mut self, gen: u64) -> Result<(), Error>;
    /// See [`Shard::wait_write`] (returns once write `w` is durable: by its durable-log record when
    /// it has one, else by its persistence cycle).
    fn wait_write(&mut self, w: &WriteResult) -> Result<(), Error>;
}

impl<D: BlockDevice> LocalCtx for Shard<D> {
    fn shard_id(&self) -> u32 {
        self.id()
    }
    fn get(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, Meta)>, Error> {
        Shard::get(self, key)
    }
    fn put(&mut self, key: &[u8], value: &[u8], opts: WriteOpts) -> Result<WriteResult, Error> {
        Shard::put(self, key, value, opts)
    }
    fn delete(&mut self, key: &[u8], opts: WriteOpts) -> Result<WriteResult, Error> {
        Shard::delete(self, key, opts)
    }
    fn cas(
        &mut self,
        key: &[u8],
        expected: Option<u64>,
        new: Option<&[u8]>,
        opts: WriteOpts,
    ) -> Result<WriteResult, Error> {
        Shard::cas(self, key, expected, new, opts)
    }
    fn incr(
        &mut self,
        key: &[u8],
        delta: i64,
        opts: WriteOpts,
    ) -> Result<(i64, WriteResult), Error> {
        Shard::incr(self, key, delta, opts)
    }
    fn scan(&mut self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KvPairs, Error> {
        Shard::scan(self, start, end, limit)
    }
    fn sync(&mut self) -> Result<(), Error> {
        Shard::sync(self)
    }
    fn stats(&self) -> ShardStats {
        Shard::stats(self)
    }
    fn tick(&mut self) -> Result<bool, Error> {
        Shard::tick(self)
    }
    fn wait_durable(&mut self, gen: u64) -> Result<(), Error> {
        Shard::wait_durable(self, gen)
    }
    fn wait_write(&mut self, w: &WriteResult) -> Result<(), Error> {
        Shard::wait_write(self, w)
    }
}
