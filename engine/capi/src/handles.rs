//! Handles are tokens, not pointers: a handle's value encodes a slot of a process-wide table and the
//! slot's generation at the time it was handed out. The library never dereferences a handle, so a closed
//! handle, a copy of one, a handle of another kind or an arbitrary value is detected, not undefined
//! behaviour: closing bumps the slot's generation (`NVKV_CLOSED` afterwards), a value naming no slot or
//! an object of another kind is `NVKV_BAD_HANDLE`. A slot is reused with a new generation; the check could
//! only be fooled by a copy kept while the same slot is reused 2^32 times (2^16 on 32-bit targets).

use std::sync::{Arc, Mutex, RwLock};

use crate::error::CapiError;
use crate::ops::{AsyncState, DbObj, IterState};

/// What a slot holds.
#[derive(Clone)]
pub enum Object {
    /// An open database.
    Db(Arc<DbObj>),
    /// A scan iterator.
    Iter(Arc<Mutex<IterState>>),
    /// An asynchronous context.
    Async(Arc<Mutex<AsyncState>>),
}

struct Slot {
    gen: usize,
    obj: Option<Object>,
}

struct Table {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

static TABLE: RwLock<Table> = RwLock::new(Table {
    slots: Vec::new(),
    free: Vec::new(),
});

const IDX_BITS: u32 = usize::BITS / 2;
const IDX_MASK: usize = (1 << IDX_BITS) - 1;
const GEN_MASK: usize = usize::MAX >> IDX_BITS;

fn token(idx: usize, gen: usize) -> usize {
    ((gen & GEN_MASK) << IDX_BITS) | (idx + 1)
}

fn split(token: usize) -> Option<(usize, usize)> {
    let i = token & IDX_MASK;
    // Index 0 is never handed out, so small integers and NULL-ish values are rejected.
    // Generation 0 is never handed out either (see `remove`), so 1, 2, ... are foreign values too.
    let gen = token >> IDX_BITS;
    (i != 0 && gen != 0).then(|| (i - 1, gen))
}

// No code panics while holding the lock, but a poisoned lock must not turn every later call into a panic.
fn read() -> std::sync::RwLockReadGuard<'static, Table> {
    TABLE.read().unwrap_or_else(|e| e.into_inner())
}

fn write() -> std::sync::RwLockWriteGuard<'static, Table> {
    TABLE.write().unwrap_or_else(|e| e.into_inner())
}

/// Stores `obj`; returns its handle value (never 0).
pub fn insert(obj: Object) -> Result<usize, CapiError> {
    let mut t = write();
    let idx = match t.free.pop() {
        Some(i) => i,
        None => {
            if t.slots.len() >= IDX_MASK - 1 {
                return Err(CapiError::Invalid("too many open handles".into()));
            }
            t.slots.push(Slot { gen: 1, obj: None });
            t.slots.len() - 1
        }
    };
    let slot = &mut t.slots[idx];
    slot.obj = Some(obj);
    Ok(token(idx, slot.gen))
}

/// The object behind `handle`. `kind` names the expected kind in messages.
pub fn get(handle: usize, kind: &'static str) -> Result<Object, CapiError> {
    let (idx, gen) = split(handle).ok_or(CapiError::BadHandle(kind))?;
    let t = read();
    let slot = t.slots.get(idx).ok_or(CapiError::BadHandle(kind))?;
    if slot.gen & GEN_MASK != gen {
        // An older generation of a slot that exists: a handle that was closed. A newer one was never issued.
        return Err(if gen < slot.gen & GEN_MASK {
            CapiError::Closed(kind)
        } else {
            CapiError::BadHandle(kind)
        });
    }
    slot.obj.clone().ok_or(CapiError::Closed(kind))
}

/// Takes the object out of the table: the handle (and every copy) is dead from here on.
pub fn remove(handle: usize, kind: &'static str) -> Result<Object, CapiError> {
    let (idx, gen) = split(handle).ok_or(CapiError::BadHandle(kind))?;
    let mut t = write();
    let slot = t.slots.get_mut(idx).ok_or(CapiError::BadHandle(kind))?;
    if slot.gen & GEN_MASK != gen {
        return Err(if gen < slot.gen & GEN_MASK {
            CapiError::Closed(kind)
        } else {
            CapiError::BadHandle(kind)
        });
    }
    let obj = slot.obj.take().ok_or(CapiError::Closed(kind))?;
    slot.gen = match slot.gen.wrapping_add(1) & GEN_MASK {
        0 => 1,
        g => g,
    };
    t.free.push(idx);
    Ok(obj)
}

/// The database behind `handle`.
pub fn db(handle: usize) -> Result<Arc<DbObj>, CapiError> {
    match get(handle, "database")? {
        Object::Db(d) => Ok(d),
        _ => Err(CapiError::BadHandle("database")),
    }
}

/// The iterator behind `handle`.
pub fn iter(handle: usize) -> Result<Arc<Mutex<IterState>>, CapiError> {
    match get(handle, "iterator")? {
        Object::Iter(i) => Ok(i),
        _ => Err(CapiError::BadHandle("iterator")),
    }
}

/// The asynchronous context behind `handle`.
pub fn async_ctx(handle: usize) -> Result<Arc<Mutex<AsyncState>>, CapiError> {
    match get(handle, "async context")? {
        Object::Async(a) => Ok(a),
        _ => Err(CapiError::BadHandle("async context")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_index_zero() {
        assert_eq!(split(token(5, 7)), Some((5, 7)));
        assert_eq!(split(0), None);
        assert_eq!(split(1 << IDX_BITS), None);
        assert_eq!(split(1), None, "generation 0 is never issued");
    }
}
