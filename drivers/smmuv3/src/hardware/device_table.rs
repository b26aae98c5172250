//! The instance's stream table (SMMUv3 §3.3): where each STE lives (a
//! level-2 table made on first use) and how an STE changes without a stream
//! ever seeing a torn or bypassing entry (§3.21.3). The entry formats and
//! the update plan are `crate::device_table`'s.

use super::*;
use crate::device_table::ste::Ste;
use crate::device_table::{SteUpdate, plan_ste_update, used_words};

/// Where in the stream table the STE of a StreamID lives.
pub(crate) struct SteSlot<'r> {
    region: &'r DmaBuffer,
    first_word: usize,
}

impl SteSlot<'_> {
    fn read(&self) -> Ste {
        let mut ste = Ste::default();
        for (i, word) in ste.0.iter_mut().enumerate() {
            *word = self.region.read::<u64>((self.first_word + i) * 8);
        }
        ste
    }
    fn write_word(&self, i: usize, value: u64) {
        self.region.write::<u64>((self.first_word + i) * 8, value)
    }
    /// Writes the entry's lines back for an SMMU that does not snoop.
    fn clean(&self, clean: Option<iommu_kit::CacheClean>) {
        self.region.clean(self.first_word * 8, STE_BYTES, clean);
    }
}

/// The stream table of the instance (§3.3): where each STE lives and how it
/// changes without a stream ever seeing a torn or bypassing entry.
impl Smmu<'_> {
    /// Physical address of the STE of `sid`, if its table exists.
    pub fn ste_phys(&self, sid: u32) -> Option<u64> {
        if sid >= 1 << self.strtab.sid_bits() {
            return None;
        }
        let (region, index) = match &self.strtab {
            StreamTable::Linear { region, .. } => (region, sid as usize),
            StreamTable::TwoLevel { l2, .. } => (
                l2.get((sid >> TWO_LEVEL_SPLIT) as usize)?.as_ref()?,
                sid as usize & ((1 << TWO_LEVEL_SPLIT) - 1),
            ),
        };
        Some(region.phys() + (index * STE_BYTES) as u64)
    }

    /// The STE slot of `sid`, creating its level-2 table on demand.
    pub(crate) fn ste_slot(&mut self, sid: u32) -> Result<SteSlot<'_>, Error> {
        if sid >= 1 << self.strtab.sid_bits() {
            return Err(Error::BadStreamId(sid));
        }
        let mut new_l2 = None;
        if let StreamTable::TwoLevel { l2, .. } = &self.strtab {
            let index = (sid >> TWO_LEVEL_SPLIT) as usize;
            if l2[index].is_none() {
                new_l2 = Some(index);
            }
        }
        if let Some(index) = new_l2 {
            // A zeroed level-2 table (every STE V = 0), published through its
            // L1 descriptor only once complete.
            let table = alloc_region(self.dma, STE_BYTES << TWO_LEVEL_SPLIT)?;
            let desc = L1Std::new(table.phys(), TWO_LEVEL_SPLIT).ok_or(Error::Encoding)?;
            let clean = self.clean();
            table.clean(0, table.len(), clean);
            dma_wmb();
            if let StreamTable::TwoLevel { l1, l2, .. } = &mut self.strtab {
                l1.write::<u64>(index * 8, desc.0);
                l1.clean(index * 8, 8, clean);
                l2[index] = Some(table);
            }
            // The L1 descriptor is configuration the SMMU may cache.
            self.submit(&[Command::CfgiSteRange {
                sid: sid & !((1 << TWO_LEVEL_SPLIT) - 1),
                range: (TWO_LEVEL_SPLIT - 1) as u8,
            }])?;
        }
        let slot = match &self.strtab {
            StreamTable::Linear { region, .. } => SteSlot {
                region,
                first_word: sid as usize * 8,
            },
            StreamTable::TwoLevel { l2, .. } => {
                let index = (sid >> TWO_LEVEL_SPLIT) as usize;
                let region = l2[index].as_ref().ok_or(Error::NoMemory)?;
                SteSlot {
                    region,
                    first_word: (sid as usize & ((1 << TWO_LEVEL_SPLIT) - 1)) * 8,
                }
            }
        };
        Ok(slot)
    }

    /// The STE currently installed for `sid`.
    pub fn read_ste(&mut self, sid: u32) -> Result<Ste, Error> {
        Ok(self.ste_slot(sid)?.read())
    }

    /// Installs `target` as the STE of `sid` so that the stream never sees a
    /// torn or bypassing entry (§3.21.3), then makes the SMMU refetch it
    /// (CFGI_STE + CMD_SYNC).
    pub fn write_ste(&mut self, sid: u32, target: &Ste) -> Result<(), Error> {
        let current = self.ste_slot(sid)?.read();
        let cfgi = Command::CfgiSte { sid, leaf: true };
        let clean = self.clean();
        match plan_ste_update(&current, target) {
            SteUpdate::Hitless { switch_word } => {
                let used = used_words(&current);
                {
                    let slot = self.ste_slot(sid)?;
                    for i in (0..8).filter(|i| used & (1 << i) == 0) {
                        slot.write_word(i, target.0[i]);
                    }
                    slot.clean(clean);
                    dma_wmb();
                    if let Some(i) = switch_word {
                        slot.write_word(i, target.0[i]);
                        slot.clean(clean);
                    }
                }
                self.execute(&[cfgi])
            }
            SteUpdate::ThroughAbort => {
                {
                    let slot = self.ste_slot(sid)?;
                    slot.write_word(0, Ste::abort().0[0]);
                    slot.clean(clean);
                }
                self.execute(&[cfgi])?;
                {
                    let slot = self.ste_slot(sid)?;
                    for i in 1..8 {
                        slot.write_word(i, target.0[i]);
                    }
                    slot.clean(clean);
                    dma_wmb();
                    slot.write_word(0, target.0[0]);
                    slot.clean(clean);
                }
                self.execute(&[cfgi])
            }
        }
    }

    /// Writes the abort configuration into word 0 of the STE of `sid` after
    /// an update failed half-way (a hung or rejecting queue). Abort reads only
    /// word 0 (§5.2), so the entry is whole whatever the other words hold. The
    /// SMMU may have cached the new entry already (it consumed the CFGI_STE
    /// but not the CMD_SYNC), so a CFGI_STE is queued behind everything else,
    /// without waiting: no later CMD_SYNC completes before the SMMU dropped
    /// what it cached. If even that cannot be queued, the next batch starts
    /// with CFGI_ALL (§4.3.2; `restart` issues one too).
    pub fn abort_ste_after_failure(&mut self, sid: u32) {
        self.write_abort_word(sid);
        if self
            .submit(&[Command::CfgiSte { sid, leaf: true }])
            .is_err()
        {
            self.owes_cfgi_all.store(true, Ordering::Release);
        }
    }

    fn write_abort_word(&mut self, sid: u32) {
        if let Some(phys) = self.ste_phys(sid) {
            let slot = match &self.strtab {
                StreamTable::Linear { region, .. } => Some(region),
                StreamTable::TwoLevel { l2, .. } => l2
                    .get((sid >> TWO_LEVEL_SPLIT) as usize)
                    .and_then(Option::as_ref),
            };
            if let Some(region) = slot {
                let word = ((phys - region.phys()) / 8) as usize;
                dma_wmb();
                region.write::<u64>(word * 8, Ste::abort().0[0]);
                region.clean(word * 8, 8, self.clean());
                dma_wmb();
            }
        }
    }
}
