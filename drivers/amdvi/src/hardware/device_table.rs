//! The instance's device table (AMD IOMMU §2.2.2): each DTE written through
//! the kit's `DmaBuffer::publish` so that the IOMMU never sees a torn entry
//! that grants more than the old or the new one, and invalidated after.
//! The entry format is `crate::device_table`'s.

use super::*;

impl Hardware {
    /// The DTE of a requester in no domain: blocked, with firmware's pass bits.
    pub(crate) fn blocked_dte(&self, device_id: u16) -> Dte {
        let setting = self
            .description
            .requesters
            .binary_search_by_key(&device_id, |r| r.device_id)
            .map(|i| self.description.requesters[i].setting)
            .unwrap_or_default();
        Dte::blocked().with_firmware_setting(setting)
    }

    /// Writes a DTE so that the IOMMU never sees a torn mix that grants more than
    /// either the old or the new entry: quad 0 (V, TV, Mode, root, IR/IW) first
    /// becomes "blocked", then quads 1-3 change, then quad 0 takes its final value.
    pub(crate) fn store_dte(&mut self, device_id: u16, dte: Dte) {
        let offset = usize::from(device_id) * core::mem::size_of::<Dte>();
        // x86 IOMMUs snoop their table reads: nothing to clean.
        self.device_table
            .publish(offset, &dte.0, 0, Some(Dte::blocked().0[0]), None);
    }

    /// The DTE currently in the table.
    pub fn dte(&self, device_id: u16) -> Option<Dte> {
        if u32::from(device_id) >= self.device_table_entries {
            return None;
        }
        let offset = usize::from(device_id) * core::mem::size_of::<Dte>();
        let mut dte = Dte::default();
        for (quad, value) in dte.0.iter_mut().enumerate() {
            *value = self.device_table.read::<u64>(offset + quad * 8);
        }
        Some(dte)
    }

    /// Installs `dte` for `device_id`, preserving its interrupt fields, and
    /// invalidates the cached copy (INVALIDATE_DEVTAB_ENTRY + COMPLETION_WAIT).
    pub(crate) fn install_dma_config(
        &mut self,
        device_id: u16,
        dte: Dte,
        extra: &[Command],
    ) -> Result<(), UnitError> {
        let current = self.dte(device_id).ok_or(UnitError::Invalid)?;
        let mut dte = dte;
        dte.0[2] = current.0[2];
        self.store_dte(device_id, dte);
        let mut commands = Vec::with_capacity(1 + extra.len());
        commands.push(Command::invalidate_devtab_entry(device_id));
        commands.extend_from_slice(extra);
        self.run(&commands)
    }
}
