//! Interrupt remapping (VT-d 3.4 chapter 5): the remapping table entry and
//! the remappable MSI format.

use alloc::collections::BTreeSet;
use core::mem::size_of;

use crate::command::Descriptor;
use crate::hardware::{Error, Hardware, InterruptTable, Invalidator, Registers};
use crate::regs::{self, Global};

/// VT-d 3.4 §9.10 Interrupt Remapping Table Entry, remapped format (IM = 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Irte {
    /// P (0), FPD (1), DM (2), RH (3), TM (4), DLM (7:5), IM (15) = 0,
    /// V (23:16), DST (63:32; xAPIC: APIC id in 47:40).
    pub low: u64,
    /// SID (79:64), SQ (81:80), SVT (83:82).
    pub high: u64,
}
const _: () = assert!(size_of::<Irte>() == 16);

/// §9.10 SVT = 01: verify the full requester id (with SQ = 00).
const VERIFY_REQUESTER: u64 = 0b01 << 18;

impl Irte {
    /// A present, edge-triggered, fixed-delivery, physical-destination entry
    /// for `vector` on xAPIC `apic_id`, accepted only from `requester`.
    pub fn remapped(vector: u8, apic_id: u8, requester: u16) -> Self {
        Self {
            low: 1 | (u64::from(vector) << 16) | (u64::from(apic_id) << 40),
            high: VERIFY_REQUESTER | u64::from(requester),
        }
    }

    pub fn is_present(&self) -> bool {
        self.low & 1 != 0
    }
}

/// VT-d 3.4 §5.1.5.2 Remappable MSI address: 0xFEE (31:20), handle[14:0]
/// (19:5), interrupt format (4) = 1, SHV (3) = 0, handle[15] (2).
pub fn remappable_msi_address(handle: u16) -> u64 {
    0xFEE0_0000 | (u64::from(handle & 0x7FFF) << 5) | (1 << 4) | (u64::from(handle >> 15) << 2)
}

/// Interrupt-remapping table size used by the driver: 256 entries (one page).
pub const TABLE_ENTRIES_LOG2: u8 = 8;

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
        page.publish(offset, &[entry.low, entry.high], 0, Some(0), self.clean());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irte_and_msi_golden() {
        let irte = Irte::remapped(0x31, 0, 0x0020);
        assert_eq!(irte.low, 0x0031_0001);
        assert_eq!(irte.high, 0x0004_0020);
        assert_eq!(Irte::remapped(0x40, 3, 8).low, 0x0000_0300_0040_0001);
        assert_eq!(remappable_msi_address(0), 0xFEE0_0010);
        assert_eq!(remappable_msi_address(5), 0xFEE0_00B0);
        assert_eq!(remappable_msi_address(0x8001), 0xFEE0_0034);
    }
}
