//! The instance's interrupt remapping tables (AMD IOMMU §2.2.5), one per
//! device, and the DTE fields that point at them. The entry format is
//! `crate::interrupt`'s.

use super::*;
use os_services::barrier::dma_wmb;

use crate::device_table::Interrupts;
use crate::interrupt::{Irte32, Target};

/// The interrupt remapping tables of the instance (§2.2.5), one per device.
impl Hardware {
    /// Remaps `device_id`'s interrupts: IRTE `index` delivers to `target`. Allocates
    /// the device's table on first use; INVALIDATE_INTERRUPT_TABLE after the change.
    pub fn remap_interrupt(
        &mut self,
        device_id: u16,
        index: u16,
        target: Target,
    ) -> Result<(), UnitError> {
        if index >= 1 << IRT_LOG2 || u32::from(device_id) >= self.device_table_entries {
            return Err(UnitError::Invalid);
        }
        let irte = Irte32::remapped(target).ok_or(UnitError::Invalid)?;
        if !self.interrupt_tables.contains_key(&device_id) {
            let len = (1usize << IRT_LOG2) * core::mem::size_of::<Irte32>();
            let region = DmaBuffer::alloc(self.dma, len, PAGE_SIZE).ok_or(UnitError::NoMemory)?;
            self.interrupt_tables.insert(
                device_id,
                InterruptTable {
                    region,
                    routes: BTreeSet::new(),
                },
            );
        }
        let table = self.interrupt_tables[&device_id].region;
        self.write_irte(&table, index, irte);
        let current = self.dte(device_id).ok_or(UnitError::Invalid)?;
        let dte = current
            .with_interrupts(Interrupts::Remapped {
                table: table.phys(),
                log2_len: IRT_LOG2,
            })
            .map_err(|_| UnitError::Invalid)?;
        self.store_dte(device_id, dte);
        self.run(&[
            Command::invalidate_devtab_entry(device_id),
            Command::invalidate_interrupt_table(device_id),
        ])
    }

    /// Clears IRTE `index` (RemapEn=0: the interrupt is target-aborted).
    pub fn disable_interrupt(&mut self, device_id: u16, index: u16) -> Result<(), UnitError> {
        let table = self
            .interrupt_tables
            .get(&device_id)
            .ok_or(UnitError::Invalid)?
            .region;
        if index >= 1 << IRT_LOG2 {
            return Err(UnitError::Invalid);
        }
        self.write_irte(&table, index, Irte32::DISABLED);
        self.run(&[Command::invalidate_interrupt_table(device_id)])
    }

    /// Blocks all of `device_id`'s interrupts again and frees its table.
    pub fn block_interrupts(&mut self, device_id: u16) -> Result<(), UnitError> {
        let current = self.dte(device_id).ok_or(UnitError::Invalid)?;
        let dte = current
            .with_interrupts(Interrupts::Blocked)
            .map_err(|_| UnitError::Invalid)?;
        self.store_dte(device_id, dte);
        let result = self.run(&[
            Command::invalidate_devtab_entry(device_id),
            Command::invalidate_interrupt_table(device_id),
        ]);
        if result.is_ok()
            && let Some(table) = self.interrupt_tables.remove(&device_id)
        {
            table.region.free(self.dma);
        }
        result
    }

    /// A 32-bit IRTE is one store: the IOMMU sees the old or the new entry.
    pub(crate) fn write_irte(&self, table: &DmaBuffer, index: u16, irte: Irte32) {
        table.write(usize::from(index) * core::mem::size_of::<Irte32>(), irte.0);
        dma_wmb();
    }
}
