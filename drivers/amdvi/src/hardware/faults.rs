//! The instance's event log (AMD IOMMU §2.5): reading new entries into the
//! backlog the unit routes, and restarting the log after an overflow. The
//! entries are decoded by `crate::fault`.

use super::*;
use crate::fault::{RawEvent, drain};
use os_services::barrier::{dma_rmb, io_mb};

/// The event log (§2.5) of the instance.
impl Hardware {
    /// Reads new event-log entries into the backlog the unit takes them from
    /// (`take_events`; beyond `EVENT_BACKLOG` they are counted as
    /// dropped). Handles EventOverflow (§2.5: drain, clear, restart logging).
    pub fn poll_events(&self) -> usize {
        let mut state = self.event_log_state.lock();
        let status = self.status();
        let tail = self.regs.read64(regs::EVENT_TAIL) & regs::RING_POINTER_MASK;
        // The entries the tail vouches for are read only after it.
        dma_rmb();
        let log = self.event_log;
        let clock = self.clock;
        let Ok((events, head)) = drain(self.event_ring, state.head, tail, |index| {
            let offset = index as usize * regs::ENTRY_SIZE as usize;
            // AMD erratum 732 (Linux `iommu_print_event`): the tail may move
            // before the entry is in memory. A consumed entry is zeroed below, so
            // a zero code means "not written yet": read again, bounded; one that
            // stays zero decodes as an unknown event rather than a stale one.
            let entry = wait_until(clock, EVENT_ENTRY_TIMEOUT, || {
                dma_rmb();
                let entry = RawEvent(log.read::<[u64; 2]>(offset));
                (entry.code() != 0).then_some(entry)
            })
            .unwrap_or(RawEvent([0; 2]));
            log.write(offset, [0u64; 2]);
            entry
        }) else {
            return 0;
        };
        let count = events.len();
        if head != state.head {
            state.head = head;
            // The entries are read before their slots are handed back.
            io_mb();
            self.write_reg(regs::EVENT_HEAD, head);
        }
        self.counters.add(|c| c.events += count as u64);
        for event in events {
            if state.backlog.len() < EVENT_BACKLOG {
                state.backlog.push(event);
                state.added += 1;
            } else {
                self.counters.add(|c| c.dropped_faults += 1);
            }
        }
        if status.contains(Status::EVENT_OVERFLOW) {
            self.counters.add(|c| c.event_overflows += 1);
            self.pause(Control::EVENT_LOG_EN, Status::EVENT_LOG_RUN, false, || {
                self.write_reg(regs::STATUS, Status::EVENT_OVERFLOW.bits());
            });
        }
        count
    }

    /// Finds out whether this IOMMU writes its event log: submits a reserved-opcode
    /// command, which must produce ILLEGAL_COMMAND_ERROR (§2.5.6), and looks for the
    /// event. The command buffer keeps working either way (recovered if it stopped).
    /// QEMU 10.0.2 never logs (docs/QEMU.md §2): `Ok(false)` there.
    pub fn probe_event_log(&self) -> Result<bool, UnitError> {
        match self.run(&[Command::illegal()]) {
            Err(UnitError::IllegalCommand { .. }) => Ok(true),
            Err(UnitError::CommandTimeout { illegal_at, .. }) => Ok(illegal_at.is_some()),
            Ok(()) => Ok(false),
            Err(other) => Err(other),
        }
    }
}
