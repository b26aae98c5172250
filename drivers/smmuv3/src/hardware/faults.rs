//! The instance's event queue (SMMUv3 §7) and global errors (§7.5): draining
//! and coalescing event records, acknowledging overflow. The records are
//! decoded by `crate::fault`.

use super::*;
use crate::fault::{Event, RawEvent};
use os_services::barrier::{dma_rmb, io_mb};

/// The event queue (§7) and global errors (§7.5) of the instance.
impl Smmu<'_> {
    /// GERROR bits that are active: different from GERRORN (§6.3.18).
    pub fn active_gerror(&self) -> Gerror {
        Gerror::from_bits_retain(self.regs.read32(regs::GERROR) ^ self.regs.read32(regs::GERRORN))
    }

    /// Handles global errors other than CMDQ_ERR (which `sync` recovers):
    /// acknowledges them and returns what was active. In Service Failure
    /// Mode (SFM_ERR, §7.5) the SMMU no longer promises to translate as
    /// configured: it is turned off, so that every stream aborts through
    /// GBPA, until `restart` (Linux `arm_smmu_gerror_handler` disables it).
    pub fn handle_global_errors(&mut self) -> Gerror {
        let active = self.active_gerror() - Gerror::CMDQ_ERR;
        if !active.is_empty() {
            self.counters.add(|c| c.global_errors += 1);
            if active.contains(Gerror::EVENTQ_ABT_ERR) {
                self.counters.add(|c| c.event_overflows += 1);
            }
            self.ack_gerror(active);
        }
        if active.contains(Gerror::SFM_ERR) {
            self.counters.add(|c| c.service_failures += 1);
            // Not answering CR0ACK leaves it off anyway: every later command
            // times out, which the owner sees.
            let _ = self.shutdown();
        }
        active
    }

    /// Reads every pending event record, coalesces them into faults and
    /// detects overflow (§7.4 EVENTQ_PROD.OVFLG; QEMU reports a full queue as
    /// GERROR.EVENTQ_ABT_ERR). Returns the number of records read.
    pub fn drain_events(&mut self) -> usize {
        let prod_raw = self.regs.read32(regs::EVENTQ_PROD);
        // The records PROD vouches for are read only after PROD (Linux
        // `queue_sync_prod_in` + `dma_rmb`).
        dma_rmb();
        let prod = WrapIndex::from_register(self.eventq.log2, prod_raw);
        let mut read = 0;
        while !prod.is_empty(self.eventq.cons) {
            let slot = self.eventq.cons.slot();
            // A non-coherent SMMU wrote the record to DRAM, not to our cache.
            self.invalidate(&self.eventq.region, slot * EVENT_BYTES, EVENT_BYTES);
            let raw = RawEvent(self.eventq.region.read(slot * EVENT_BYTES));
            self.coalescer.push(Event::decode(&raw), &mut self.faults);
            self.eventq.cons = self.eventq.cons.next();
            read += 1;
        }
        self.coalescer.finish(&mut self.faults);
        self.counters.add(|c| c.events += read as u64);
        // Acknowledge an overflow by copying OVFLG into OVACKFLG.
        const OVERFLOW: u32 = 1 << 31;
        let cons_raw = self.regs.read32(regs::EVENTQ_CONS);
        if (prod_raw ^ cons_raw) & OVERFLOW != 0 {
            self.counters.add(|c| c.event_overflows += 1);
        }
        let value = self.eventq.cons.register() | (prod_raw & OVERFLOW);
        if read > 0 || (prod_raw ^ cons_raw) & OVERFLOW != 0 {
            // The records are read before their slots are handed back
            // (Linux `queue_sync_cons_out`: `__iomb`).
            io_mb();
            self.write32(regs::EVENTQ_CONS, value);
        }
        if self.active_gerror().contains(Gerror::EVENTQ_ABT_ERR) {
            self.handle_global_errors();
        }
        read
    }

    /// Takes the faults drained so far.
    pub fn take_faults(&mut self) -> Vec<Fault> {
        core::mem::take(&mut self.faults)
    }

    /// Takes the drained faults of the StreamIDs `owns` accepts, leaving the others.
    pub fn take_faults_where(&mut self, mut owns: impl FnMut(u32) -> bool) -> Vec<Fault> {
        let (mine, rest) = core::mem::take(&mut self.faults)
            .into_iter()
            .partition(|fault| owns(fault.event.sid));
        self.faults = rest;
        mine
    }
}
