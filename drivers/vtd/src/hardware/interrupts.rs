//! The instance's interrupt-remapping table (VT-d 3.4 §5.1, §9.10): the
//! table, its entries and their invalidation. The entry format is
//! `crate::interrupt`'s.

use super::*;
use crate::command::Descriptor;
use crate::interrupt::{Irte, TABLE_ENTRIES_LOG2};

/// The interrupt-remapping table of the instance (§5.1, §9.10).
impl<R: Registers> Hardware<'_, R> {
    pub(crate) fn enable_interrupt_remapping(&mut self) -> Result<(), Error> {
        if matches!(self.invalidator, Invalidator::Registers) {
            // §6.5.2: interrupt-entry-cache invalidation exists only as a descriptor.
            return Err(Error::Unsupported(
                "interrupt remapping without queued invalidation",
            ));
        }
        let entries = 1usize << TABLE_ENTRIES_LOG2;
        let page = crate::hardware::alloc_page(&self.env, entries * size_of::<Irte>())?;
        self.flush_cache(page);
        self.write64(
            regs::IRTA,
            regs::irt_address(page.phys(), false, TABLE_ENTRIES_LOG2),
        );
        self.interrupts = Some(InterruptTable {
            page,
            used: alloc::vec![false; entries],
            routes: BTreeSet::new(),
        });
        self.global_command(Global::IRT_POINTER, true)?;
        self.submit(&[Descriptor::interrupt_entry_cache(None)])?;
        self.global_command(Global::INTERRUPT_REMAPPING, true)?;
        // Compatibility-format interrupts bypass the table (§5.1.2.1): they
        // are blocked only while GSTS.CFIS is clear, which firmware may have
        // left set (Linux `iommu_enable_irq_remapping` clears it too). QEMU
        // does not model CFI: it reports CFIS clear and still lets them pass.
        if self.status().contains(Global::COMPATIBILITY_FORMAT) {
            self.global_command(Global::COMPATIBILITY_FORMAT, false)?;
        }
        Ok(())
    }

    /// Takes a free interrupt-remapping table index.
    pub fn alloc_interrupt(&mut self) -> Option<u16> {
        let table = self.interrupts.as_mut()?;
        let index = table.used.iter().position(|used| !used)?;
        table.used[index] = true;
        Some(index as u16)
    }

    /// Writes IRTE `index` and invalidates its interrupt-entry-cache entry.
    pub fn set_interrupt(&mut self, index: u16, entry: Irte) -> Result<(), Error> {
        let table = self
            .interrupts
            .as_ref()
            .ok_or(Error::Unsupported("interrupt remapping"))?;
        let page = table.page;
        if !table.used.get(usize::from(index)).copied().unwrap_or(false) {
            return Err(Error::Invalid);
        }
        let offset = usize::from(index) * size_of::<Irte>();
        // Not present while the entry is half written (§9.10).
        self.publish(page, offset, &[entry.low, entry.high], Some(0));
        self.submit(&[Descriptor::interrupt_entry_cache(Some(index))])
    }

    /// Makes IRTE `index` non-present (interrupts through it are blocked and
    /// reported) and invalidates it; the index stays allocated.
    pub fn clear_interrupt(&mut self, index: u16) -> Result<(), Error> {
        self.set_interrupt(index, Irte::default())
    }

    /// Frees an index after clearing it.
    pub fn free_interrupt(&mut self, index: u16) -> Result<(), Error> {
        self.clear_interrupt(index)?;
        if let Some(table) = self.interrupts.as_mut() {
            table.used[usize::from(index)] = false;
        }
        Ok(())
    }
}
