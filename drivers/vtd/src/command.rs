//! Queued-invalidation descriptors (VT-d 3.4 §6.5.2) and the queue's ring
//! arithmetic (§6.5.2, §11.4.10).
//!
//! Descriptors are 128 bits in legacy mode and 256 bits when IQA.DW = 1
//! (needed for the PASID-based descriptors in scalable mode); the upper half
//! of a 256-bit descriptor is zero for every type issued here.

use core::mem::size_of;

use crate::regs::Granularity;
use core::sync::atomic::{Ordering, fence};
use iommu_kit::SlotRing;

use iommu::Gather;
use os_services::wait_until;

use crate::device_table::RID_PASID;
use crate::hardware::{Error, HARDWARE_TIMEOUT, Hardware, Invalidator, Mode, Registers};
use crate::invalidation::{self, InvalidationCaps, IotlbPlan};
use crate::regs::{self, FaultStatus};

/// One invalidation descriptor, stored at its widest (§6.5.2: 256-bit format).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor(pub [u64; 4]);
const _: () = assert!(size_of::<Descriptor>() == 32);

/// §6.5.2 descriptor type codes (bits 3:0; 11:9 are zero for these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescriptorType {
    ContextCache = 1,
    Iotlb = 2,
    InterruptEntryCache = 4,
    Wait = 5,
    PasidIotlb = 6,
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
/// [`SlotRing`] (one slot kept empty, byte-offset registers); software owns
/// the tail, hardware the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    geometry: SlotRing,
    tail: u32,
}

impl Ring {
    /// A ring of `bytes` (one or more 4 KiB pages) of 128-bit slots, or of
    /// 256-bit ones when `wide` (IQA.DW = 1).
    pub fn new(bytes: usize, wide: bool) -> Self {
        let slot_bytes = if wide { 32 } else { 16 };
        Self {
            geometry: SlotRing::filling(bytes as u32, slot_bytes),
            tail: 0,
        }
    }

    pub fn slot_bytes(&self) -> usize {
        self.geometry.slot_bytes() as usize
    }

    pub fn slots(&self) -> usize {
        self.geometry.slots() as usize
    }

    pub fn is_wide(&self) -> bool {
        self.geometry.slot_bytes() == 32
    }

    /// The slot the next descriptor goes to.
    pub fn tail(&self) -> usize {
        self.tail as usize
    }

    /// The IQT value for the current tail (§11.4.10.2: QT is a slot index
    /// shifted by 4, or by 5 with 256-bit descriptors).
    pub fn tail_register(&self) -> u64 {
        self.geometry.pointer(self.tail)
    }

    /// The slot an IQH value names (`None`: no slot boundary, §11.4.10.1).
    pub fn head_slot(&self, head_register: u64) -> Option<usize> {
        let head = self
            .geometry
            .index(head_register & regs::IQH_QH_MASK)
            .ok()?;
        Some(head as usize)
    }

    /// Free slots, keeping one empty so that head == tail means empty.
    pub fn free(&self, head: usize) -> usize {
        self.geometry.free(head as u32, self.tail) as usize
    }

    /// Advances the tail past one written slot, wrapping at the end.
    pub fn advance(&mut self) {
        self.tail = self.geometry.next(self.tail);
    }
}

/// Submission: the queue (§6.5.2) or, without ECAP.QI, the invalidation registers (§6.5.1).
impl<R: Registers> Hardware<'_, R> {
    /// Queues `descriptors` plus one wait descriptor, moves the tail once and
    /// waits (bounded) for the status write.
    pub(crate) fn submit(&mut self, descriptors: &[Descriptor]) -> Result<(), Error> {
        let Invalidator::Queue {
            ring_page,
            ring,
            status,
            sequence,
        } = &mut self.invalidator
        else {
            return Err(Error::Unsupported("queued invalidation"));
        };
        let head = ring
            .head_slot(self.regs.read64(regs::IQH))
            .ok_or(Error::QueueError)?;
        if ring.free(head) < descriptors.len() + 1 {
            return Err(Error::Timeout("invalidation queue full"));
        }
        *sequence = sequence.wrapping_add(1);
        let token = *sequence;
        let wait = Descriptor::wait(status.phys(), token);
        for descriptor in descriptors.iter().chain(core::iter::once(&wait)) {
            let offset = ring.tail() * ring.slot_bytes();
            let words = if ring.is_wide() { 4 } else { 2 };
            for (index, word) in descriptor.0[..words].iter().enumerate() {
                ring_page.write(offset + index * 8, *word);
            }
            ring.advance();
        }
        let tail = ring.tail_register();
        let status = *status;
        let ring_page = *ring_page;
        self.counters.invalidations += descriptors.len() as u64;
        self.counters.waits += 1;
        self.flush_cache(ring_page);
        fence(Ordering::SeqCst);
        self.write64(regs::IQT, tail);
        let regs = &self.regs;
        let result = wait_until(self.env.clock, HARDWARE_TIMEOUT, || {
            if status.read::<u32>(0) == token {
                return Some(Ok(()));
            }
            let faults = FaultStatus::from_bits_retain(regs.read32(regs::FSTS));
            faults
                .contains(FaultStatus::QUEUE_ERROR)
                .then_some(Err(Error::QueueError))
        });
        match result {
            Ok(Err(Error::QueueError)) => {
                self.recover_queue();
                Err(Error::QueueError)
            }
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Timeout("invalidation wait")),
        }
    }

    /// After FSTS.IQE the hardware stops at the rejected descriptor (§6.5.2.10):
    /// replace it with a harmless wait, then clear IQE so that the queue runs
    /// again from there. The wait writes the failed submission's own token
    /// (nobody waits for it any more): QEMU rejects a wait descriptor with
    /// neither SW nor IF, which would stop the queue again at the same slot.
    pub(crate) fn recover_queue(&mut self) {
        let Invalidator::Queue {
            ring_page,
            ring,
            status,
            sequence,
        } = &self.invalidator
        else {
            return;
        };
        let Some(slot) = ring.head_slot(self.regs.read64(regs::IQH)) else {
            return;
        };
        let offset = slot * ring.slot_bytes();
        let harmless = Descriptor::wait(status.phys(), *sequence);
        let words = if ring.is_wide() { 4 } else { 2 };
        for (index, word) in harmless.0[..words].iter().enumerate() {
            ring_page.write(offset + index * 8, *word);
        }
        let ring_page = *ring_page;
        self.flush_cache(ring_page);
        fence(Ordering::SeqCst);
        self.write32(regs::FSTS, FaultStatus::QUEUE_ERROR.bits());
    }

    /// Queues raw descriptors plus a wait, like every invalidation does;
    /// tests inject malformed ones through this to provoke FSTS.IQE.
    pub fn submit_raw(&mut self, descriptors: &[Descriptor]) -> Result<(), Error> {
        self.submit(descriptors)
    }

    /// Register-based context-cache invalidation (§6.5.1.1).
    pub(crate) fn register_context_invalidation(
        &mut self,
        granularity: Granularity,
        did: u16,
        sid: u16,
    ) -> Result<(), Error> {
        self.counters.invalidations += 1;
        self.write64(regs::CCMD, regs::context_command(granularity, did, sid));
        let regs = &self.regs;
        let done = || (regs.read64(regs::CCMD) & regs::CCMD_BUSY == 0).then_some(());
        self.wait("CCMD", done)
    }

    /// Register-based IOTLB invalidation (§6.5.1.2).
    pub(crate) fn register_iotlb_invalidation(
        &mut self,
        granularity: Granularity,
        did: u16,
        address: u64,
        mask: u8,
        leaf_only: bool,
    ) -> Result<(), Error> {
        self.counters.invalidations += 1;
        if granularity == Granularity::Selective {
            self.write64(
                regs::iva(self.ecap),
                regs::invalidate_address(address, mask, leaf_only),
            );
        }
        self.write64(
            regs::iotlb(self.ecap),
            regs::iotlb_command(granularity, did),
        );
        let register = regs::iotlb(self.ecap);
        let regs = &self.regs;
        let done = || (regs.read64(register) & regs::IOTLB_BUSY == 0).then_some(());
        self.wait("IOTLB invalidation register", done)
    }

    /// Removes whatever the hardware still caches under domain id `did`
    /// (before the id is handed to another domain, §6.5.2.3).
    pub(crate) fn invalidate_domain(&mut self, did: u16) -> Result<(), Error> {
        match self.invalidator {
            Invalidator::Queue { .. } => {
                let descriptor = self.domain_iotlb_descriptor(did);
                self.submit(&[descriptor])
            }
            Invalidator::Registers => {
                self.register_iotlb_invalidation(Granularity::Domain, did, 0, 0, false)
            }
        }
    }

    pub(crate) fn invalidate_all(&mut self) -> Result<(), Error> {
        match self.invalidator {
            Invalidator::Queue { .. } => self.submit(&[
                Descriptor::context_cache(Granularity::Global, 0, 0),
                Descriptor::iotlb(Granularity::Global, 0, 0, 0, false),
            ]),
            Invalidator::Registers => {
                self.register_context_invalidation(Granularity::Global, 0, 0)?;
                self.register_iotlb_invalidation(Granularity::Global, 0, 0, 0, false)
            }
        }
    }

    /// After a device's context (and, in scalable mode, its RID_PASID entry)
    /// changed from present with `did`: context cache, PASID cache, IOTLB
    /// (§6.5.3.3 / §6.5.3.4 guidance).
    pub(crate) fn invalidate_device(&mut self, sid: u16, did: u16) -> Result<(), Error> {
        match self.invalidator {
            Invalidator::Queue { .. } => {
                let mut descriptors =
                    alloc::vec![Descriptor::context_cache(Granularity::Selective, did, sid)];
                match self.mode {
                    Mode::Legacy => {}
                    Mode::ScalableSecondStage | Mode::ScalableFirstStage => {
                        descriptors.push(Descriptor::pasid_cache(did, RID_PASID))
                    }
                }
                descriptors.push(self.domain_iotlb_descriptor(did));
                self.submit(&descriptors)
            }
            Invalidator::Registers => {
                self.register_context_invalidation(Granularity::Selective, did, sid)?;
                self.register_iotlb_invalidation(Granularity::Domain, did, 0, 0, false)
            }
        }
    }

    /// Domain-wide IOTLB invalidation in the form the mode needs: first-stage
    /// entries are tagged by PASID and need the PASID-based descriptor.
    pub(crate) fn domain_iotlb_descriptor(&self, did: u16) -> Descriptor {
        match self.mode {
            Mode::ScalableFirstStage => {
                Descriptor::pasid_iotlb(PasidGranularity::Pasid, did, RID_PASID, 0, 0, false)
            }
            _ => Descriptor::iotlb(Granularity::Domain, did, 0, 0, false),
        }
    }

    /// Under caching mode a not-present → present context change must be
    /// invalidated too, with DID 0 for the context cache (§6.1).
    pub(crate) fn invalidate_new_context(&mut self, sid: u16, did: u16) -> Result<(), Error> {
        if !self.cap.caching_mode() {
            return self.flush_write_buffer();
        }
        match self.invalidator {
            Invalidator::Queue { .. } => {
                let mut descriptors =
                    alloc::vec![Descriptor::context_cache(Granularity::Selective, 0, sid)];
                if self.mode.is_scalable() {
                    descriptors.push(Descriptor::pasid_cache(did, RID_PASID));
                }
                descriptors.push(self.domain_iotlb_descriptor(did));
                self.submit(&descriptors)
            }
            Invalidator::Registers => {
                self.register_context_invalidation(Granularity::Selective, 0, sid)?;
                self.register_iotlb_invalidation(Granularity::Domain, did, 0, 0, false)
            }
        }
    }

    /// IOTLB invalidation covering `gather` in domain `did`: one page-selective
    /// invalidation with the smallest address mask that covers the range,
    /// domain-selective past CAP.MAMV or without CAP.PSI (§6.5.2.3).
    pub(crate) fn invalidate_range(&mut self, did: u16, gather: &Gather) -> Result<(), Error> {
        let caps = InvalidationCaps {
            page_selective: self.cap.page_selective_invalidation(),
            max_address_mask: self.cap.max_address_mask(),
        };
        match (&self.invalidator, invalidation::plan(gather, caps)) {
            (_, IotlbPlan::Nothing) => Ok(()),
            (
                Invalidator::Queue { .. },
                IotlbPlan::PageSelective {
                    address,
                    mask,
                    leaf_only,
                },
            ) => {
                let descriptor = match self.mode {
                    Mode::ScalableFirstStage => Descriptor::pasid_iotlb(
                        PasidGranularity::Page,
                        did,
                        RID_PASID,
                        address,
                        mask,
                        leaf_only,
                    ),
                    _ => Descriptor::iotlb(Granularity::Selective, did, address, mask, leaf_only),
                };
                self.submit(&[descriptor])
            }
            (Invalidator::Queue { .. }, IotlbPlan::Domain) => {
                let descriptor = self.domain_iotlb_descriptor(did);
                self.submit(&[descriptor])
            }
            (
                Invalidator::Registers,
                IotlbPlan::PageSelective {
                    address,
                    mask,
                    leaf_only,
                },
            ) => self.register_iotlb_invalidation(
                Granularity::Selective,
                did,
                address,
                mask,
                leaf_only,
            ),
            (Invalidator::Registers, IotlbPlan::Domain) => {
                self.register_iotlb_invalidation(Granularity::Domain, did, 0, 0, false)
            }
        }
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
        let mut narrow = Ring::new(4096, false);
        assert_eq!(narrow.slots(), 256);
        narrow.advance();
        narrow.advance();
        assert_eq!(narrow.tail_register(), 0x20);
        let mut wide = Ring::new(4096, true);
        assert_eq!(wide.slots(), 128);
        wide.advance();
        assert_eq!(wide.tail_register(), 0x20);
        assert_eq!(wide.head_slot(0x40), Some(2));
        assert_eq!(wide.head_slot(0x50), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against a plain counter model: the tail wraps modulo the slot
        /// count, and the free count never lets the tail catch the head.
        #[test]
        fn ring_wraps_like_a_counter(wide in any::<bool>(), steps in 0usize..1000, head in 0usize..256) {
            let mut ring = Ring::new(4096, wide);
            let head = head % ring.slots();
            for _ in 0..steps {
                ring.advance();
            }
            prop_assert_eq!(ring.tail(), steps % ring.slots());
            prop_assert_eq!(ring.head_slot(ring.tail_register()), Some(ring.tail()));
            let used = (ring.tail() + ring.slots() - head) % ring.slots();
            prop_assert_eq!(ring.free(head), ring.slots() - 1 - used);
        }
    }
}
