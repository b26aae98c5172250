//! The instance's invalidation (VT-d 3.4 §6.5): submitting descriptors to
//! the queue (§6.5.2) and waiting for their completion, recovering from a
//! rejected descriptor, or, without ECAP.QI, the invalidation registers
//! (§6.5.1). The descriptors themselves are `crate::command`'s; which
//! invalidation a change needs is `crate::invalidation::plan`'s.

use super::*;
use iommu_kit::Claim;
use os_services::barrier::dma_wmb;

use iommu::Gather;

use crate::command::{Descriptor, PasidGranularity, Ring};
use crate::device_table::RID_PASID;
use crate::invalidation::{self, InvalidationCaps, IotlbPlan};
use crate::regs::{FaultStatus, Granularity};

/// A caller's descriptors and wait, queued: the positions they took.
#[must_use = "wait for it"]
pub(crate) struct Queued {
    /// The caller's own descriptors (and wait, when it queued one).
    pub(crate) positions: core::ops::Range<u64>,
    /// The wait descriptor that serves them (maybe another submitter's).
    pub(crate) wait_at: u64,
}

/// Rejected descriptors kept for their submitters at most (each submitter
/// collects its own when its wait ends).
const MAX_UNCLAIMED_REJECTIONS: usize = 32;

/// Submission: the queue (§6.5.2) or, without ECAP.QI, the invalidation registers (§6.5.1).
impl<R: Registers> Hardware<'_, R> {
    /// Queues `descriptors` plus one wait descriptor of its own, hands them
    /// to the hardware in claim order and waits (bounded) for that wait's
    /// own status word: the queue protocol of [`iommu_kit::SharedRing`], so
    /// that submitters on several CPUs each wait only for their own work.
    pub(crate) fn submit(&self, descriptors: &[Descriptor]) -> Result<(), Error> {
        let queued = self.queue_descriptors(descriptors)?;
        self.wait_for(queued)
    }

    /// [`Hardware::submit`] up to the doorbell: claims, writes and
    /// publishes `descriptors` and finds the wait that serves them;
    /// [`Hardware::wait_for`] waits. Alone on the queue, the descriptors and
    /// a wait of their own go in one claim (one IQT write). Beside other
    /// submitters, the descriptors go first, and a wait another CPU claimed
    /// after them serves them too (a wait descriptor completes only once
    /// every descriptor before it has, §6.5.2.8), else one of their own:
    /// several CPUs' invalidations, one wait.
    pub(crate) fn queue_descriptors(&self, descriptors: &[Descriptor]) -> Result<Queued, Error> {
        let Invalidator::Queue { ring, .. } = &self.invalidator else {
            return Err(Error::Unsupported("queued invalidation"));
        };
        let shared = ring.shared();
        if descriptors.len() as u64 + 1 > shared.usable() {
            return Err(Error::Invalid);
        }
        if descriptors.is_empty() || shared.is_quiet() {
            let (positions, wait_at) = self.queue_with_wait(descriptors)?;
            return Ok(Queued { positions, wait_at });
        }
        let positions = self.queue_without_wait(descriptors)?;
        let wait_at = self.wait_after(&positions)?;
        Ok(Queued { positions, wait_at })
    }

    /// Claims, writes and publishes `descriptors` and a wait descriptor of
    /// their own behind them, which later submitters may share; returns
    /// their positions and the wait's.
    fn queue_with_wait(
        &self,
        descriptors: &[Descriptor],
    ) -> Result<(core::ops::Range<u64>, u64), Error> {
        let Invalidator::Queue { ring, .. } = &self.invalidator else {
            return Err(Error::Unsupported("queued invalidation"));
        };
        let claim = self.claim_room(descriptors.len() as u64 + 1)?;
        let (positions, wait_at) = (claim.positions(), claim.last());
        self.write_and_publish(claim, descriptors, true);
        ring.shared().note_sync(wait_at);
        Ok((positions, wait_at))
    }

    /// Claims, writes and publishes `descriptors` alone; returns their
    /// positions.
    pub(crate) fn queue_without_wait(
        &self,
        descriptors: &[Descriptor],
    ) -> Result<core::ops::Range<u64>, Error> {
        let claim = self.claim_room(descriptors.len() as u64)?;
        let positions = claim.positions();
        self.write_and_publish(claim, descriptors, false);
        Ok(positions)
    }

    /// The position of a wait descriptor after `positions`: one another
    /// submitter already claimed after them, or one queued now.
    pub(crate) fn wait_after(&self, positions: &core::ops::Range<u64>) -> Result<u64, Error> {
        let Invalidator::Queue { ring, .. } = &self.invalidator else {
            return Err(Error::Unsupported("queued invalidation"));
        };
        if let Some(wait_at) = ring.shared().sync_at_or_after(positions.end) {
            self.counters.add(|c| c.shared_waits += 1);
            return Ok(wait_at);
        }
        Ok(self.queue_with_wait(&[])?.1)
    }

    /// Room for `count` descriptors: observes the head until the hardware
    /// has consumed enough (repairing a stop on the way: the queue must move).
    fn claim_room(&self, count: u64) -> Result<Claim, Error> {
        let Invalidator::Queue { ring, .. } = &self.invalidator else {
            return Err(Error::Unsupported("queued invalidation"));
        };
        let regs = &self.regs;
        let claim = wait_until(self.env.clock, HARDWARE_TIMEOUT, || {
            if let Ok(claim) = ring.shared().try_claim(count) {
                return Some(Ok(claim));
            }
            let head = ring.head_slot(regs.read64(regs::IQH))?;
            if ring.shared().observe_consumed(|| head as u64).is_err() {
                return Some(Err(Error::QueueError));
            }
            if self.queue_stopped() {
                self.recover_queue();
            }
            None
        });
        match claim {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout("invalidation queue full")),
        }
    }

    /// Writes `descriptors` (and, with `wait`, a wait descriptor writing its
    /// own status word, in the claim's last position) into the claimed
    /// slots and hands them to the hardware in claim order.
    fn write_and_publish(&self, claim: Claim, descriptors: &[Descriptor], wait: bool) {
        let Invalidator::Queue {
            ring_page,
            ring,
            status,
        } = &self.invalidator
        else {
            return;
        };
        let (ring_page, last) = (*ring_page, claim.last());
        let own_wait = wait.then(|| {
            let offset = ring.status_offset(last) as u64;
            Descriptor::wait(status.phys() + offset, Ring::status_token(last))
        });
        for (position, descriptor) in claim.positions().zip(descriptors.iter().chain(&own_wait)) {
            write_descriptor(ring_page, ring, ring.slot(position), descriptor);
        }
        // Only the slots just written, in up to two runs where they wrap.
        let (slot_bytes, slots) = (ring.slot_bytes(), ring.slots());
        let first_slot = ring.slot(claim.positions().start);
        let written = claim.positions().count();
        let first_run = written.min(slots - first_slot);
        let clean = self.clean();
        let lines = ring_page.clean(first_slot * slot_bytes, first_run * slot_bytes, clean)
            + ring_page.clean(0, (written - first_run) * slot_bytes, clean);
        let (regs, clock) = (&self.regs, self.env.clock);
        let mut doorbells = 0;
        ring.shared().publish(
            claim,
            |end| {
                // The descriptors must reach memory before the hardware
                // learns of them.
                dma_wmb();
                regs.write64(regs::IQT, ring.tail_register(end));
                doorbells += 1;
            },
            || clock.relax(),
        );
        self.counters.add(|c| {
            c.invalidations += descriptors.len() as u64;
            c.mmio_writes += doorbells;
            c.cache_lines += lines as u64;
        });
    }

    /// Waits (bounded) for the wait descriptor that ends `queued`. A stop
    /// on the way is repaired (by whoever sees it first) and the wait goes
    /// on: a rejected descriptor is the error of the caller whose claim
    /// holds it (§6.5.2.10), whichever CPU repaired it.
    pub(crate) fn wait_for(&self, queued: Queued) -> Result<(), Error> {
        let Invalidator::Queue { ring, status, .. } = &self.invalidator else {
            return Err(Error::Unsupported("queued invalidation"));
        };
        let last = queued.wait_at;
        let status_offset = ring.status_offset(last);
        let result = wait_until(self.env.clock, HARDWARE_TIMEOUT, || {
            if Ring::status_says_done(status.read::<u32>(status_offset), last) {
                return Some(());
            }
            if self.queue_stopped() {
                self.recover_queue();
            }
            None
        });
        self.counters.add(|c| c.waits += 1);
        if result.is_err() {
            return Err(Error::Timeout("invalidation wait"));
        }
        let mut rejected = self.rejected.lock();
        match rejected.iter().position(|at| queued.positions.contains(at)) {
            Some(index) => {
                rejected.remove(index);
                Err(Error::QueueError)
            }
            None => Ok(()),
        }
    }

    /// FSTS.IQE: the hardware stopped at a rejected descriptor.
    fn queue_stopped(&self) -> bool {
        FaultStatus::from_bits_retain(self.regs.read32(regs::FSTS))
            .contains(FaultStatus::QUEUE_ERROR)
    }

    /// After FSTS.IQE the hardware stops at the rejected descriptor (§6.5.2.10):
    /// replace it with a harmless wait, clear IQE so that the queue runs
    /// again from there, and write IQT again through the publish protocol
    /// (QEMU 10.0.2 fetches only on an IQT write, not when IQE clears; the
    /// protocol keeps IQT from going back). The wait writes a status word
    /// nobody polls (QEMU rejects a wait descriptor with neither SW nor IF,
    /// which would stop the queue again at the same slot). The rejected
    /// descriptor's position is kept for the caller whose claim holds it.
    pub(crate) fn recover_queue(&self) {
        // CPUs that met the same stop repair it once: whoever comes second
        // finds IQE clear (the queue runs again) and leaves it.
        let _recovery = self.queue_recovery.lock();
        if !self.queue_stopped() {
            return;
        }
        let Invalidator::Queue {
            ring_page,
            ring,
            status,
        } = &self.invalidator
        else {
            return;
        };
        let Some(slot) = ring.head_slot(self.regs.read64(regs::IQH)) else {
            return;
        };
        let offset = slot * ring.slot_bytes();
        let harmless = Descriptor::wait(status.phys() + UNPOLLED_STATUS_OFFSET as u64, 0);
        write_descriptor(*ring_page, ring, slot, &harmless);
        let (ring_page, slot_bytes) = (*ring_page, ring.slot_bytes());
        self.clean_range(ring_page, offset, slot_bytes);
        if let Ok(position) = ring.shared().observe_consumed(|| slot as u64) {
            let mut rejected = self.rejected.lock();
            if rejected.len() == MAX_UNCLAIMED_REJECTIONS {
                rejected.remove(0);
            }
            rejected.push(position);
        }
        dma_wmb();
        self.write32(regs::FSTS, FaultStatus::QUEUE_ERROR.bits());
        // A harmless wait of its own makes the IQT write: a claim, so it is
        // published after every earlier claim and the tail never goes back.
        // With the ring full there is none to make; the next submitter's
        // IQT write restarts the fetch.
        if let Ok(kick) = ring.shared().try_claim(1) {
            write_descriptor(ring_page, ring, ring.slot(kick.last()), &harmless);
            self.clean_range(ring_page, ring.slot(kick.last()) * slot_bytes, slot_bytes);
            let (regs, clock) = (&self.regs, self.env.clock);
            ring.shared().publish(
                kick,
                |end| {
                    dma_wmb();
                    regs.write64(regs::IQT, ring.tail_register(end))
                },
                || clock.relax(),
            );
        }
    }

    /// Queues raw descriptors plus a wait, like every invalidation does;
    /// tests inject malformed ones through this to provoke FSTS.IQE.
    pub fn submit_raw(&mut self, descriptors: &[Descriptor]) -> Result<(), Error> {
        self.submit(descriptors)
    }

    /// Register-based context-cache invalidation (§6.5.1.1).
    pub(crate) fn register_context_invalidation(
        &self,
        granularity: Granularity,
        did: u16,
        sid: u16,
    ) -> Result<(), Error> {
        let _sequence = self.register_sequence.lock();
        self.counters.add(|c| c.invalidations += 1);
        self.write64(regs::CCMD, regs::context_command(granularity, did, sid));
        let regs = &self.regs;
        let done = || (regs.read64(regs::CCMD) & regs::CCMD_BUSY == 0).then_some(());
        self.wait("CCMD", done)
    }

    /// Register-based IOTLB invalidation (§6.5.1.2).
    pub(crate) fn register_iotlb_invalidation(
        &self,
        granularity: Granularity,
        did: u16,
        address: u64,
        mask: u8,
        leaf_only: bool,
    ) -> Result<(), Error> {
        let _sequence = self.register_sequence.lock();
        self.counters.add(|c| c.invalidations += 1);
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
    pub(crate) fn invalidate_domain(&self, did: u16) -> Result<(), Error> {
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

    pub(crate) fn invalidate_all(&self) -> Result<(), Error> {
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
    pub(crate) fn invalidate_device(&self, sid: u16, did: u16) -> Result<(), Error> {
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
    pub(crate) fn invalidate_new_context(&self, sid: u16, did: u16) -> Result<(), Error> {
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
    pub(crate) fn invalidate_range(&self, did: u16, gather: &Gather) -> Result<(), Error> {
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

/// Writes `descriptor` into `slot` of the queue page: its 128 bits, or all
/// 256 when the queue holds wide descriptors (IQA.DW).
fn write_descriptor(ring_page: Page, ring: &Ring, slot: usize, descriptor: &Descriptor) {
    let words = if ring.is_wide() { 4 } else { 2 };
    let offset = slot * ring.slot_bytes();
    for (index, word) in descriptor.0[..words].iter().enumerate() {
        ring_page.write(offset + index * 8, *word);
    }
}
