//! Request slots: one per command id, and the stack of free command ids (fixed arrays, no allocation on the
//! I/O path).

use crate::dma::DmaBuf;
use crate::error::IoError;

/// A slot's `req` when its command id is not in flight.
pub(super) const FREE: u16 = u16::MAX;

/// One command id's entry. `req` maps the cid to its request; a request's own fields live in the slot of its
/// first command id (whose `req` is its own index while that command is in flight).
#[derive(Debug)]
pub(super) struct Slot {
    /// The request (slot index) this cid's command belongs to; FREE when the cid is not in flight.
    pub(super) req: u16,
    /// Commands of the request not finished yet (in the request's own slot).
    pub(super) pending: u16,
    pub(super) error: Option<IoError>,
    pub(super) tag: u64,
    pub(super) buf: Option<DmaBuf>,
}

/// The free command ids, a stack in a fixed array: `ids[..n]`.
///
/// Invariant (what the unchecked accesses rely on): `n <= ids.len()`, and every id on the stack is below
/// `ids.len()` (the number of slots). An id is pushed only when it leaves flight, which happens once per pop
/// (its slot's `req` goes from a request to FREE in exactly one place per path, see `poll` and `recover`), so
/// the stack never holds more ids than there are.
#[derive(Debug)]
pub(super) struct FreeCids {
    ids: Box<[u16]>,
    n: usize,
}

impl FreeCids {
    pub(super) fn new(count: usize) -> Self {
        Self {
            ids: (0..count as u16).rev().collect(),
            n: count,
        }
    }

    #[inline(always)]
    pub(super) fn len(&self) -> usize {
        self.n
    }

    #[inline(always)]
    pub(super) fn last(&self) -> Option<u16> {
        // SAFETY: n <= ids.len() (the invariant), so n - 1 is in bounds when n > 0.
        (self.n > 0).then(|| unsafe { *self.ids.get_unchecked(self.n - 1) })
    }

    #[inline(always)]
    pub(super) fn pop(&mut self) -> Option<u16> {
        if self.n == 0 {
            return None;
        }
        self.n -= 1;
        // SAFETY: n < ids.len() after the decrement (n <= ids.len() before it).
        Some(unsafe { *self.ids.get_unchecked(self.n) })
    }

    #[inline(always)]
    pub(super) fn push(&mut self, cid: u16) {
        debug_assert!(self.n < self.ids.len() && (cid as usize) < self.ids.len());
        // SAFETY: a cid is pushed only when it leaves flight, once per earlier pop (the invariant), so fewer
        // than ids.len() ids are on the stack here: n < ids.len().
        unsafe { *self.ids.get_unchecked_mut(self.n) = cid };
        self.n += 1;
    }
}
