//! The stream table and what it points at (SMMUv3 §5): a stream table entry
//! per StreamID ([`ste`], §5.2) selects the translation of that stream, and
//! a stage-1 context descriptor ([`cd`], §5.4) holds its stage-1 table.
//! VT-d's root and context entries and AMD-Vi's device table entry do the
//! same job in their drivers' `device_table.rs`.

pub mod cd;
pub mod ste;

use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

use iommu_kit::DmaBuffer;

use crate::command::Command;
use crate::hardware::{Error, STE_BYTES, Smmu, StreamTable, TWO_LEVEL_SPLIT, alloc_region};
use ste::{L1Std, Ste, StreamConfig};

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
}

/// Which STE words the SMMU reads for a configuration (SMMUv3 §5.2 and the
/// "used bits" rule of hitless updates, §3.21.3): a word it does not read may
/// change at any time.
fn used_words(ste: &Ste) -> u8 {
    if !ste.is_valid() {
        return 0b1;
    }
    match ste.config() {
        Some(StreamConfig::Abort) | None => 0b1,
        Some(StreamConfig::Bypass) | Some(StreamConfig::Stage1) => 0b11,
        Some(StreamConfig::Stage2) | Some(StreamConfig::Nested) => 0b1111,
    }
}

/// The steps of an STE update: which words to write, then whether a
/// single-word switch suffices (hitless) or an abort step is needed first.
#[derive(Debug, PartialEq, Eq)]
pub enum SteUpdate {
    /// Write the unused words, then this one word: one CFGI_STE + CMD_SYNC.
    Hitless { switch_word: Option<usize> },
    /// Word 0 to "abort", sync, every other word, word 0, sync.
    ThroughAbort,
}

/// Decides how to move a live STE from `current` to `target` without a
/// window in which it bypasses or uses a torn mix of both.
pub fn plan_ste_update(current: &Ste, target: &Ste) -> SteUpdate {
    let used = used_words(current);
    let differing: Vec<usize> = (0..8)
        .filter(|&i| used & (1 << i) != 0 && current.0[i] != target.0[i])
        .collect();
    match differing.as_slice() {
        [] => SteUpdate::Hitless { switch_word: None },
        [one] => SteUpdate::Hitless {
            switch_word: Some(*one),
        },
        _ => SteUpdate::ThroughAbort,
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
            fence(Ordering::SeqCst);
            if let StreamTable::TwoLevel { l1, l2, .. } = &mut self.strtab {
                l1.write::<u64>(index * 8, desc.0);
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
        match plan_ste_update(&current, target) {
            SteUpdate::Hitless { switch_word } => {
                let used = used_words(&current);
                {
                    let slot = self.ste_slot(sid)?;
                    for i in (0..8).filter(|i| used & (1 << i) == 0) {
                        slot.write_word(i, target.0[i]);
                    }
                    fence(Ordering::SeqCst);
                    if let Some(i) = switch_word {
                        slot.write_word(i, target.0[i]);
                    }
                }
                self.execute(&[cfgi])
            }
            SteUpdate::ThroughAbort => {
                {
                    let slot = self.ste_slot(sid)?;
                    slot.write_word(0, Ste::abort().0[0]);
                }
                self.execute(&[cfgi])?;
                {
                    let slot = self.ste_slot(sid)?;
                    for i in 1..8 {
                        slot.write_word(i, target.0[i]);
                    }
                    fence(Ordering::SeqCst);
                    slot.write_word(0, target.0[0]);
                }
                self.execute(&[cfgi])
            }
        }
    }

    /// Writes the abort configuration into word 0 of the STE of `sid` without
    /// telling the SMMU (no CFGI_STE): for when the command queue is hung
    /// and an STE update may have stopped half-way. Abort reads only word 0
    /// (§5.2), so the entry is whole whatever the other words hold.
    pub fn abort_ste_unsynced(&mut self, sid: u32) {
        if let Some(phys) = self.ste_phys(sid) {
            let slot = match &self.strtab {
                StreamTable::Linear { region, .. } => Some(region),
                StreamTable::TwoLevel { l2, .. } => l2
                    .get((sid >> TWO_LEVEL_SPLIT) as usize)
                    .and_then(Option::as_ref),
            };
            if let Some(region) = slot {
                let word = ((phys - region.phys()) / 8) as usize;
                fence(Ordering::SeqCst);
                region.write::<u64>(word * 8, Ste::abort().0[0]);
                fence(Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::Granule;
    use ste::Stage2Config;

    fn s2(vmid: u16) -> Ste {
        Ste::translate(
            None,
            Some(&Stage2Config {
                vmid,
                root: 0x4000_0000,
                granule: Granule::K4,
                ias_bits: 40,
                start_level: 1,
                ps_encoding: 4,
            }),
        )
        .unwrap()
    }

    #[test]
    fn from_invalid_or_abort_is_one_switch_of_word_0() {
        let target = Ste::translate(Some(0x4000_0040), None).unwrap();
        assert_eq!(
            plan_ste_update(&Ste::INVALID, &target),
            SteUpdate::Hitless {
                switch_word: Some(0)
            }
        );
        assert_eq!(
            plan_ste_update(&Ste::abort(), &s2(1)),
            SteUpdate::Hitless {
                switch_word: Some(0)
            }
        );
    }

    #[test]
    fn to_abort_is_one_switch_and_between_domains_goes_through_abort() {
        assert_eq!(
            plan_ste_update(&s2(1), &Ste::abort()),
            SteUpdate::ThroughAbort,
            "word 1 and 2 differ as well"
        );
        assert_eq!(
            plan_ste_update(&Ste::bypass(), &Ste::abort()),
            SteUpdate::ThroughAbort
        );
        // Same config, only the VMID (word 2) changes: hitless.
        assert_eq!(
            plan_ste_update(&s2(1), &s2(2)),
            SteUpdate::Hitless {
                switch_word: Some(2)
            }
        );
        // Stage 1 with a new CD pointer: word 0 only.
        let a = Ste::translate(Some(0x4000_0040), None).unwrap();
        let b = Ste::translate(Some(0x4000_0080), None).unwrap();
        assert_eq!(
            plan_ste_update(&a, &b),
            SteUpdate::Hitless {
                switch_word: Some(0)
            }
        );
        assert_eq!(
            plan_ste_update(&a, &a),
            SteUpdate::Hitless { switch_word: None }
        );
    }
}
