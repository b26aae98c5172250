//! The instance's root, context and PASID tables (VT-d 3.4 chapter 9):
//! where a requester's entries live and how they change, each change
//! published valid-word-last and followed by the invalidation it owes. The
//! entry formats are `crate::device_table`'s.

use super::*;
use crate::device_table::{
    ContextEntry, PASID_TABLE_ENTRIES, PasidDirectoryEntry, PasidEntry, RootEntry,
    ScalableContextEntry, ScalableRootEntry, TranslationType, scalable_context_slot,
};

impl<R: Registers> Hardware<'_, R> {
    pub(crate) fn context_table(&mut self, bus: u8) -> Result<Page, Error> {
        if let Some(page) = self.context_tables.get(&bus) {
            return Ok(*page);
        }
        // Scalable mode: lower (devfn 0-127) and upper (128-255) tables.
        let pages = if self.mode.is_scalable() { 2 } else { 1 };
        let table = alloc_page(&self.env, pages * PAGE)?;
        self.flush_cache(table);
        let offset = usize::from(bus) * size_of::<RootEntry>();
        let (low, high) = if self.mode.is_scalable() {
            let entry = ScalableRootEntry::new(table.phys(), table.phys() + PAGE as u64);
            (entry.low, entry.high)
        } else {
            let entry = RootEntry::new(table.phys());
            (entry.low, entry.high)
        };
        // Present bit (low word) last.
        self.publish(self.root, offset, &[low, high], None);
        self.context_tables.insert(bus, table);
        Ok(table)
    }

    /// Byte offset of `devfn`'s context entry in its bus's table allocation.
    pub(crate) fn context_offset(&self, devfn: u8) -> usize {
        if self.mode.is_scalable() {
            let (upper, index) = scalable_context_slot(devfn);
            usize::from(upper) * PAGE + index * size_of::<ScalableContextEntry>()
        } else {
            usize::from(devfn) * size_of::<ContextEntry>()
        }
    }

    pub(crate) fn pasid_tables(&mut self, sid: u16) -> Result<(Page, Page), Error> {
        if let Some(tables) = self.pasid_tables.get(&sid) {
            return Ok((tables.directory, tables.table));
        }
        let directory = alloc_page(&self.env, PAGE)?;
        let table = match alloc_page(&self.env, PASID_TABLE_ENTRIES * size_of::<PasidEntry>()) {
            Ok(table) => table,
            Err(error) => {
                directory.free(self.env.dma);
                return Err(error);
            }
        };
        // RID_PASID (0) lives in directory slot 0.
        directory.write(0, PasidDirectoryEntry::new(table.phys()).0);
        self.flush_cache(directory);
        self.pasid_tables
            .insert(sid, PasidTables { directory, table });
        Ok((directory, table))
    }

    /// Makes `sid`'s context non-present (the blocked state) and invalidates
    /// what the old domain `did` may have cached.
    pub(crate) fn block(&mut self, sid: u16, did: u16) -> Result<(), Error> {
        let [bus, devfn] = sid.to_be_bytes();
        let table = self.context_table(bus)?;
        let offset = self.context_offset(devfn);
        // Clearing P (first word) alone is atomic for the hardware.
        table.write::<u64>(offset, 0);
        self.clean_range(table, offset, 8);
        self.invalidate_device(sid, did)?;
        if let Some(pasid_table) = self.pasid_tables.get(&sid).map(|tables| tables.table) {
            pasid_table.write::<u64>(0, 0);
            self.clean_range(pasid_table, 0, 8);
        }
        Ok(())
    }

    /// Points `sid`'s context at `translation` with domain id `did`; the
    /// context must be non-present (blocked) now.
    pub(crate) fn install(
        &mut self,
        sid: u16,
        did: u16,
        translation: Translation,
    ) -> Result<(), Error> {
        if translation == Translation::Blocked {
            return Ok(());
        }
        if translation == Translation::PassThrough && !self.ecap.pass_through() {
            return Err(Error::Unsupported("ECAP.PT"));
        }
        let [bus, devfn] = sid.to_be_bytes();
        let table = self.context_table(bus)?;
        let offset = self.context_offset(devfn);
        if self.mode.is_scalable() {
            let (directory, pasid_table) = self.pasid_tables(sid)?;
            let mut entry = match (translation, self.mode) {
                (Translation::Paging(root), Mode::ScalableFirstStage) => {
                    PasidEntry::first_stage(root, self.address_width, did)
                }
                (Translation::Paging(root), _) => {
                    PasidEntry::second_stage(root, self.address_width, did)
                }
                _ => PasidEntry::pass_through(self.address_width, did),
            };
            if matches!(translation, Translation::Paging(_)) && self.page_walks_snoop() {
                entry = entry.with_page_walk_snoop();
            }
            // Present bits (word 0) last: the PASID entry before the context
            // entry that leads to it.
            self.publish(pasid_table, 0, &entry.words, None);
            let context = ScalableContextEntry::new(directory.phys(), 0);
            self.publish(table, offset, &context.words, None);
        } else {
            let entry = match translation {
                Translation::Paging(root) => {
                    ContextEntry::new(TranslationType::Translated, root, self.address_width, did)
                }
                _ => ContextEntry::new(TranslationType::PassThrough, 0, self.address_width, did),
            };
            self.publish(table, offset, &[entry.low, entry.high], None);
        }
        self.invalidate_new_context(sid, did)
    }

    /// Turns second-stage A/D recording (SSADE) on or off in `sid`'s
    /// RID_PASID entry, in place (word 0 is one 64-bit store, which the
    /// hardware reads whole), then invalidates the PASID cache and the
    /// domain's IOTLB, since both may hold the entry and leaves as they were
    /// (Linux `intel_pasid_setup_dirty_tracking`). Scalable second stage
    /// with ECAP.SLADS only.
    pub(crate) fn set_second_stage_dirty(
        &mut self,
        sid: u16,
        did: u16,
        enable: bool,
    ) -> Result<(), Error> {
        if self.mode != Mode::ScalableSecondStage || !self.ecap.second_stage_access_dirty() {
            return Err(Error::Unsupported(
                "ECAP.SLADS in scalable second-stage mode",
            ));
        }
        let table = self
            .pasid_tables
            .get(&sid)
            .map(|tables| tables.table)
            .ok_or(Error::Unsupported("a device without a PASID table"))?;
        let mut entry = PasidEntry::default();
        entry.words[0] = table.read::<u64>(0);
        let entry = entry.with_second_stage_dirty(enable);
        table.write::<u64>(0, entry.words[0]);
        self.clean_range(table, 0, 8);
        self.submit(&[
            Descriptor::pasid_cache(did, crate::device_table::RID_PASID),
            self.domain_iotlb_descriptor(did),
        ])
    }
}
