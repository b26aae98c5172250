//! Ring arithmetic of the hardware's command and event queues.
//!
//! A producer and a consumer index chase each other around a power-of-two
//! ring; equal indexes must mean one thing. The hardware here uses one of two
//! conventions:
//!
//! - [`SlotRing`]: one slot always stays empty, so equal means empty; the
//!   registers hold byte offsets (VT-d invalidation queue, §6.5.2 and
//!   §11.4.10; AMD-Vi command buffer and event log, §3.4.9-3.4.10).
//! - [`WrapIndex`]: every slot is usable and a wrap bit above the index tells
//!   full from empty (SMMUv3 §3.5.1 PROD/CONS).

/// A pointer register held a value that cannot be a ring position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadPointer(pub u64);

/// A ring of `2^log2_slots` slots of `slot_bytes` each, with one slot kept
/// empty and byte-offset pointer registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRing {
    log2_slots: u32,
    slot_bytes: u32,
}

impl SlotRing {
    /// A ring of `2^log2_slots` slots of `slot_bytes` bytes each.
    pub const fn new(log2_slots: u32, slot_bytes: u32) -> Self {
        Self {
            log2_slots,
            slot_bytes,
        }
    }

    /// The ring that fills `bytes` with slots of `slot_bytes` (both powers of two).
    pub const fn filling(bytes: u32, slot_bytes: u32) -> Self {
        Self::new((bytes / slot_bytes).trailing_zeros(), slot_bytes)
    }

    /// How many slots it has.
    pub const fn slots(&self) -> u32 {
        1 << self.log2_slots
    }

    /// The size of one slot.
    pub const fn slot_bytes(&self) -> u32 {
        self.slot_bytes
    }

    /// The size of the whole ring.
    pub const fn bytes(&self) -> u32 {
        self.slots() * self.slot_bytes
    }

    /// The slot a pointer register value names. A value equal to the ring size
    /// is accepted as 0: QEMU 10.0.2's AMD-Vi writes COMMAND_HEAD before
    /// wrapping it (docs/QEMU.md §2).
    pub fn index(&self, pointer: u64) -> Result<u32, BadPointer> {
        if !pointer.is_multiple_of(u64::from(self.slot_bytes)) || pointer > u64::from(self.bytes())
        {
            return Err(BadPointer(pointer));
        }
        Ok((pointer / u64::from(self.slot_bytes)) as u32 % self.slots())
    }

    /// The pointer register value (byte offset) of slot `index`.
    pub fn pointer(&self, index: u32) -> u64 {
        u64::from(index % self.slots()) * u64::from(self.slot_bytes)
    }

    /// The slot after `index`, wrapping.
    pub fn next(&self, index: u32) -> u32 {
        (index + 1) % self.slots()
    }

    /// Slots written by the producer and not yet consumed.
    pub fn used(&self, head: u32, tail: u32) -> u32 {
        (tail + self.slots() - head) % self.slots()
    }

    /// Slots the producer may still write (one always stays empty).
    pub fn free(&self, head: u32, tail: u32) -> u32 {
        self.slots() - 1 - self.used(head, tail)
    }
}

/// A PROD or CONS value of a queue of `1 << log2size` entries: the index and,
/// just above it, the wrap bit (SMMUv3 §3.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrapIndex {
    log2size: u32,
    /// Index and wrap bit, without any flag bits.
    value: u32,
}

impl WrapIndex {
    /// Index 0, wrap bit clear, of a queue of `1 << log2size` entries.
    pub fn new(log2size: u32) -> Self {
        debug_assert!(log2size < 31);
        Self { log2size, value: 0 }
    }

    /// Takes the index and wrap bits from a register value (ignoring flag bits
    /// above them, such as SMMUv3's ERR and overflow flags).
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

    /// The wrap bit.
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

    /// How many entries the queue holds.
    pub fn capacity(self) -> u32 {
        1 << self.log2size
    }

    /// Entries between `cons` and `self` as the producer (equal slots with
    /// equal wrap = empty, with different wrap = full).
    pub fn occupied(self, cons: WrapIndex) -> u32 {
        let size = self.capacity();
        let (p, c) = (self.slot() as u32, cons.slot() as u32);
        if self.wrap() == cons.wrap() {
            p - c
        } else {
            size - c + p
        }
    }

    /// As the producer: nothing is waiting for `cons`.
    pub fn is_empty(self, cons: WrapIndex) -> bool {
        self == cons
    }

    /// As the producer: every slot is waiting for `cons`.
    pub fn is_full(self, cons: WrapIndex) -> bool {
        self.slot() == cons.slot() && self.wrap() != cons.wrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slot_ring_pointers_wrap_and_one_slot_stays_free() {
        let ring = SlotRing::new(8, 16);
        assert_eq!((ring.slots(), ring.bytes()), (256, 4096));
        assert_eq!(SlotRing::filling(4096, 32).slots(), 128);
        assert_eq!(ring.next(255), 0);
        assert_eq!(ring.used(250, 4), 10);
        assert_eq!(ring.free(250, 4), 245);
        assert_eq!(ring.free(0, 255), 0);
        assert_eq!(ring.free(7, 7), 255);
        assert_eq!(ring.index(0x20), Ok(2));
        assert_eq!(ring.index(4096), Ok(0));
        assert_eq!(ring.index(4112), Err(BadPointer(4112)));
        assert_eq!(ring.index(0x21), Err(BadPointer(0x21)));
        assert_eq!(ring.pointer(256), 0);
    }

    #[test]
    fn wrap_flips_at_the_end() {
        let mut index = WrapIndex::new(2);
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
    fn wrap_index_register_flags_are_ignored() {
        // SMMUv3 CMDQ_CONS with ERR = CERROR_ILL and index 0xb in a 2^19 queue.
        let cons = WrapIndex::from_register(19, 0x0100_000b);
        assert_eq!(cons.slot(), 0xb);
        assert!(!cons.wrap());
        // EVENTQ_PROD with OVFLG (bit 31).
        assert_eq!(WrapIndex::from_register(3, 0x8000_0009).register(), 9);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Both conventions against unbounded counters: occupancy is the
        /// difference, full and empty agree.
        #[test]
        fn both_rings_match_unbounded_counters(log2 in 1u32..6, consumed in 0u32..200, extra in 0u32..64) {
            let size = 1u32 << log2;
            let wrap_extra = extra % (size + 1);
            let mut prod = WrapIndex::new(log2);
            let mut cons = WrapIndex::new(log2);
            for _ in 0..consumed + wrap_extra { prod = prod.next(); }
            for _ in 0..consumed { cons = cons.next(); }
            prop_assert_eq!(prod.occupied(cons), wrap_extra);
            prop_assert_eq!(prod.is_empty(cons), wrap_extra == 0);
            prop_assert_eq!(prod.is_full(cons), wrap_extra == size);

            let ring = SlotRing::new(log2, 16);
            let slot_extra = extra % size;
            let (head, tail) = (consumed % size, (consumed + slot_extra) % size);
            prop_assert_eq!(ring.used(head, tail), slot_extra);
            prop_assert_eq!(ring.free(head, tail), size - 1 - slot_extra);
            prop_assert_eq!(ring.index(ring.pointer(tail)), Ok(tail));
        }
    }
}
