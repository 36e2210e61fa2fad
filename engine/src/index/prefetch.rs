//! Asking for a cache line ahead of its use: loops over the index that know their next nodes or slots
//! long before they read them (merges, the table's growth) overlap those reads this way.

/// Asks for the line holding `x`: a hint, which never faults and changes nothing.
#[inline]
pub fn line<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: prefetching is only a hint and never faults; `x` is a live reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((x as *const T).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}
