//! Overlap detection in O(n log n), so hostile tables with many entries stay cheap.

use alloc::vec::Vec;

/// Whether two inclusive spans `(group, first, last)` of the same group intersect.
/// Spans with `first > last` are empty and never overlap.
pub(crate) fn any_overlap(mut spans: Vec<(u64, u64, u64)>) -> bool {
    spans.retain(|&(_, first, last)| first <= last);
    spans.sort_unstable();
    // Sorted by (group, first): if any two spans of a group meet, then so do two
    // neighbours, because a span between them starts no later than the second.
    spans
        .windows(2)
        .any(|w| w[0].0 == w[1].0 && w[1].1 <= w[0].2)
}

/// The inclusive last address of `[base, base + size)`, `None` for an empty range.
pub(crate) fn last(base: u64, size: u64) -> Option<u64> {
    size.checked_sub(1).and_then(|s| base.checked_add(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert!(!any_overlap(vec![]));
        assert!(!any_overlap(vec![(0, 0, 9), (0, 10, 19), (1, 0, 19)]));
        assert!(any_overlap(vec![(0, 0, 100), (0, 30, 40), (0, 10, 20)]));
        assert!(any_overlap(vec![(2, 5, 5), (2, 5, 5)]));
        assert!(!any_overlap(vec![(0, 5, 4), (0, 0, 9)]));
        assert_eq!(last(0x1000, 0x1000), Some(0x1fff));
        assert_eq!(last(0x1000, 0), None);
        assert_eq!(last(u64::MAX, 2), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::test_cases()))]

        /// Agrees with the obvious pairwise check.
        #[test]
        fn matches_pairwise(spans in proptest::collection::vec((0..3u64, 0..64u64, 0..64u64), 0..12)) {
            let pairwise = spans.iter().enumerate().any(|(i, a)| {
                a.1 <= a.2 && spans[i + 1..].iter().any(|b| b.1 <= b.2 && a.0 == b.0 && a.1 <= b.2 && b.1 <= a.2)
            });
            prop_assert_eq!(any_overlap(spans), pairwise);
        }
    }
}
