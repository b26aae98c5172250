//! Fault routing: records drained from the units land in the fault queue of the
//! HWPT the requester is attached to; a full queue counts what it drops and
//! reports the count in the next record it accepts.

use crate::{FAULT_QUEUE_DEPTH, FaultQueue, Iommufd, ObjId, OwnerId, Services};
use abi::{Errno, FaultAccess, FaultReasonCode};
use alloc::collections::VecDeque;
use iommu::{Access, FaultReason, IommuUnit, UnitId};

/// What `fault_read` returns besides the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultReadReply {
    /// Records written.
    pub num: u32,
    /// Drops not yet reported in a delivered record.
    pub dropped: u32,
}

impl FaultQueue {
    pub(crate) fn new() -> Self {
        Self {
            records: VecDeque::with_capacity(FAULT_QUEUE_DEPTH),
            dropped: 0,
        }
    }

    fn push(&mut self, mut record: abi::FaultRecord) {
        if self.records.len() >= FAULT_QUEUE_DEPTH {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        record.dropped_before = core::mem::take(&mut self.dropped);
        self.records.push_back(record);
    }
}

fn encode(r: &iommu::FaultRecord, dev_id: ObjId) -> abi::FaultRecord {
    let access = match r.access {
        Access::Read => FaultAccess::READ,
        Access::Write => FaultAccess::WRITE,
        Access::Execute => FaultAccess::EXEC,
    };
    let reason = match r.reason {
        FaultReason::NotPresent => FaultReasonCode::NotPresent,
        FaultReason::Permission => FaultReasonCode::Permission,
        FaultReason::AddressSize => FaultReasonCode::AddressSize,
        FaultReason::Blocked => FaultReasonCode::Blocked,
        FaultReason::Other(_) => FaultReasonCode::Other,
    };
    abi::FaultRecord {
        iova: r.iova,
        requester: r.requester.0,
        unit: r.unit.0,
        dev_id,
        access: access.bits(),
        reason: reason as u32,
        vendor_reason: r.vendor_code,
        dropped_before: 0,
        reserved: 0,
    }
}

impl<U: IommuUnit, S: Services> Iommufd<U, S> {
    /// Drains every unit's faults into the owning HWPTs' queues (the kernel calls
    /// this from its fault interrupt or a poll). Returns the records queued.
    pub fn dispatch_faults(&mut self) -> usize {
        let mut scratch = core::mem::take(&mut self.fault_scratch);
        let mut queued = 0;
        for index in 0..self.units.len() {
            scratch.clear();
            self.units[index].drain_faults(&mut scratch);
            let unit_id = UnitId(index as u32);
            for r in &scratch {
                // A fault of a task-owned stage 1 under a vIOMMU with a
                // vEVENTQ goes there, as the task's own IOMMU would report it.
                let claimed = self.claimed.get(&(unit_id, r.requester)).copied();
                if let (Some((owner, dev)), Some(event)) = (claimed, r.guest_event)
                    && let Some(o) = self.owners.get_mut(&owner)
                    && crate::viommu::route_guest_event(o, dev, event)
                {
                    queued += 1;
                    continue;
                }
                let route = claimed.and_then(|(owner, dev)| {
                    let o = self.owners.get_mut(&owner)?;
                    let hwpt = o.device(dev).ok()?.attached?;
                    Some((o.hwpt_mut(hwpt).ok()?, dev))
                });
                match route {
                    Some((hwpt, dev)) => {
                        hwpt.faults.push(encode(r, dev));
                        queued += 1;
                    }
                    None => self.unrouted_faults += 1,
                }
            }
        }
        scratch.clear();
        self.fault_scratch = scratch;
        queued
    }

    /// Moves up to `out.len()` records of a HWPT's fault queue to `out`.
    pub fn fault_read(
        &mut self,
        owner: OwnerId,
        hwpt_id: ObjId,
        out: &mut [abi::FaultRecord],
    ) -> Result<FaultReadReply, Errno> {
        let reply = self.fault_peek(owner, hwpt_id, out)?;
        self.fault_consume(owner, hwpt_id, reply.num as usize)?;
        Ok(reply)
    }

    /// Copies up to `out.len()` records of a HWPT's fault queue to `out`
    /// and leaves them queued: a reader that cannot deliver them (its buffer
    /// faults) must not lose them, so they go only with [`Self::fault_consume`].
    pub(crate) fn fault_peek(
        &self,
        owner: OwnerId,
        hwpt_id: ObjId,
        out: &mut [abi::FaultRecord],
    ) -> Result<FaultReadReply, Errno> {
        let queue = &self.owner(owner)?.hwpt(hwpt_id)?.faults;
        let mut num = 0;
        for (slot, record) in out.iter_mut().zip(&queue.records) {
            *slot = *record;
            num += 1;
        }
        Ok(FaultReadReply {
            num,
            dropped: queue.dropped,
        })
    }

    /// Drops the `count` oldest records of a HWPT's fault queue (delivered).
    pub(crate) fn fault_consume(
        &mut self,
        owner: OwnerId,
        hwpt_id: ObjId,
        count: usize,
    ) -> Result<(), Errno> {
        let queue = &mut self.owner_mut(owner)?.hwpt_mut(hwpt_id)?.faults;
        queue.records.drain(..count.min(queue.records.len()));
        Ok(())
    }
}
