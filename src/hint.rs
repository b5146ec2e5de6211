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
    let (first, n) = lines_of(bytes.as_ptr() as usize, bytes.len(), lines);
    let p = bytes.as_ptr().wrapping_sub(bytes.as_ptr() as usize - first);
    for k in 0..n {
        prefetch(p.wrapping_add(k * 64));
    }
}

/// The first cache line (its address) and how many lines `len` bytes at `addr`
/// span, at most `max`.
#[inline(always)]
fn lines_of(addr: usize, len: usize, max: usize) -> (usize, usize) {
    let first = addr & !63;
    (first, (addr + len - first).div_ceil(64).min(max))
}

#[cfg(test)]
mod tests {
    use super::lines_of;

    #[test]
    fn the_lines_hinted_cover_the_bytes_from_the_first_to_the_last() {
        for addr in [0usize, 1, 63, 64, 100, 4095] {
            for len in [1usize, 2, 63, 64, 65, 260, 1000] {
                let (first, n) = lines_of(addr, len, usize::MAX);
                assert!(first <= addr && addr - first < 64, "{addr} {len}");
                let end = first + 64 * n;
                assert!(end >= addr + len, "the last byte is hinted: {addr} {len}");
                assert!(end - (addr + len) < 64, "no line past the last byte");
            }
        }
        assert_eq!(
            lines_of(60, 10, 8),
            (0, 2),
            "two lines when it straddles one"
        );
        assert_eq!(lines_of(0, 1000, 8).1, 8, "at most `max`");
        assert_eq!(lines_of(64, 0, 8).1, 0, "an empty slice, nothing");
    }
}
