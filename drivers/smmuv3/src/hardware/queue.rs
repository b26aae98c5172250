//! The instance's command queue (SMMUv3 §3.5, §4): submitting commands
//! behind one PROD write, CMD_SYNC, and skipping a rejected command (CERROR,
//! §7.1). The commands themselves are `crate::command`'s; which a change
//! needs is `crate::invalidation::plan`'s.

use super::*;
use crate::command::RawCommand;
use core::ops::Range;
use iommu_kit::Claim;

/// Rejections kept for their submitters at most: one that never waits (a
/// bare `submit`) leaves its own behind.
const MAX_UNCLAIMED_REJECTIONS: usize = 32;

/// The command queue of the instance (§3.5, §4): submission through the
/// shared positions of [`iommu_kit::SharedRing`] (claim, write, publish in
/// claim order), CMD_SYNC, and CERROR recovery (§7.1). Each caller waits for
/// its own CMD_SYNC alone: CONS passing it (§4.7.3: a CMD_SYNC is consumed
/// only once every command before it has completed).
impl Smmu<'_> {
    /// The consumer position CMDQ_CONS (index and wrap) means; `Err` when it
    /// names more than was ever claimed.
    fn observe_cmdq_cons(&self) -> Result<u64, Error> {
        let raw = self.regs.read32(regs::CMDQ_CONS);
        let index = WrapIndex::from_register(self.cmdq.log2, raw).register();
        self.cmdq
            .positions
            .observe_consumed(|| u64::from(index))
            .map_err(|_| Error::Timeout("CMDQ_CONS beyond every command"))
    }

    /// Writes commands into the queue and rings the doorbell; waits
    /// (bounded) for room when the queue is full. Does not wait for them.
    pub fn submit(&self, commands: &[Command]) -> Result<(), Error> {
        self.queue(commands).map(|_| ())
    }

    /// [`Smmu::submit`], returning the positions the commands took.
    pub(crate) fn queue(&self, commands: &[Command]) -> Result<Range<u64>, Error> {
        // An STE abandoned half-way (`abort_ste_after_failure`) whose CFGI_STE
        // could not even be queued: the SMMU consumes in order, so with
        // CFGI_ALL first no later CMD_SYNC completes before every cached
        // configuration is dropped.
        let owed = self.owes_cfgi_all.swap(false, Ordering::AcqRel);
        let owed_first = owed.then_some(Command::CFGI_ALL);
        let commands = owed_first.iter().chain(commands);
        let raw: Vec<RawCommand> = commands.clone().map(Command::encode).collect();
        self.counters.add(|c| {
            for command in commands {
                c.commands += 1;
                match command {
                    Command::Sync => c.syncs += 1,
                    Command::CfgiSte { .. }
                    | Command::CfgiSteRange { .. }
                    | Command::CfgiCd { .. }
                    | Command::CfgiCdAll { .. } => c.cfgi += 1,
                    _ => c.tlbi += 1,
                }
            }
        });
        let queued = self.queue_raw(&raw);
        if queued.is_err() && owed {
            self.owes_cfgi_all.store(true, Ordering::Release);
        }
        queued
    }

    /// Submits pre-encoded commands (also used for user-provided nested
    /// invalidations and to provoke CERROR in tests).
    pub fn submit_raw(&self, commands: &[RawCommand]) -> Result<(), Error> {
        self.queue_raw(commands).map(|_| ())
    }

    /// Claims, writes and publishes `commands`, as many at a time as the
    /// queue holds; returns the positions they took (from the first of the
    /// first claim to the end of the last).
    pub(crate) fn queue_raw(&self, commands: &[RawCommand]) -> Result<Range<u64>, Error> {
        let mut taken: Option<Range<u64>> = None;
        for chunk in commands.chunks(self.cmdq.positions.usable() as usize) {
            let claim = self.claim_cmdq(chunk.len() as u64)?;
            let positions = claim.positions();
            let first = taken.map_or(positions.start, |taken| taken.start);
            taken = Some(first..positions.end);
            for (position, command) in claim.positions().zip(chunk) {
                let offset = self.cmdq.positions.slot(position) * CMD_BYTES;
                self.cmdq.region.write(offset, command.0);
                self.cmdq.region.clean(offset, CMD_BYTES, self.clean());
            }
            let (regs, positions, clock) = (&self.regs, &self.cmdq.positions, self.clock);
            let mut doorbells = 0;
            positions.publish(
                claim,
                |end| {
                    // The entries must be visible to the SMMU before the doorbell.
                    dma_wmb();
                    regs.write32(regs::CMDQ_PROD, positions.index(end) as u32);
                    doorbells += 1;
                },
                || clock.relax(),
            );
            self.counters.add(|c| c.mmio_writes += doorbells);
        }
        let published = self.cmdq.positions.published();
        Ok(taken.unwrap_or(published..published))
    }

    /// Room for `count` commands: observes CONS until the SMMU has consumed
    /// enough.
    fn claim_cmdq(&self, count: u64) -> Result<Claim, Error> {
        if let Ok(claim) = self.cmdq.positions.try_claim(count) {
            return Ok(claim);
        }
        self.poll_cmdq("command queue full", |smmu, _| {
            smmu.cmdq.positions.try_claim(count).ok()
        })
    }

    /// Polls (bounded) until `ready`, given the consumer position, says so:
    /// observes CONS each round and skips a rejected command on the way
    /// (§7.1), keeping the rejection for the next caller whose CMD_SYNC
    /// completes.
    fn poll_cmdq<T>(
        &self,
        what: &'static str,
        mut ready: impl FnMut(&Self, u64) -> Option<T>,
    ) -> Result<T, Error> {
        let start = self.clock.now_ns();
        let bound = HW_TIMEOUT.as_nanos() as u64;
        loop {
            let consumed = self.observe_cmdq_cons()?;
            if let Some(value) = ready(self, consumed) {
                return Ok(value);
            }
            if self.active_gerror().contains(Gerror::CMDQ_ERR) {
                if let Some(rejected) = self.recover_command_error() {
                    let mut rejections = self.rejections.lock();
                    if rejections.len() == MAX_UNCLAIMED_REJECTIONS {
                        // A submitter that never waits leaves its own.
                        rejections.remove(0);
                    }
                    rejections.push(rejected);
                }
                continue;
            }
            if self.clock.now_ns().saturating_sub(start) > bound {
                return Err(Error::Timeout(what));
            }
            self.clock.relax();
        }
    }

    /// Issues CMD_SYNC and waits (bounded) for it to complete. A rejected
    /// command is skipped (CERROR recovery, §7.1) and reported.
    pub fn sync(&self) -> Result<(), Error> {
        self.execute(&[])
    }

    /// Submits `commands` and waits until a CMD_SYNC after them has
    /// completed. Alone on the queue, the commands and a CMD_SYNC of their
    /// own go in one claim (one doorbell). Beside other submitters, the
    /// commands go first, and a CMD_SYNC another CPU claimed after them
    /// serves them too (§4.7.3: a CMD_SYNC is consumed only once every
    /// command before it has completed), else one of their own: several
    /// CPUs' commands, one sync.
    pub fn execute(&self, commands: &[Command]) -> Result<(), Error> {
        if commands.is_empty() || self.cmdq.positions.is_quiet() {
            let taken = self.queue_with_sync(commands)?;
            return self.wait_cmdq_consumed(taken);
        }
        let taken = self.queue(commands)?;
        let sync = self.sync_for(&taken)?;
        self.wait_cmdq_through(taken, sync + 1)
    }

    /// The position of a CMD_SYNC after the commands at `taken`: one
    /// another submitter already claimed after them, or one queued now.
    pub(crate) fn sync_for(&self, taken: &Range<u64>) -> Result<u64, Error> {
        let positions = &self.cmdq.positions;
        if let Some(sync) = positions.sync_at_or_after(taken.end) {
            self.counters.add(|c| c.shared_syncs += 1);
            return Ok(sync);
        }
        Ok(self.queue_with_sync(&[])?.end - 1)
    }

    /// Queues `commands` and a CMD_SYNC of their own behind them, which
    /// later submitters may share; returns the positions taken (the
    /// CMD_SYNC last).
    fn queue_with_sync(&self, commands: &[Command]) -> Result<Range<u64>, Error> {
        let mut batch = Vec::with_capacity(commands.len() + 1);
        batch.extend_from_slice(commands);
        batch.push(Command::Sync);
        let taken = self.queue(&batch)?;
        self.cmdq.positions.note_sync(taken.end - 1);
        Ok(taken)
    }

    /// [`Smmu::execute`] of pre-encoded commands (a task's, for its nested
    /// domain): a rejected one is this call's error.
    pub fn execute_raw(&self, commands: &[RawCommand]) -> Result<(), Error> {
        let mut batch = Vec::with_capacity(commands.len() + 1);
        batch.extend_from_slice(commands);
        batch.push(Command::Sync.encode());
        let taken = self.queue_raw(&batch)?;
        self.cmdq.positions.note_sync(taken.end - 1);
        self.wait_cmdq_consumed(taken)
    }

    /// Waits (bounded) until CONS has passed every position of `taken` (a
    /// caller's commands and its CMD_SYNC), skipping rejected commands on
    /// the way; the rejection of one of `taken` is this caller's error,
    /// whichever CPU repaired the queue (another caller's is theirs).
    pub(crate) fn wait_cmdq_consumed(&self, taken: Range<u64>) -> Result<(), Error> {
        let end = taken.end;
        self.wait_cmdq_through(taken, end)
    }

    /// [`Smmu::wait_cmdq_consumed`] until CONS reaches `through` (past the
    /// CMD_SYNC that serves `taken`, maybe another submitter's).
    pub(crate) fn wait_cmdq_through(&self, taken: Range<u64>, through: u64) -> Result<(), Error> {
        self.poll_cmdq("CMD_SYNC", |_, consumed| {
            (consumed >= through).then_some(())
        })?;
        let mut rejections = self.rejections.lock();
        let mut first = None;
        rejections.retain(|(at, error)| {
            let ours = taken.contains(at);
            if ours && first.is_none() {
                first = Some(*error);
            }
            !ours
        });
        first.map_or(Ok(()), Err)
    }

    /// The command at CONS was rejected: overwrite it with a CMD_SYNC (which
    /// cannot fail) and acknowledge, so that the queue resumes (§7.1).
    /// Returns its position and the error; `None` when another CPU repaired
    /// it first (CMDQ_ERR no longer active).
    pub(crate) fn recover_command_error(&self) -> Option<(u64, Error)> {
        let _recovery = self.cmdq_recovery.lock();
        if !self.active_gerror().contains(Gerror::CMDQ_ERR) {
            return None;
        }
        // Read under the lock: CONS names the command the queue stopped at.
        let cons_raw = self.regs.read32(regs::CMDQ_CONS);
        let position = self.observe_cmdq_cons().ok()?;
        let error = CommandError::from_cons(cons_raw);
        let slot = WrapIndex::from_register(self.cmdq.log2, cons_raw).slot();
        let opcode = (self.cmdq.region.read::<u64>(slot * CMD_BYTES) & 0xFF) as u8;
        let replacement = Command::Sync.encode();
        self.cmdq.region.write(slot * CMD_BYTES, replacement.0);
        self.cmdq
            .region
            .clean(slot * CMD_BYTES, CMD_BYTES, self.clean());
        dma_wmb();
        self.counters.add(|c| c.command_errors += 1);
        self.counters.add(|c| c.global_errors += 1);
        *self.last_command_error.lock() = Some(error);
        self.ack_gerror(Gerror::CMDQ_ERR);
        Some((position, Error::CommandRejected { error, opcode }))
    }
}
