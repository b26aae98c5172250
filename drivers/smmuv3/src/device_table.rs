//! The stream table and what it points at (SMMUv3 §5): a stream table entry
//! per StreamID ([`ste`], §5.2) selects the translation of that stream, and
//! a stage-1 context descriptor ([`cd`], §5.4) holds its stage-1 table.
//! VT-d's root and context entries and AMD-Vi's device table entry do the
//! same job in their drivers' `device_table.rs`.

pub mod cd;
pub mod ste;

use alloc::vec::Vec;

use ste::{Ste, StreamConfig};

/// Which STE words the SMMU reads for a configuration (SMMUv3 §5.2 and the
/// "used bits" rule of hitless updates, §3.21.3): a word it does not read may
/// change at any time. Stage 1 alone reads word 2 too: with StreamWorld
/// NS-EL1 its TLB entries are tagged with S2VMID (§5.2 S2VMID; Linux
/// `arm_smmu_get_ste_used`), so rewriting it under a live entry would retag
/// them mid-flight.
pub(crate) fn used_words(ste: &Ste) -> u8 {
    if !ste.is_valid() {
        return 0b1;
    }
    match ste.config() {
        Some(StreamConfig::Abort) | None => 0b1,
        Some(StreamConfig::Bypass) => 0b11,
        Some(StreamConfig::Stage1) => 0b111,
        Some(StreamConfig::Stage2) | Some(StreamConfig::Nested) => 0b1111,
    }
}

/// The steps of an STE update: which words to write, then whether a
/// single-word switch suffices (hitless) or an abort step is needed first.
#[derive(Debug, PartialEq, Eq)]
pub enum SteUpdate {
    /// Write the unused words, then this one word: one CFGI_STE + CMD_SYNC.
    Hitless {
        /// The one word whose write switches the entry (`None`: nothing changes).
        switch_word: Option<usize>,
    },
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

    /// Issue 16 (SMMUv3 §5.2 S2VMID, §3.21.3; Linux `arm_smmu_get_ste_used`):
    /// a stage-1 STE is tagged with its S2VMID, so moving it to a nested one
    /// with another VMID changes two used words (0 and 2): that goes through
    /// abort, never by rewriting word 2 under the live entry first.
    #[test]
    fn hw_stage1_to_nested_never_rewrites_the_vmid_of_a_live_entry() {
        let stage1 = Ste::translate(Some(0x4000_0040), None).unwrap();
        let nested = Ste::translate(
            Some(0x4000_0040),
            Some(&Stage2Config {
                vmid: 7,
                root: 0x4000_0000,
                granule: Granule::K4,
                ias_bits: 40,
                start_level: 1,
                ps_encoding: 4,
            }),
        )
        .unwrap();
        assert_eq!(plan_ste_update(&stage1, &nested), SteUpdate::ThroughAbort);
    }
}
