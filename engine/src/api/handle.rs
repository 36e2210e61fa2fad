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

    /// Queues `req` on shard `shard`, waiting while the queue is full. A request no shard will take is
    /// turned away (see [`Request::turn_away`]) and the reason returned.
    pub(super) fn push(&self, shard: usize, req: Request) -> Result<(), Error> {
        let refuse = |e: Error, req: Request| {
            req.turn_away(e.clone());
            Err(e)
        };
        if self.inner.closed.load(Ordering::SeqCst) {
            return refuse(Error::Closed, req);
        }
        let Some(link) = self.inner.shards.get(shard) else {
            return refuse(Error::Config("no such shard".into()), req);
        };
        if link.dead.load(Ordering::SeqCst) {
            return refuse(Error::Closed, req);
        }
        let mut req = req;
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
                    if self.inner.closed.load(Ordering::SeqCst) || link.dead.load(Ordering::SeqCst)
                    {
                        return refuse(Error::Closed, req);
                    }
                }
            }
        }
        link.bell.ring();
        // The shard thread raises `dead` before its last look at the queue: if it is up now, that look
        // may have missed this request, so refuse whatever is left (ours or another client's).
        if link.dead.load(Ordering::SeqCst) {
            link.refuse_queued();
        }
        Ok(())
    }

    pub(super) fn send(&self, shard: usize, op: Op, id: u64, inbox: &Inbox) -> Result<(), Error> {
        let req = Request::Mail {
            op,
            reply: MailReply::new(inbox, id),
        };
        self.push(shard, req)
    }

    /// Starts a batch: submit many requests, then wait once.
    pub fn batch(&self) -> Batch {
        Batch {
            handle: self.clone(),
            inbox: inbox(),
            sent: 0,
            received: 0,
        }
    }

    /// Starts a set of asynchronous requests (answers taken without blocking; see [`AsyncRequests`]).
    pub fn async_requests(&self) -> AsyncRequests {
        AsyncRequests {
            handle: self.clone(),
            inbox: Arc::new(Mailbox::new()),
        }
    }

    fn call(&self, shard: usize, op: Op) -> OpAnswer {
        let mut b = self.batch();
        b.submit(shard, op)?;
        b.wait().pop().unwrap_or(Err(Error::Closed))
    }

    /// The value under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.get_meta(key)?.map(|(v, _)| v))
    }

    /// The value under `key` with its version and timestamp.
    pub fn get_meta(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Meta)>, Error> {
        let mut v = Vec::new();
        Ok(self.get_into(key, &mut v)?.map(|m| (v, m)))
    }

    /// The value under `key` into `out` (replaced; the shard writes into `out` itself, so a reused
    /// `out` reads without allocating); its metadata, None when absent.
    pub fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<Option<Meta>, Error> {
        match self.call_point(Kind::Get, key, &[], WriteOpts::default(), Some(out))? {
            Done::Value(m) => Ok(m),
            _ => Err(Error::Closed),
        }
    }

    fn write(
        &self,
        kind: Kind,
        key: &[u8],
        value: &[u8],
        o: WriteOpts,
    ) -> Result<WriteResult, Error> {
        match self.call_point(kind, key, value, o, None)? {
            Done::Write(w) => Ok(w),
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
        self.write(Kind::Put, key, value, opts)
    }

    /// Deletes a key.
    pub fn delete(&self, key: &[u8]) -> Result<WriteResult, Error> {
        self.delete_opts(key, WriteOpts::default())
    }

    /// Deletes a key with options.
    pub fn delete_opts(&self, key: &[u8], opts: WriteOpts) -> Result<WriteResult, Error> {
        self.write(Kind::Delete, key, &[], opts)
    }

    /// Compare-and-swap on the version (None: absent); `new` None deletes.
    pub fn cas(
        &self,
        key: &[u8],
        expected: Option<u64>,
        new: Option<&[u8]>,
    ) -> Result<WriteResult, Error> {
        self.cas_opts(key, expected, new, WriteOpts::default())
    }

    /// Compare-and-swap with options.
    pub fn cas_opts(
        &self,
        key: &[u8],
        expected: Option<u64>,
        new: Option<&[u8]>,
        opts: WriteOpts,
    ) -> Result<WriteResult, Error> {
        let (kind, value) = Kind::cas(expected, new);
        self.write(kind, key, value, opts)
    }

    /// Adds `delta` to the integer under `key`; returns the new value.
    pub fn incr(&self, key: &[u8], delta: i64) -> Result<i64, Error> {
        self.incr_opts(key, delta, WriteOpts::default())
            .map(|(n, _)| n)
    }

    /// Increment with options; the new value and the write.
    pub fn incr_opts(
        &self,
        key: &[u8],
        delta: i64,
        opts: WriteOpts,
    ) -> Result<(i64, WriteResult), Error> {
        match self.call_point(Kind::Incr(delta), key, &[], opts, None)? {
            Done::Incr(n, w) => Ok((n, w)),
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
                    st.queue_depth = self.inner.shards[i].depth.0.load(Ordering::Relaxed);
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
