//! Whether a controller is alive: the reset generation and the dead state in one word, so that a queue pair
//! notices either with the one atomic load its poll already makes.
//!
//! A controller is declared dead when BAR0 reads all ones (the device is gone or its link is down), when
//! CSTS.CFS stays set after a reset, when a reset fails, or when VFIO asks for the device back (hot-removal).
//! From then on nothing is sent to it: every in-flight command fails with [`crate::IoError::ControllerDead`],
//! every new one with [`crate::SubmitErrorKind::ControllerDead`], and the buffers of failed commands are
//! quarantined (kept mapped and never reused while the controller lives), since a device that is not really
//! gone might still write them.

use crate::dma::DmaBuf;
use crate::spec::csts;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

/// The bit of the generation word that says the controller is dead (the rest counts resets).
pub(crate) const DEAD: u64 = 1 << 63;

/// Why a controller was declared dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathCause {
    /// BAR0 (CSTS) read all ones: the device is gone or unreachable.
    AllOnes,
    /// CSTS.CFS (Controller Fatal Status) was set and a reset did not bring the controller back.
    Fatal,
    /// A controller reset failed (the controller did not disable or become ready within CAP.TO, or an admin
    /// command of the bring-up failed).
    ResetFailed,
    /// The device was removed: VFIO's request notification asked for it back (hot-remove, unbind).
    Removed,
}

impl std::fmt::Display for DeathCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeathCause::AllOnes => "BAR0 reads all ones",
            DeathCause::Fatal => "CSTS.CFS set and a reset did not clear it",
            DeathCause::ResetFailed => "a controller reset failed",
            DeathCause::Removed => "the device was removed",
        })
    }
}

impl DeathCause {
    fn code(self) -> u8 {
        self as u8 + 1
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => DeathCause::AllOnes,
            2 => DeathCause::Fatal,
            3 => DeathCause::ResetFailed,
            4 => DeathCause::Removed,
            _ => return None,
        })
    }
}

/// What a CSTS value says about the controller's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Csts {
    Ok,
    /// CFS set: a reset may bring it back.
    Fatal,
    /// All ones: nothing is there.
    Gone,
}

pub(crate) fn csts_health(v: u32) -> Csts {
    if v == u32::MAX {
        Csts::Gone
    } else if v & csts::CFS != 0 {
        Csts::Fatal
    } else {
        Csts::Ok
    }
}

/// The generation word, the cause of death, and the quarantine of one controller.
#[derive(Debug, Default)]
pub(crate) struct Health {
    generation: AtomicU64,
    cause: AtomicU8,
    /// Buffers the device may still write (commands failed without its answer, rings of queues it may still
    /// use): never dropped (which would hand them back to the DMA pool) while the controller lives.
    quarantine: Mutex<Vec<DmaBuf>>,
}

impl Health {
    pub(crate) fn generation(&self) -> &AtomicU64 {
        &self.generation
    }

    /// Resets so far (the dead bit masked off).
    pub(crate) fn resets(&self) -> u64 {
        self.generation.load(Ordering::Acquire) & !DEAD
    }

    pub(crate) fn dead(&self) -> Option<DeathCause> {
        if self.generation.load(Ordering::Acquire) & DEAD == 0 {
            return None;
        }
        DeathCause::from_code(self.cause.load(Ordering::Acquire)).or(Some(DeathCause::AllOnes))
    }

    /// Declares the controller dead (the first cause given is kept). Returns true the first time.
    pub(crate) fn mark_dead(&self, cause: DeathCause) -> bool {
        let _ = self
            .cause
            .compare_exchange(0, cause.code(), Ordering::AcqRel, Ordering::Acquire);
        self.generation.fetch_or(DEAD, Ordering::AcqRel) & DEAD == 0
    }

    /// A reset succeeded: queue pairs re-create their queues at their next poll.
    pub(crate) fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn quarantine(&self, buf: DmaBuf) {
        self.quarantine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(buf);
    }

    pub(crate) fn quarantined(&self) -> usize {
        self.quarantine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_bit_and_first_cause_win() {
        let h = Health::default();
        assert_eq!(h.dead(), None);
        h.bump();
        assert_eq!(h.resets(), 1);
        assert!(h.mark_dead(DeathCause::Removed));
        assert!(!h.mark_dead(DeathCause::AllOnes));
        assert_eq!(h.dead(), Some(DeathCause::Removed));
        assert_eq!(h.resets(), 1);
        assert_eq!(csts_health(u32::MAX), Csts::Gone);
        assert_eq!(csts_health(csts::CFS | csts::RDY), Csts::Fatal);
        assert_eq!(csts_health(csts::RDY), Csts::Ok);
    }
}
