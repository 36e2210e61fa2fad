//! The timer slack of the engine's own threads. Linux lets a sleeping thread's timer fire up to its
//! slack late (50 µs by default) so wake-ups can be batched. A shard sleeps for 20 µs at a time while
//! its segment writes and Flushes are in flight (completions are polled, there are no interrupts), so
//! the default slack made each of those sleeps about 70 µs and added most of it to every durable write:
//! on the file backend a durable put's p50 went from 317 to 176 µs with a slack of 1 ns
//! (`engine_bench 2000 durable`, see `docs/engine.md`). The only unsafe code of thread bring-up is here.

/// Makes the calling thread's timers fire when they are due (a slack of 1 ns). Returns false when the
/// kernel refused (the thread then keeps the default slack and only sleeps longer).
pub fn set_fine_for_current_thread() -> bool {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and changes only the calling thread's slack;
    // no memory is passed.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) == 0 }
}

/// The calling thread's timer slack in nanoseconds (None when the kernel does not say).
#[cfg(test)]
fn current_ns() -> Option<u64> {
    // SAFETY: PR_GET_TIMERSLACK takes no argument and returns the slack; no memory is passed.
    let r = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK) };
    u64::try_from(r).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_slack_is_set_for_the_calling_thread_only() {
        let other = std::thread::spawn(|| {
            assert!(super::set_fine_for_current_thread());
            super::current_ns()
        })
        .join()
        .expect("thread");
        assert_eq!(other, Some(1));
        assert_ne!(
            super::current_ns(),
            Some(1),
            "this thread kept its own slack"
        );
    }
}
