//! The instance's command queue (SMMUv3 §3.5, §4): submitting commands
//! behind one PROD write, CMD_SYNC, and skipping a rejected command (CERROR,
//! §7.1). The commands themselves are `crate::command`'s; which a change
//! needs is `crate::invalidation::plan`'s.

use super::*;
use crate::command::RawCommand;

/// The command queue of the instance (§3.5, §4): submission, CMD_SYNC, CERROR recovery (§7.1).
impl Smmu<'_> {
    pub(crate) fn refresh_cmdq_cons(&mut self) -> u32 {
        let raw = self.regs.read32(regs::CMDQ_CONS);
        self.cmdq.cons = WrapIndex::from_register(self.cmdq.log2, raw);
        raw
    }

    /// Writes commands into the queue and rings the doorbell once; waits
    /// (bounded) for room when the queue is full.
    pub fn submit(&mut self, commands: &[Command]) -> Result<(), Error> {
        // An STE abandoned half-way (`abort_ste_after_failure`) whose CFGI_STE
        // could not even be queued: the SMMU consumes in order, so with
        // CFGI_ALL first no later CMD_SYNC completes before every cached
        // configuration is dropped.
        let owed = core::mem::take(&mut self.owes_cfgi_all);
        let owed_first = owed.then_some(Command::CFGI_ALL);
        let commands = owed_first.iter().chain(commands);
        let raw: Vec<RawCommand> = commands.clone().map(Command::encode).collect();
        for command in commands {
            self.counters.commands += 1;
            match command {
                Command::Sync => self.counters.syncs += 1,
                Command::CfgiSte { .. }
                | Command::CfgiSteRange { .. }
                | Command::CfgiCd { .. }
                | Command::CfgiCdAll { .. } => self.counters.cfgi += 1,
                _ => self.counters.tlbi += 1,
            }
        }
        let queued = self.submit_raw(&raw);
        if queued.is_err() && owed {
            self.owes_cfgi_all = true;
        }
        queued
    }

    /// Submits pre-encoded commands (also used for user-provided nested
    /// invalidations and to provoke CERROR in tests).
    pub fn submit_raw(&mut self, commands: &[RawCommand]) -> Result<(), Error> {
        for command in commands {
            if self.cmdq.prod.is_full(self.cmdq.cons) {
                self.refresh_cmdq_cons();
                if self.cmdq.prod.is_full(self.cmdq.cons) {
                    // Let the SMMU consume what is there before adding more.
                    self.ring_cmdq();
                    self.wait_cmdq_drained()?;
                }
            }
            let slot = self.cmdq.prod.slot();
            self.cmdq.region.write(slot * CMD_BYTES, command.0);
            self.cmdq
                .region
                .clean(slot * CMD_BYTES, CMD_BYTES, self.clean());
            self.cmdq.prod = self.cmdq.prod.next();
        }
        self.ring_cmdq();
        Ok(())
    }

    pub(crate) fn ring_cmdq(&mut self) {
        // The entries must be visible to the SMMU before the doorbell.
        dma_wmb();
        let prod = self.cmdq.prod.register();
        self.write32(regs::CMDQ_PROD, prod);
    }

    /// Issues CMD_SYNC and waits (bounded) for the SMMU to consume everything
    /// up to it. A rejected command is skipped (CERROR recovery, §7.1) and
    /// reported after the queue has drained.
    pub fn sync(&mut self) -> Result<(), Error> {
        self.submit(&[Command::Sync])?;
        self.wait_cmdq_drained()
    }

    /// Submits `commands` and a CMD_SYNC behind one doorbell write, then waits
    /// for completion as [`Smmu::sync`] does (command batching).
    pub fn execute(&mut self, commands: &[Command]) -> Result<(), Error> {
        let mut batch = Vec::with_capacity(commands.len() + 1);
        batch.extend_from_slice(commands);
        batch.push(Command::Sync);
        self.submit(&batch)?;
        self.wait_cmdq_drained()
    }

    pub(crate) fn wait_cmdq_drained(&mut self) -> Result<(), Error> {
        let mut rejected = None;
        let start = self.clock.now_ns();
        let bound = HW_TIMEOUT.as_nanos() as u64;
        loop {
            let raw = self.refresh_cmdq_cons();
            if self.cmdq.prod.is_empty(self.cmdq.cons) {
                break;
            }
            if self.active_gerror().contains(Gerror::CMDQ_ERR) {
                rejected = Some(self.recover_command_error(raw));
                continue;
            }
            if self.clock.now_ns().saturating_sub(start) > bound {
                return Err(Error::Timeout("CMD_SYNC"));
            }
            self.clock.relax();
        }
        match rejected {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// The command at CONS was rejected: overwrite it with a CMD_SYNC (which
    /// cannot fail) and acknowledge, so that the queue resumes (§7.1).
    pub(crate) fn recover_command_error(&mut self, cons_raw: u32) -> Error {
        let error = CommandError::from_cons(cons_raw);
        let slot = self.cmdq.cons.slot();
        let opcode = (self.cmdq.region.read::<u64>(slot * CMD_BYTES) & 0xFF) as u8;
        let replacement = Command::Sync.encode();
        self.cmdq.region.write(slot * CMD_BYTES, replacement.0);
        self.cmdq
            .region
            .clean(slot * CMD_BYTES, CMD_BYTES, self.clean());
        dma_wmb();
        self.counters.command_errors += 1;
        self.counters.global_errors += 1;
        self.last_command_error = Some(error);
        self.ack_gerror(Gerror::CMDQ_ERR);
        Error::CommandRejected { error, opcode }
    }
}
