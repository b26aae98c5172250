//! Clearing a run of live entries, the inner loop of every small `unmap`.
//!
//! An IOMMU may walk the table while it is cleared, so each entry must go in one
//! single-copy-atomic store: never a `memset`, whose narrower or unordered
//! stores could leave an entry with its valid bit set and half its address gone.
//! Eight bytes are atomic everywhere this crate runs. Sixteen are too, for
//! naturally aligned cacheable stores, on x86-64 processors that report AVX
//! (Intel SDM Vol. 3A §9.1.1, MOVAPS/MOVDQA; AMD APM Vol. 2 §7.3.2): there two
//! entries go per store, which halves the stores of a long run.

/// Entries looked at per step: enough independent loads and stores for the
/// CPU's ports; each count goes to its own sum, so no add waits for another.
const UNROLL: usize = 8;

/// Whether aligned 16-byte stores are single-copy atomic here.
pub(crate) fn pair_stores_are_atomic() -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        /// CPUID.01H:ECX bit 28: AVX.
        const CPUID_1_ECX_AVX: u32 = 1 << 28;
        let leaf_1 = core::arch::x86_64::__cpuid(1);
        leaf_1.ecx & CPUID_1_ECX_AVX != 0
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        false
    }
}

/// Zeroes entries `lo..=hi` of the table at `t` and returns how many of them
/// were non-zero. `pairs`: [`pair_stores_are_atomic`]; `valid`: the format's
/// [`crate::Format::VALID`] bit, which makes the count a sum of that bit.
///
/// # Safety
/// `t` points to a table page with more than `hi` 8-byte-aligned entries, which
/// this caller alone writes.
#[inline(always)]
pub(crate) unsafe fn clear_counting(
    t: *mut u64,
    lo: usize,
    hi: usize,
    pairs: bool,
    valid: Option<u64>,
) -> u64 {
    let end = hi + 1;
    let mut present = [0u64; UNROLL];
    let mut valid_sums = [0u64; 2];
    let mut i = lo;
    if pairs {
        while i < end && !(t.wrapping_add(i) as usize).is_multiple_of(16) {
            // SAFETY: `i <= hi`.
            present[0] += unsafe { count_and_clear_one(t.add(i)) };
            i += 1;
        }
    }
    while i + UNROLL <= end {
        if let Some(bit) = valid {
            // Plain loads, which the compiler may widen (the bits are summed,
            // not the entries compared), before the stores to the same entries;
            // two sums of the bit itself, shifted down once at the end.
            // SAFETY: `i + UNROLL - 1 <= hi`.
            let ptes: [u64; UNROLL] = core::array::from_fn(|k| unsafe { t.add(i + k).read() });
            for pair in ptes.chunks_exact(2) {
                valid_sums[0] += pair[0] & bit;
                valid_sums[1] += pair[1] & bit;
            }
        } else {
            // SAFETY: as above.
            let ptes: [u64; UNROLL] =
                core::array::from_fn(|k| unsafe { t.add(i + k).read_volatile() });
            for (sum, pte) in present.iter_mut().zip(ptes) {
                *sum += u64::from(pte != 0);
            }
        }
        if pairs {
            for k in (0..UNROLL).step_by(2) {
                // SAFETY: `t + i` is 16-byte aligned (the loop above) and
                // `UNROLL` is even, so every pair is; `pairs` says the CPU
                // writes the pair at once.
                unsafe { zero_pair(t.add(i + k)) };
            }
        } else {
            for k in 0..UNROLL {
                // SAFETY: as the loads.
                unsafe { t.add(i + k).write_volatile(0) };
            }
        }
        i += UNROLL;
    }
    while i < end {
        // SAFETY: `i <= hi`.
        present[0] += unsafe { count_and_clear_one(t.add(i)) };
        i += 1;
    }
    // At most 512 entries: the sums of a valid bit below bit 54 cannot overflow.
    let valid_count = valid.map_or(0, |bit| {
        (valid_sums[0] + valid_sums[1]) >> bit.trailing_zeros()
    });
    present.iter().sum::<u64>() + valid_count
}

/// Zeroes the entry at `p`; 1 if it was live.
///
/// # Safety
/// `p` is an aligned entry the caller alone writes.
#[inline(always)]
unsafe fn count_and_clear_one(p: *mut u64) -> u64 {
    // SAFETY: the caller's contract; aligned 64-bit accesses.
    unsafe {
        let live = u64::from(p.read_volatile() != 0);
        p.write_volatile(0);
        live
    }
}

/// Zeroes the 16-byte-aligned entry pair at `p` with one store.
///
/// # Safety
/// `p` is 16-byte aligned, both entries are the caller's to write, and
/// [`pair_stores_are_atomic`] holds.
#[inline(always)]
unsafe fn zero_pair(p: *mut u64) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use core::arch::x86_64::{__m128i, _mm_setzero_si128};
        // SAFETY: the caller's contract; a volatile 16-byte vector store is one
        // MOVAPS/MOVDQA, the instructions the atomicity guarantee names.
        unsafe { p.cast::<__m128i>().write_volatile(_mm_setzero_si128()) };
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        // Unreachable where `pair_stores_are_atomic` is false; stay correct.
        // SAFETY: the caller's contract.
        unsafe {
            p.write_volatile(0);
            p.add(1).write_volatile(0);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[repr(C, align(4096))]
    struct Page([u64; 512]);

    #[test]
    fn every_entry_of_the_run_is_cleared_and_the_live_ones_counted() {
        for (pairs, valid) in [
            (false, None),
            (false, Some(1)),
            (pair_stores_are_atomic(), None),
            (pair_stores_are_atomic(), Some(1)),
        ] {
            for (lo, hi) in [
                (0, 0),
                (0, 255),
                (1, 254),
                (3, 3),
                (5, 20),
                (0, 511),
                (7, 8),
            ] {
                let mut page = Page([0; 512]);
                for (i, pte) in page.0.iter_mut().enumerate() {
                    // Every third entry a hole.
                    *pte = if i % 3 == 1 { 0 } else { (i as u64) << 12 | 3 };
                }
                let before = page.0;
                // SAFETY: a whole page of our own.
                let counted = unsafe { clear_counting(page.0.as_mut_ptr(), lo, hi, pairs, valid) };
                let live = before[lo..=hi].iter().filter(|&&p| p != 0).count() as u64;
                assert_eq!(counted, live, "{lo}..={hi}, pairs {pairs}, valid {valid:?}");
                let expected: Vec<u64> = (0..512)
                    .map(|i| if (lo..=hi).contains(&i) { 0 } else { before[i] })
                    .collect();
                assert_eq!(page.0.to_vec(), expected, "{lo}..={hi}, pairs {pairs}");
            }
        }
    }
}
