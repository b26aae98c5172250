//! Circular queue indices (SMMUv3 §3.5.1 queue PROD/CONS: an index of
//! LOG2SIZE bits plus a wrap bit just above it).

/// A PROD or CONS value of a queue of `1 << log2size` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueIndex {
    log2size: u32,
    /// Index and wrap bit, without any flag bits.
    value: u32,
}

impl QueueIndex {
    pub fn new(log2size: u32) -> Self {
        debug_assert!(log2size < 31);
        Self { log2size, value: 0 }
    }

    /// Takes the index and wrap bits from a register value (ignoring the ERR
    /// and overflow flags above them).
    pub fn from_register(log2size: u32, register: u32) -> Self {
        let mask = (2u32 << log2size) - 1;
        Self {
            log2size,
            value: register & mask,
        }
    }

    /// The value to write to the PROD/CONS register.
    pub fn register(self) -> u32 {
        self.value
    }

    /// Slot number in the queue.
    pub fn slot(self) -> usize {
        (self.value & ((1 << self.log2size) - 1)) as usize
    }

    pub fn wrap(self) -> bool {
        self.value & (1 << self.log2size) != 0
    }

    /// The next index: the slot advances and the wrap bit flips past the end.
    pub fn next(self) -> Self {
        let mask = (2u32 << self.log2size) - 1;
        Self {
            log2size: self.log2size,
            value: (self.value + 1) & mask,
        }
    }

    pub fn capacity(self) -> u32 {
        1 << self.log2size
    }
}

/// Entries between `cons` and `prod` (§3.5.1: equal slots with equal wrap =
/// empty, with different wrap = full).
pub fn occupied(prod: QueueIndex, cons: QueueIndex) -> u32 {
    let size = prod.capacity();
    let (p, c) = (prod.slot() as u32, cons.slot() as u32);
    if prod.wrap() == cons.wrap() {
        p - c
    } else {
        size - c + p
    }
}

pub fn is_empty(prod: QueueIndex, cons: QueueIndex) -> bool {
    prod == cons
}

pub fn is_full(prod: QueueIndex, cons: QueueIndex) -> bool {
    prod.slot() == cons.slot() && prod.wrap() != cons.wrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wrap_flips_at_the_end() {
        let mut index = QueueIndex::new(2);
        for _ in 0..4 {
            index = index.next();
        }
        assert_eq!(index.slot(), 0);
        assert!(index.wrap());
        assert_eq!(index.register(), 0b100);
        for _ in 0..4 {
            index = index.next();
        }
        assert_eq!(index.register(), 0);
    }

    #[test]
    fn full_and_empty() {
        let cons = QueueIndex::new(2);
        let mut prod = cons;
        assert!(is_empty(prod, cons));
        for _ in 0..4 {
            prod = prod.next();
        }
        assert!(is_full(prod, cons));
        assert_eq!(occupied(prod, cons), 4);
    }

    #[test]
    fn register_flags_are_ignored() {
        // CMDQ_CONS with ERR = CERROR_ILL and index 0xb in a 2^19 queue.
        let cons = QueueIndex::from_register(19, 0x0100_000b);
        assert_eq!(cons.slot(), 0xb);
        assert!(!cons.wrap());
        // EVENTQ_PROD with OVFLG (bit 31).
        assert_eq!(QueueIndex::from_register(3, 0x8000_0009).register(), 9);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Against a model of unbounded counters: occupancy is the difference,
        /// full and empty agree.
        #[test]
        fn matches_unbounded_counters(log2 in 1u32..6, consumed in 0u32..200, extra in 0u32..64) {
            let size = 1u32 << log2;
            let extra = extra % (size + 1);
            let produced = consumed + extra;
            let mut prod = QueueIndex::new(log2);
            let mut cons = QueueIndex::new(log2);
            for _ in 0..produced { prod = prod.next(); }
            for _ in 0..consumed { cons = cons.next(); }
            prop_assert_eq!(occupied(prod, cons), extra);
            prop_assert_eq!(is_empty(prod, cons), extra == 0);
            prop_assert_eq!(is_full(prod, cons), extra == size);
        }
    }
}
