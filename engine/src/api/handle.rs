//! The thread-safe handle: routes each operation to its shard and waits for the answer.

use super::*;

impl DbHandle {
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inner.shards.len()
    }

    /// Whether the database was closed (every call then fails with [`Error::Closed`]).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    pub(super) fn send(&self, shard: usize, op: Op, id: u64, inbox: &Inbox) -> Result<(), Error> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let link = self
            .inner
            .shards
            .get(shard)
            .ok_or(Error::Config("no such shard".into()))?;
        if link.dead.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let mut req = Request {
            op,
            id,
            reply: inbox.clone(),
        };
        let mut spins = 0u32;
        loop {
            match link.queue.push(req) {
                Ok(()) => break,
                Err(r) => {
                    // Full: back-pressure. Let the shard drain.
                    req = r;
                    link.bell.ring();
                    spins += 1;
                    if spins > 64 {
                        std::thread::yield_now();
                    }
                    if self.inner.closed.load(Ordering::SeqCst) {
                        return Err(Error::Closed);
                    }
                }
            }
        }
        link.bell.ring();
        Ok(())
    }

    /// Starts a batch: submit many requests, then wait once.
    pub fn batch(&self) -> Batch {
        Batch {
            handle: self.clone(),
            inbox: inbox(),
            sent: 0,
        }
    }

    /// Starts a set of asynchronous requests (answers taken without blocking; see [`AsyncRequests`]).
    pub fn async_requests(&self) -> AsyncRequests {
        AsyncRequests {
            handle: self.clone(),
            inbox: Arc::new(Mailbox::new()),
        }
    }

    fn call(&self, shard: usize, op: Op) -> Answer {
        let mut b = self.batch();
        b.submit(shard, op)?;
        b.wait().pop().unwrap_or(Err(Error::Closed))
    }

    fn call_key(&self, key: &[u8], op: Op) -> Answer {
        self.call(shard_of(key, self.shards()), op)
    }

    /// The value under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.get_meta(key)?.map(|(v, _)| v))
    }

    /// The value under `key` with its version and timestamp.
    pub fn get_meta(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Meta)>, Error> {
        match self.call_key(key, Op::Get(key.to_vec()))? {
            Reply::Value(v) => Ok(v),
            _ => Err(Error::Closed),
        }
    }

    fn write(&self, key: &[u8], op: Op) -> Result<WriteResult, Error> {
        match self.call_key(key, op)? {
            Reply::Write(w) => Ok(w),
            _ => Err(Error::Closed),
        }
    }

    /// Stores a value (acknowledged once buffered).
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<WriteResult, Error> {
        self.put_opts(key, value, WriteOpts::default())
    }

    /// Stores a value with options (timestamp, durable acknowledgement).
    pub fn put_opts(
        &self,
        key: &[u8],
        value: &[u8],
        opts: WriteOpts,
    ) -> Result<WriteResult, Error> {
        self.write(key, Op::Put(key.to_vec(), value.to_vec(), opts))
    }

    /// Deletes a key.
    pub fn delete(&self, key: &[u8]) -> Result<WriteResult, Error> {
        self.delete_opts(key, WriteOpts::default())
    }

    /// Deletes a key with options.
    pub fn delete_opts(&self, key: &[u8], opts: WriteOpts) -> Result<WriteResult, Error> {
        self.write(key, Op::Delete(key.to_vec(), opts))
    }

    /// Compare-and-swap on the version (None: absent); `new` None deletes.
    pub fn cas(
        &self,
        key: &[u8],
        expected: Option<u64>,
        new: Option<&[u8]>,
    ) -> Result<WriteResult, Error> {
        self.write(
            key,
            Op::Cas(
                key.to_vec(),
                expected,
                new.map(<[u8]>::to_vec),
                WriteOpts::default(),
            ),
        )
    }

    /// Adds `delta` to the integer under `key`; returns the new value.
    pub fn incr(&self, key: &[u8], delta: i64) -> Result<i64, Error> {
        match self.call_key(key, Op::Incr(key.to_vec(), delta, WriteOpts::default()))? {
            Reply::Incr(n, _) => Ok(n),
            _ => Err(Error::Closed),
        }
    }

    /// Up to `limit` pairs with `start <= key < end`, in key order, merged across shards.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<KvPairs, Error> {
        let mut b = self.batch();
        for s in 0..self.shards() {
            b.submit(s, Op::Scan(start.to_vec(), end.map(<[u8]>::to_vec), limit))?;
        }
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for a in b.wait() {
            match a? {
                Reply::Scan(v) => out.extend(v),
                _ => return Err(Error::Closed),
            }
        }
        // Each shard's stream is ordered; the stable sort merges the runs.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.truncate(limit);
        Ok(out)
    }

    /// Persists everything written so far on every shard, and waits.
    pub fn sync(&self) -> Result<(), Error> {
        let mut b = self.batch();
        for s in 0..self.shards() {
            b.submit(s, Op::Sync)?;
        }
        for a in b.wait() {
            a?;
        }
        Ok(())
    }

    /// Statistics of every shard.
    pub fn stats(&self) -> Result<Vec<ShardStats>, Error> {
        let mut b = self.batch();
        for s in 0..self.shards() {
            b.submit(s, Op::Stats)?;
        }
        let mut out = Vec::new();
        for (i, a) in b.wait().into_iter().enumerate() {
            match a? {
                Reply::Stats(mut st) => {
                    st.queue_depth = self.inner.shards[i].depth.load(Ordering::Relaxed);
                    out.push(*st)
                }
                _ => return Err(Error::Closed),
            }
        }
        Ok(out)
    }

    /// Runs `f` on shard `shard`'s thread.
    pub fn run_on<R: Send + 'static>(
        &self,
        shard: usize,
        f: impl FnOnce(&mut dyn LocalCtx) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let boxed: LocalFn = Box::new(move |ctx| Box::new(f(ctx)) as Box<dyn Any + Send>);
        match self.call(shard, Op::Run(boxed))? {
            Reply::Any(a) => a.downcast::<R>().map(|b| *b).map_err(|_| Error::Closed),
            _ => Err(Error::Closed),
        }
    }
}
