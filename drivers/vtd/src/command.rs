//! Queued-invalidation descriptors (VT-d 3.4 §6.5.2) and the queue's ring
//! arithmetic (§6.5.2, §11.4.10).
//!
//! Descriptors are 128 bits in legacy mode and 256 bits when IQA.DW = 1
//! (needed for the PASID-based descriptors in scalable mode); the upper half
//! of a 256-bit descriptor is zero for every type issued here.

use core::mem::size_of;

use iommu_kit::{SharedRing, SlotRing};

use crate::regs::{self, Granularity};

/// One invalidation descriptor, stored at its widest (§6.5.2: 256-bit format).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor(pub [u64; 4]);
const _: () = assert!(size_of::<Descriptor>() == 32);

/// §6.5.2 descriptor type codes (bits 3:0; 11:9 are zero for these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescriptorType {
    /// §6.5.2.1 context-cache invalidate.
    ContextCache = 1,
    /// §6.5.2.3 IOTLB invalidate.
    Iotlb = 2,
    /// §6.5.2.7 interrupt entry cache invalidate.
    InterruptEntryCache = 4,
    /// §6.5.2.8 invalidation wait.
    Wait = 5,
    /// §6.5.2.4 PASID-based IOTLB invalidate.
    PasidIotlb = 6,
    /// §6.5.2.2 PASID-cache invalidate.
    PasidCache = 7,
}

/// §6.5.2.4 PASID-based-IOTLB granularity (G, 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasidGranularity {
    /// Every mapping of the PASID in the domain (non-globals).
    Pasid = 2,
    /// The pages named by address and mask.
    Page = 3,
}

/// §6.5.2.3 IOTLB invalidate: DR (7) and DW (6) drain reads and writes.
const IOTLB_DRAIN: u64 = (1 << 7) | (1 << 6);
/// §6.5.2.8 wait: IF (4), SW (5), FN (6).
const WAIT_STATUS_WRITE: u64 = 1 << 5;
const WAIT_FENCE: u64 = 1 << 6;

impl Descriptor {
    /// The descriptor's type (bits 3:0); `None` for one this driver never writes.
    pub fn kind(&self) -> Option<DescriptorType> {
        Some(match self.0[0] & 0xF {
            1 => DescriptorType::ContextCache,
            2 => DescriptorType::Iotlb,
            4 => DescriptorType::InterruptEntryCache,
            5 => DescriptorType::Wait,
            6 => DescriptorType::PasidIotlb,
            7 => DescriptorType::PasidCache,
            _ => return None,
        })
    }

    /// §6.5.2.1 Context-cache invalidate: G (5:4), DID (31:16), SID (47:32), FM (49:48) = 0.
    pub fn context_cache(granularity: Granularity, did: u16, sid: u16) -> Self {
        Self([
            DescriptorType::ContextCache as u64
                | ((granularity as u64) << 4)
                | (u64::from(did) << 16)
                | (u64::from(sid) << 32),
            0,
            0,
            0,
        ])
    }

    /// §6.5.2.3 IOTLB invalidate: G (5:4), DR/DW, DID (31:16); ADDR (127:76),
    /// IH (70), AM (69:64). `address`/`mask` only matter for page granularity.
    pub fn iotlb(
        granularity: Granularity,
        did: u16,
        address: u64,
        mask: u8,
        leaf_only: bool,
    ) -> Self {
        let second = if granularity == Granularity::Selective {
            crate::regs::invalidate_address(address, mask, leaf_only)
        } else {
            0
        };
        Self([
            DescriptorType::Iotlb as u64
                | ((granularity as u64) << 4)
                | IOTLB_DRAIN
                | (u64::from(did) << 16),
            second,
            0,
            0,
        ])
    }

    /// §6.5.2.4 PASID-based-IOTLB invalidate: G (5:4), DID (31:16), PASID (51:32);
    /// ADDR (127:76), IH (70), AM (69:64).
    pub fn pasid_iotlb(
        granularity: PasidGranularity,
        did: u16,
        pasid: u32,
        address: u64,
        mask: u8,
        leaf_only: bool,
    ) -> Self {
        let second = if granularity == PasidGranularity::Page {
            crate::regs::invalidate_address(address, mask, leaf_only)
        } else {
            0
        };
        Self([
            DescriptorType::PasidIotlb as u64
                | ((granularity as u64) << 4)
                | (u64::from(did) << 16)
                | (u64::from(pasid & 0xF_FFFF) << 32),
            second,
            0,
            0,
        ])
    }

    /// §6.5.2.2 PASID-cache invalidate, PASID-selective (G = 1): DID (31:16), PASID (51:32).
    pub fn pasid_cache(did: u16, pasid: u32) -> Self {
        Self([
            DescriptorType::PasidCache as u64
                | (1 << 4)
                | (u64::from(did) << 16)
                | (u64::from(pasid & 0xF_FFFF) << 32),
            0,
            0,
            0,
        ])
    }

    /// §6.5.2.7 Interrupt-entry-cache invalidate: G (4) = 1 index-selective,
    /// IM (31:27) = 0, IIDX (47:32); `None` = global.
    pub fn interrupt_entry_cache(index: Option<u16>) -> Self {
        let low = match index {
            Some(index) => (1 << 4) | (u64::from(index) << 32),
            None => 0,
        };
        Self([DescriptorType::InterruptEntryCache as u64 | low, 0, 0, 0])
    }

    /// §6.5.2.8 Invalidation wait with status write (SW) and fence (FN), never
    /// IF: QEMU aborts on SW|IF. Status data (63:32), status address (127:66).
    pub fn wait(status_address: u64, data: u32) -> Self {
        Self([
            DescriptorType::Wait as u64 | WAIT_STATUS_WRITE | WAIT_FENCE | (u64::from(data) << 32),
            status_address & !0x3,
            0,
            0,
        ])
    }
}

/// The invalidation queue's ring (§6.5.2): the slot arithmetic is the kit's
/// [`SlotRing`] (one slot kept empty, byte-offset registers), the tail is a
/// [`SharedRing`] of positions that several CPUs claim and publish; the
/// hardware owns the head.
///
/// Every wait descriptor writes its own status word: the one of its slot in
/// the status page, with [`Ring::status_token`] of its position, so each
/// submitter polls only its own word and no later wait can overwrite it.
#[derive(Debug)]
pub struct Ring {
    geometry: SlotRing,
    shared: SharedRing,
}

impl Ring {
    /// A ring of `bytes` (one or more 4 KiB pages) of 128-bit slots, or of
    /// 256-bit ones when `wide` (IQA.DW = 1).
    pub fn new(bytes: usize, wide: bool) -> Self {
        let slot_bytes = if wide { 32 } else { 16 };
        let geometry = SlotRing::filling(bytes as u32, slot_bytes);
        Self {
            geometry,
            shared: SharedRing::one_slot_free(geometry.slots()),
        }
    }

    /// 16 bytes a slot, or 32 with 256-bit descriptors.
    pub fn slot_bytes(&self) -> usize {
        self.geometry.slot_bytes() as usize
    }

    /// How many descriptors the queue holds.
    pub fn slots(&self) -> usize {
        self.geometry.slots() as usize
    }

    /// 256-bit descriptors (IQA.DW, needed in scalable mode).
    pub fn is_wide(&self) -> bool {
        self.geometry.slot_bytes() == 32
    }

    /// The positions' shared state: claims, publication, the head as observed.
    pub fn shared(&self) -> &SharedRing {
        &self.shared
    }

    /// The slot of position `position`.
    pub fn slot(&self, position: u64) -> usize {
        self.shared.slot(position)
    }

    /// The IQT value that hands the hardware every position before `end`
    /// (§11.4.10.2: QT is a slot index shifted by 4, or by 5 with 256-bit
    /// descriptors).
    pub fn tail_register(&self, end: u64) -> u64 {
        self.geometry.pointer(self.shared.index(end) as u32)
    }

    /// The slot an IQH value names (`None`: no slot boundary, §11.4.10.1).
    pub fn head_slot(&self, head_register: u64) -> Option<usize> {
        let head = self
            .geometry
            .index(head_register & regs::IQH_QH_MASK)
            .ok()?;
        Some(head as usize)
    }

    /// Byte offset in the status page of the status word of the wait
    /// descriptor at `position`: one 32-bit word a slot.
    pub fn status_offset(&self, position: u64) -> usize {
        self.slot(position) * size_of::<u32>()
    }

    /// The status data the wait descriptor at `position` writes: never the
    /// zero a fresh page holds, nor what the slot's previous wait wrote.
    pub fn status_token(position: u64) -> u32 {
        (position as u32).wrapping_add(1)
    }

    /// Whether the status word `status` of the wait at `position`'s slot
    /// says that wait completed: it holds its token, or a later lap's (a
    /// waiter that looked late finds its slot already reused; the tokens
    /// grow with the position, compared across their wrap).
    pub fn status_says_done(status: u32, position: u64) -> bool {
        (status.wrapping_sub(Self::status_token(position)) as i32) >= 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn descriptor_golden_encodings() {
        assert_eq!(
            Descriptor::context_cache(Granularity::Global, 0, 0).0,
            [0x11, 0, 0, 0]
        );
        assert_eq!(
            Descriptor::context_cache(Granularity::Selective, 5, 0x0020).0,
            [0x0000_0020_0005_0031, 0, 0, 0]
        );
        assert_eq!(
            Descriptor::iotlb(Granularity::Selective, 3, 0x1_2340_0000, 9, true).0,
            [0x0003_00F2, 0x1_2340_0049, 0, 0]
        );
        assert_eq!(
            Descriptor::iotlb(Granularity::Domain, 3, 0xdead_0000, 9, true).0,
            [0x0003_00E2, 0, 0, 0]
        );
        assert_eq!(
            Descriptor::pasid_iotlb(PasidGranularity::Page, 2, 0, 0x4000, 1, false).0,
            [0x0002_0036, 0x4001, 0, 0]
        );
        assert_eq!(
            Descriptor::pasid_iotlb(PasidGranularity::Pasid, 2, 5, 0x4000, 1, false).0,
            [0x0000_0005_0002_0026, 0, 0, 0]
        );
        assert_eq!(Descriptor::pasid_cache(4, 0).0, [0x0004_0017, 0, 0, 0]);
        assert_eq!(
            Descriptor::interrupt_entry_cache(Some(0x12)).0,
            [0x0000_0012_0000_0014, 0, 0, 0]
        );
        assert_eq!(Descriptor::interrupt_entry_cache(None).0, [0x4, 0, 0, 0]);
        let wait = Descriptor::wait(0x8_0000, 0xCAFE);
        assert_eq!(wait.0, [0x0000_CAFE_0000_0065, 0x8_0000, 0, 0]);
        // Never SW together with IF (bit 4): QEMU aborts on it.
        assert_eq!(wait.0[0] & 0x30, 0x20);
        assert_eq!(wait.kind(), Some(DescriptorType::Wait));
    }

    #[test]
    fn ring_registers_follow_descriptor_width() {
        let narrow = Ring::new(4096, false);
        assert_eq!(narrow.slots(), 256);
        assert_eq!(narrow.tail_register(2), 0x20);
        assert_eq!(narrow.tail_register(258), 0x20);
        let wide = Ring::new(4096, true);
        assert_eq!(wide.slots(), 128);
        assert_eq!(wide.tail_register(1), 0x20);
        assert_eq!(wide.head_slot(0x40), Some(2));
        assert_eq!(wide.head_slot(0x50), None);
    }

    #[test]
    fn each_wait_has_its_own_status_word_and_token() {
        let ring = Ring::new(4096, false);
        assert_eq!(ring.status_offset(0), 0);
        assert_eq!(ring.status_offset(5), 20);
        // The same slot a lap later: the same word, another token.
        assert_eq!(ring.status_offset(5 + 256), 20);
        assert_ne!(Ring::status_token(5), Ring::status_token(5 + 256));
        assert_ne!(Ring::status_token(0), 0);
        // Its own token, or a later lap's, but never the earlier lap's nor
        // the zero of a fresh page.
        assert!(Ring::status_says_done(Ring::status_token(5), 5));
        assert!(Ring::status_says_done(Ring::status_token(5 + 256), 5));
        assert!(!Ring::status_says_done(Ring::status_token(5), 5 + 256));
        assert!(!Ring::status_says_done(0, 5));
        let late = u64::from(u32::MAX) - 1;
        assert!(Ring::status_says_done(Ring::status_token(late + 256), late));
        assert!(!Ring::status_says_done(
            Ring::status_token(late - 256),
            late
        ));
        // The page holds a word for every slot of the widest ring.
        assert!(ring.status_offset(255) + 4 <= 4096);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against a plain counter model: the tail register wraps modulo
        /// the slot count and names the slot the head register would.
        #[test]
        fn ring_wraps_like_a_counter(wide in any::<bool>(), end in 0u64..100_000) {
            let ring = Ring::new(4096, wide);
            let slot = (end % ring.slots() as u64) as usize;
            prop_assert_eq!(ring.slot(end), slot);
            prop_assert_eq!(ring.head_slot(ring.tail_register(end)), Some(slot));
        }
    }
}
