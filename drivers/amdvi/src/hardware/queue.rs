//! The instance's command buffer (AMD IOMMU §2.4): a batch and its
//! COMPLETION_WAIT behind one COMMAND_TAIL write, and recovery when the
//! IOMMU stops on a bad command. The commands themselves are
//! `crate::command`'s; which a change needs is `crate::invalidation::plan`'s.

use super::*;
use iommu_kit::Claim;
use os_services::barrier::dma_wmb;

use crate::command::Opcode;

/// Skipped commands kept for their submitters at most (each collects its
/// own when its wait ends).
const MAX_UNCLAIMED_SKIPS: usize = 32;

/// Submission (§2.4): a batch, its COMPLETION_WAIT and one COMMAND_TAIL write.
impl Hardware {
    /// Counts what `command` is.
    pub(crate) fn count(counters: &mut Counters, command: &Command) {
        counters.commands += 1;
        match command.opcode() {
            Some(Opcode::CompletionWait) => counters.completion_waits += 1,
            Some(Opcode::InvalidateDevtabEntry) => counters.invalidate_devtab_entry += 1,
            Some(Opcode::InvalidateIommuPages) => counters.invalidate_iommu_pages += 1,
            Some(Opcode::InvalidateInterruptTable) => counters.invalidate_interrupt_table += 1,
            Some(Opcode::InvalidateIommuAll) => counters.invalidate_all += 1,
            _ => {}
        }
    }

    /// Runs `commands`, each batch that fits the ring followed by a
    /// COMPLETION_WAIT behind one COMMAND_TAIL write, and waits (bounded) for
    /// each store. Errors the event log reports are surfaced (the batches after
    /// a failed one are not submitted)); a stuck buffer is restarted and reported.
    pub fn run(&self, commands: &[Command]) -> Result<(), UnitError> {
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

    /// Where the COMPLETION_WAIT at `position` stores, and what: the
    /// quadword of its own slot, and a token of its position (never the zero
    /// of a fresh page, nor what the slot's wait a lap earlier stored).
    pub(crate) fn completion_store(&self, position: u64) -> (u64, u64) {
        let slot = self.command_queue.slot(position) as u64;
        (self.completion.phys() + slot * 8, position + 1)
    }

    /// The COMPLETION_WAIT that ended the last batch (for tests that check
    /// the command stream).
    pub fn last_completion_wait(&self) -> Command {
        let (store, token) = self.completion_store(self.command_queue.published() - 1);
        Command::completion_wait(store, token)
    }

    /// The slot the next published command goes to (for tests).
    pub fn command_tail(&self) -> u32 {
        self.command_queue.index(self.command_queue.published()) as u32
    }

    /// Claims room for the batch and its COMPLETION_WAIT, writes them, hands
    /// them to the IOMMU in claim order and waits for that wait's own store:
    /// the queue protocol of [`iommu_kit::SharedRing`], so that submitters
    /// on several CPUs each wait only for their own batch.
    fn run_batch(&self, commands: &[Command]) -> Result<(), UnitError> {
        // Events read from here on may be this batch's.
        let events_before = self.events_added();
        let queue = &self.command_queue;
        let (batch, wait_at) = if commands.is_empty() || queue.is_quiet() {
            // Alone on the buffer: the commands and a COMPLETION_WAIT of
            // their own in one claim (one COMMAND_TAIL write).
            self.queue_with_wait(commands)?
        } else {
            // Beside other submitters: the commands first; a COMPLETION_WAIT
            // another CPU claimed after them serves them too (it completes
            // only once every command before it has, §2.4.1), else one of
            // their own: several CPUs' commands, one wait.
            let claim = self.claim_commands(commands.len() as u64)?;
            let end = claim.positions().end;
            let batch = self.write_and_publish(claim, commands, false);
            (batch, self.completion_wait_after(end)?)
        };
        let (store, token) = self.completion_store(wait_at);
        let completion = self.completion;
        let store_offset = (store - completion.phys()) as usize;
        let done = wait_until(self.clock, COMMAND_TIMEOUT, || {
            // Its own token or a later lap's (the slot reused before this
            // waiter looked): the tokens grow with the position.
            if completion.read::<u64>(store_offset) >= token {
                return Some(());
            }
            // Stopped at a bad command (whoever's): skip it and go on.
            if !self.status().contains(Status::CMD_BUF_RUN) {
                self.skip_halted_command();
            }
            None
        });
        if done.is_err() {
            return Err(self.recover_command_buffer(&batch, events_before));
        }
        // A command of this batch the IOMMU stopped at and the driver skipped
        // (counted then), whichever caller skipped it.
        {
            let mut skipped = self.skipped_commands.lock();
            if let Some(index) = skipped.iter().position(|address| batch.contains(address)) {
                let address = skipped.remove(index);
                return Err(UnitError::IllegalCommand { address });
            }
        }
        // An IOMMU that keeps going after an illegal command (QEMU does) still logs it.
        // Only events logged for this batch count: ring slots are reused.
        self.poll_events();
        let illegal = self.find_event_since(events_before, |_, event| match *event {
            Event::IllegalCommand { address } if batch.contains(&address) => Some(address),
            _ => None,
        });
        match illegal {
            Some(address) => {
                self.counters.add(|c| c.command_errors += 1);
                Err(UnitError::IllegalCommand { address })
            }
            None => Ok(()),
        }
    }

    /// Room for `count` commands: observes the head until the IOMMU has
    /// consumed enough.
    pub(crate) fn claim_commands(&self, count: u64) -> Result<Claim, UnitError> {
        let (ring, queue, regs) = (self.command_ring, &self.command_queue, &self.regs);
        let claim = wait_until(self.clock, COMMAND_TIMEOUT, || {
            if let Ok(claim) = queue.try_claim(count) {
                return Some(claim);
            }
            let head = regs.read64(regs::COMMAND_HEAD) & regs::RING_POINTER_MASK;
            let head = ring.index(head).ok()?;
            // A head beyond every claim is the IOMMU's error; the wait runs out.
            let _ = queue.observe_consumed(|| u64::from(head));
            None
        });
        claim.map_err(|_| UnitError::CommandTimeout {
            stopped: !self.status().contains(Status::CMD_BUF_RUN),
            illegal_at: None,
        })
    }

    /// Writes `commands` (and, with `wait`, a COMPLETION_WAIT storing to its
    /// own slot's quadword, in the claim's last position) into the claimed
    /// slots and hands them to the IOMMU in claim order; returns their
    /// addresses (to tell the batch's events from older ones).
    pub(crate) fn write_and_publish(
        &self,
        claim: Claim,
        commands: &[Command],
        wait: bool,
    ) -> Vec<u64> {
        let (ring, queue, regs) = (self.command_ring, &self.command_queue, &self.regs);
        let own_wait = wait.then(|| {
            let (store, token) = self.completion_store(claim.last());
            Command::completion_wait(store, token)
        });
        let buffer = self.command_buffer;
        let mut batch = Vec::with_capacity(commands.len() + 1);
        for (position, command) in claim.positions().zip(commands.iter().chain(&own_wait)) {
            let offset = ring.pointer(queue.slot(position) as u32);
            buffer.write(offset as usize, command.0);
            batch.push(buffer.phys() + offset);
        }
        let mut tail_writes = 0;
        queue.publish(
            claim,
            |end| {
                // The commands must be in memory before the IOMMU learns of them.
                dma_wmb();
                regs.write64(regs::COMMAND_TAIL, ring.pointer(queue.index(end) as u32));
                tail_writes += 1;
            },
            || self.clock.relax(),
        );
        self.counters.add(|c| {
            c.tail_writes += tail_writes;
            c.mmio_writes += tail_writes;
            for command in commands.iter().chain(&own_wait) {
                Self::count(c, command);
            }
        });
        batch
    }

    /// The position of a COMPLETION_WAIT after the commands ending at
    /// `end`: one another submitter already claimed after them, or one
    /// queued now.
    pub(crate) fn completion_wait_after(&self, end: u64) -> Result<u64, UnitError> {
        let queue = &self.command_queue;
        if let Some(wait_at) = queue.sync_at_or_after(end) {
            self.counters.add(|c| c.shared_waits += 1);
            return Ok(wait_at);
        }
        Ok(self.queue_with_wait(&[])?.1)
    }

    /// Claims, writes and publishes `commands` and a COMPLETION_WAIT of
    /// their own behind them, which later submitters may share; returns the
    /// commands' addresses and the wait's position.
    fn queue_with_wait(&self, commands: &[Command]) -> Result<(Vec<u64>, u64), UnitError> {
        let claim = self.claim_commands(commands.len() as u64 + 1)?;
        let wait_at = claim.last();
        let batch = self.write_and_publish(claim, commands, true);
        self.command_queue.note_sync(wait_at);
        Ok((batch, wait_at))
    }

    /// §2.4 / §2.5.6: the IOMMU stopped at a bad command (Status.CmdBufRun
    /// = 0, COMMAND_HEAD on it): moves the head past it and runs the buffer
    /// again, so that the commands behind it, other CPUs' included, still
    /// run; the command's address waits for the caller whose batch holds
    /// it. Whoever comes second finds the buffer running and leaves it.
    ///
    /// Only a halt the event log confirms (an ILLEGAL_COMMAND_ERROR or
    /// COMMAND_HARDWARE_ERROR event at the head's address, logged since the
    /// last skip, §2.5.6) is acted on: a status read that came back wrong
    /// must never skip a command that was fine.
    pub(crate) fn skip_halted_command(&self) {
        let mut last_used = self.command_recovery.lock();
        if self.status().contains(Status::CMD_BUF_RUN) {
            return;
        }
        let head = self.regs.read64(regs::COMMAND_HEAD) & regs::RING_POINTER_MASK;
        let Ok(slot) = self.command_ring.index(head) else {
            return;
        };
        let address = self.command_buffer.phys() + head;
        self.poll_events();
        let Some(number) = self.find_event_since(*last_used, |number, event| match *event {
            Event::IllegalCommand { address: at }
            | Event::CommandHardwareError { address: at, .. }
                if at == address =>
            {
                Some(number)
            }
            _ => None,
        }) else {
            return;
        };
        *last_used = number + 1;
        let next = self.command_ring.pointer(self.command_ring.next(slot));
        self.counters.add(|c| c.command_errors += 1);
        {
            let mut skipped = self.skipped_commands.lock();
            if skipped.len() == MAX_UNCLAIMED_SKIPS {
                skipped.remove(0);
            }
            skipped.push(address);
        }
        self.pause(Control::CMD_BUF_EN, Status::CMD_BUF_RUN, true, || {
            self.write_reg(regs::COMMAND_HEAD, next);
        });
    }

    /// §2.4 / §2.5.6: after ILLEGAL_COMMAND_ERROR or COMMAND_HARDWARE_ERROR the IOMMU
    /// stops fetching commands (Status.CmdBufRun=0) with COMMAND_HEAD on the bad
    /// entry. Recovery: read the log, disable the buffer, drop every pending command
    /// (head = tail) and enable it again. The caller's batch did not complete.
    /// Another CPU's batch pending then is dropped too, and fails the same way.
    pub(crate) fn recover_command_buffer(&self, batch: &[u64], events_before: u64) -> UnitError {
        let _recovery = self.command_recovery.lock();
        self.counters.add(|c| c.command_errors += 1);
        let stopped = !self.status().contains(Status::CMD_BUF_RUN);
        self.poll_events();
        let illegal_at = self.find_event_since(events_before, |_, event| match *event {
            Event::IllegalCommand { address } | Event::CommandHardwareError { address, .. }
                if batch.contains(&address) =>
            {
                Some(address)
            }
            _ => None,
        });
        self.pause(Control::CMD_BUF_EN, Status::CMD_BUF_RUN, true, || {
            // Every published command counts as consumed from here on.
            let published = self.command_queue.published();
            let tail_pointer = self
                .command_ring
                .pointer(self.command_queue.index(published) as u32);
            self.write_reg(regs::COMMAND_HEAD, tail_pointer);
        });
        UnitError::CommandTimeout {
            stopped,
            illegal_at,
        }
    }
}
