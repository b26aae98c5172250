//! The instance's command buffer (AMD IOMMU §2.4): a batch and its
//! COMPLETION_WAIT behind one COMMAND_TAIL write, and recovery when the
//! IOMMU stops on a bad command. The commands themselves are
//! `crate::command`'s; which a change needs is `crate::invalidation::plan`'s.

use super::*;
use os_services::barrier::dma_wmb;

use crate::command::Opcode;

/// Submission (§2.4): a batch, its COMPLETION_WAIT and one COMMAND_TAIL write.
impl Hardware {
    pub(crate) fn count(&mut self, command: &Command) {
        self.counters.commands += 1;
        match command.opcode() {
            Some(Opcode::CompletionWait) => self.counters.completion_waits += 1,
            Some(Opcode::InvalidateDevtabEntry) => self.counters.invalidate_devtab_entry += 1,
            Some(Opcode::InvalidateIommuPages) => self.counters.invalidate_iommu_pages += 1,
            Some(Opcode::InvalidateInterruptTable) => self.counters.invalidate_interrupt_table += 1,
            Some(Opcode::InvalidateIommuAll) => self.counters.invalidate_all += 1,
            _ => {}
        }
    }

    /// Runs `commands`, each batch that fits the ring followed by a
    /// COMPLETION_WAIT behind one COMMAND_TAIL write, and waits (bounded) for
    /// each store. Errors the event log reports are surfaced (the batches after
    /// a failed one are not submitted); a stuck buffer is restarted and reported.
    pub fn run(&mut self, commands: &[Command]) -> Result<(), UnitError> {
        // One slot always stays empty (head == tail means empty, §2.4), one is
        // the batch's COMPLETION_WAIT.
        let batch = (self.command_ring.slots() - 2) as usize;
        if commands.is_empty() {
            return self.run_batch(&[]);
        }
        commands
            .chunks(batch)
            .try_for_each(|chunk| self.run_batch(chunk))
    }

    fn run_batch(&mut self, commands: &[Command]) -> Result<(), UnitError> {
        self.sequence += 1;
        let sequence = self.sequence;
        let wait = Command::completion_wait(self.completion.phys(), sequence);
        let total = commands.len() as u32 + 1;
        // Room for the whole batch (the previous one has completed, so this only
        // waits when the hardware is slow to advance its head pointer).
        let ring = self.command_ring;
        let tail = self.command_tail;
        let regs = &self.regs;
        wait_until(self.clock, COMMAND_TIMEOUT, || {
            let head = regs.read64(regs::COMMAND_HEAD) & regs::RING_POINTER_MASK;
            let head = ring.index(head).ok()?;
            (ring.free(head, tail) >= total).then_some(())
        })
        .map_err(|_| UnitError::CommandTimeout {
            stopped: !self.status().contains(Status::CMD_BUF_RUN),
            illegal_at: None,
        })?;

        let first_slot = self.command_buffer.phys() + self.command_ring.pointer(self.command_tail);
        for command in commands.iter().chain(core::iter::once(&wait)) {
            let offset = self.command_ring.pointer(self.command_tail) as usize;
            self.command_buffer.write(offset, command.0);
            self.command_tail = self.command_ring.next(self.command_tail);
            self.count(command);
        }
        // The commands must be in memory before the IOMMU learns of them.
        dma_wmb();
        self.counters.tail_writes += 1;
        let tail_pointer = self.command_ring.pointer(self.command_tail);
        self.write_reg(regs::COMMAND_TAIL, tail_pointer);

        let completion = self.completion;
        let done = wait_until(self.clock, COMMAND_TIMEOUT, || {
            (completion.read::<u64>(0) == sequence).then_some(())
        });
        let batch = first_slot..first_slot + u64::from(total * regs::ENTRY_SIZE);
        if done.is_err() {
            return Err(self.recover_command_buffer(batch));
        }
        // An IOMMU that keeps going after an illegal command (QEMU does) still logs it.
        // Only events logged for this batch count: ring slots are reused.
        let seen = self.events.len();
        self.poll_events();
        let illegal = self.events[seen..].iter().find_map(|event| match *event {
            Event::IllegalCommand { address } if batch.contains(&address) => Some(address),
            _ => None,
        });
        match illegal {
            Some(address) => {
                self.counters.command_errors += 1;
                Err(UnitError::IllegalCommand { address })
            }
            None => Ok(()),
        }
    }

    /// §2.4 / §2.5.6: after ILLEGAL_COMMAND_ERROR or COMMAND_HARDWARE_ERROR the IOMMU
    /// stops fetching commands (Status.CmdBufRun=0) with COMMAND_HEAD on the bad
    /// entry. Recovery: read the log, disable the buffer, drop every pending command
    /// (head = tail) and enable it again. The caller's batch did not complete.
    pub(crate) fn recover_command_buffer(&mut self, batch: core::ops::Range<u64>) -> UnitError {
        self.counters.command_errors += 1;
        let stopped = !self.status().contains(Status::CMD_BUF_RUN);
        let seen = self.events.len();
        self.poll_events();
        let illegal_at = self.events[seen..].iter().find_map(|event| match *event {
            Event::IllegalCommand { address } | Event::CommandHardwareError { address, .. }
                if batch.contains(&address) =>
            {
                Some(address)
            }
            _ => None,
        });
        let running = self.control;
        self.set_control(running - Control::CMD_BUF_EN);
        let _ = self.wait_status(Status::CMD_BUF_RUN, false);
        let tail_pointer = self.command_ring.pointer(self.command_tail);
        self.write_reg(regs::COMMAND_HEAD, tail_pointer);
        self.set_control(running);
        let _ = self.wait_status(Status::CMD_BUF_RUN, true);
        UnitError::CommandTimeout {
            stopped,
            illegal_at,
        }
    }
}
