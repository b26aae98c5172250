//! The instance's fault-recording registers (VT-d 3.4 §7.1.3) and fault
//! event (§7.3). The records are decoded by `crate::fault`.

use super::*;
use crate::fault::{Fault, RECORD_VALID_TOP};
use crate::regs::{FaultControl, FaultStatus};

/// Draining the fault-recording registers (§7.1.3) and the fault event (§7.3).
impl<R: Registers> Hardware<'_, R> {
    /// Moves every pending fault record into `out` (raw), clears the records
    /// and the overflow bit so that the hardware records again.
    pub fn drain_raw_faults(&mut self, out: &mut Vec<Fault>) -> usize {
        let before = out.len();
        let status = FaultStatus::from_bits_retain(self.regs.read32(regs::FSTS));
        if status.contains(FaultStatus::PENDING) {
            let count = self.cap.fault_record_count();
            let first = status.first_record() % count;
            for step in 0..count {
                let index = (first + step) % count;
                let high = self.regs.read64(regs::fault_record_high(self.cap, index));
                let low = self.regs.read64(regs::fault_record_low(self.cap, index));
                let Some(fault) = Fault::decode(low, high) else {
                    continue;
                };
                out.push(fault);
                self.write32(regs::fault_record_top(self.cap, index), RECORD_VALID_TOP);
            }
        }
        let sticky = status & FaultStatus::OVERFLOW;
        if !sticky.is_empty() {
            self.fault_stats.overflows += 1;
            self.write32(regs::FSTS, sticky.bits());
        }
        self.fault_stats.records += (out.len() - before) as u64;
        out.len() - before
    }

    /// Routes the fault event (§7.3) to an MSI and unmasks it (FECTL.IM resets to 1).
    pub fn enable_fault_interrupt(&mut self, address: u64, data: u32) {
        self.write32(regs::FEDATA, data);
        self.write32(regs::FEADDR, address as u32);
        self.write32(regs::FEUADDR, (address >> 32) as u32);
        self.write32(regs::FECTL, 0);
    }

    /// FECTL as the hardware reports it now (IM: the interrupt is masked).
    pub fn fault_control(&self) -> FaultControl {
        FaultControl::from_bits_retain(self.regs.read32(regs::FECTL))
    }

    /// FSTS as the hardware reports it now.
    pub fn fault_status(&self) -> FaultStatus {
        FaultStatus::from_bits_retain(self.regs.read32(regs::FSTS))
    }
}
