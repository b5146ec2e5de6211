//! Software prefetch: ask the CPU to start loading memory that an event a few
//! places ahead will read, so that its cache miss overlaps the work on the events
//! before it.
//!
//! At a million customers a partition's state is far larger than the CPU's caches,
//! and each event's first touch of its customer — the held record, the cache and
//! index entries by handle — is a miss to main memory (`perf annotate`: a third of
//! decoding a record was its first byte). The events of a chunk are known before
//! they are applied, so those addresses are too. A hint never faults and changes
//! no result; on targets without one it is nothing.

/// Hint that `p`'s cache line will be read soon.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it reads nothing and never faults, whatever
    // the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Hint the element `i` of `v`, if there is one.
#[inline(always)]
pub fn prefetch_at<T>(v: &[T], i: usize) {
    if let Some(x) = v.get(i) {
        prefetch(x);
    }
}

/// Hint the cache lines of `bytes`, at most `lines` of them.
#[inline(always)]
pub fn prefetch_bytes(bytes: &[u8], lines: usize) {
    let p = bytes.as_ptr();
    // From the line the slice starts in, whatever its alignment.
    let skew = p as usize % 64;
    let span = (skew + bytes.len()).div_ceil(64).min(lines);
    for k in 0..span {
        prefetch(p.wrapping_sub(skew).wrapping_add(k * 64));
    }
}
