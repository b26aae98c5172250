//! Stream table entries (SMMUv3 §5.2 STE) and level-1 stream table
//! descriptors (SMMUv3 §5.1 L1STD).

use crate::regs::Granule;

/// SMMUv3 §5.2 Stream Table Entry: 64 bytes, eight little-endian doublewords.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ste(pub [u64; 8]);

const _: () = assert!(core::mem::size_of::<Ste>() == 64);

/// SMMUv3 §5.2 `STE.Config[3:1]`: which stages translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamConfig {
    /// 0b000: every transaction aborts, no event is recorded.
    Abort,
    /// 0b100: both stages bypassed.
    Bypass,
    /// 0b101: stage 1 translates, stage 2 bypassed.
    Stage1,
    /// 0b110: stage 1 bypassed, stage 2 translates.
    Stage2,
    /// 0b111: stage 1 then stage 2 (nested).
    Nested,
}

impl StreamConfig {
    fn encoding(self) -> u64 {
        match self {
            StreamConfig::Abort => 0b000,
            StreamConfig::Bypass => 0b100,
            StreamConfig::Stage1 => 0b101,
            StreamConfig::Stage2 => 0b110,
            StreamConfig::Nested => 0b111,
        }
    }
}

/// STE word 0: `V[0]`.
const STE0_V: u64 = 1 << 0;
/// STE word 0: `Config[3:1]`.
const STE0_CONFIG_SHIFT: u32 = 1;
/// STE word 0: `S1ContextPtr[51:6]` (64-byte aligned CD address).
const STE0_S1_CONTEXT_PTR_MASK: u64 = ((1 << 52) - 1) & !0x3F;
/// STE word 1: `S1CIR[3:2]`, `S1COR[5:4]`, `S1CSH[7:6]`: CD fetch attributes.
const STE1_S1CIR_SHIFT: u32 = 2;
const STE1_S1COR_SHIFT: u32 = 4;
const STE1_S1CSH_SHIFT: u32 = 6;
/// STE word 1: `S1STALLD[27]`, stage-1 stalls disabled: a CD with S = 1
/// terminates instead of stalling.
const STE1_S1STALLD: u64 = 1 << 27;
/// STE word 1: `SHCFG[45:44]` = 0b01, use the incoming shareability.
const STE1_SHCFG_INCOMING: u64 = 1 << 44;
/// STE word 2: `S2VMID[15:0]`.
const STE2_S2VMID_MASK: u64 = 0xFFFF;
/// STE word 2: the VTCR fields `S2T0SZ[37:32]`, `S2SL0[39:38]`, `S2IR0[41:40]`,
/// `S2OR0[43:42]`, `S2SH0[45:44]`, `S2TG[47:46]`, `S2PS[50:48]`.
const STE2_S2T0SZ_SHIFT: u32 = 32;
const STE2_S2SL0_SHIFT: u32 = 38;
const STE2_S2IR0_SHIFT: u32 = 40;
const STE2_S2OR0_SHIFT: u32 = 42;
const STE2_S2SH0_SHIFT: u32 = 44;
const STE2_S2TG_SHIFT: u32 = 46;
const STE2_S2PS_SHIFT: u32 = 48;
/// STE word 2: `S2AA64[51]` (QEMU aborts on 0, docs/QEMU.md §6.3).
const STE2_S2AA64: u64 = 1 << 51;
/// STE word 2: `S2R[58]`, record stage-2 faults.
const STE2_S2R: u64 = 1 << 58;
/// STE word 3: `S2TTB[51:4]`.
const STE3_S2TTB_MASK: u64 = ((1 << 52) - 1) & !0xF;

/// Normal write-back cacheable (SMMUv3 §5.2 S1CIR/S2IR0 encoding 0b01).
const WRITE_BACK: u64 = 1;
/// Inner shareable (SMMUv3 §5.2 S1CSH/S2SH0 encoding 0b11).
const INNER_SHAREABLE: u64 = 3;

/// The stage-2 translation regime of an STE (SMMUv3 §5.2 STE VTCR fields,
/// S2TTB; ARM ARM D8.2 VTCR_EL2 semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Config {
    /// S2VMID.
    pub vmid: u16,
    /// Root table physical address (S2TTB).
    pub root: u64,
    /// S2TG.
    pub granule: Granule,
    /// Input address bits: S2T0SZ = 64 - ias_bits.
    pub ias_bits: u32,
    /// Level the walk starts at (0..=3).
    pub start_level: u32,
    /// S2PS encoding (same as IDR5.OAS).
    pub ps_encoding: u32,
}

impl Stage2Config {
    /// S2SL0 encoding (ARM ARM D8.2 VTCR_EL2.SL0): 4K: 0 = level 2, 1 = level 1,
    /// 2 = level 0; 16K/64K: 0 = level 3, 1 = level 2, 2 = level 1.
    pub fn sl0(&self) -> Option<u64> {
        let deepest: u32 = match self.granule {
            Granule::K4 => 2,
            Granule::K16 | Granule::K64 => 3,
        };
        let sl0 = deepest.checked_sub(self.start_level)?;
        (sl0 <= 2).then_some(u64::from(sl0))
    }
}

/// Why an STE could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteError {
    /// The stage-2 start level is not expressible in S2SL0 for the granule.
    StartLevel,
    /// An address is not aligned as the field requires.
    Misaligned,
}

impl Ste {
    /// V = 0: the SMMU terminates the stream's transactions and records
    /// C_BAD_STE (§5.2 V; §7.3.4).
    pub const INVALID: Ste = Ste([0; 8]);

    fn valid(config: StreamConfig) -> Ste {
        let mut ste = Ste::default();
        ste.0[0] = STE0_V | (config.encoding() << STE0_CONFIG_SHIFT);
        ste
    }

    /// Words 0-1 of the STE a task hands `hwpt_alloc` for a nested stage 1
    /// it owns (as Linux `iommu_hwpt_arm_smmuv3`): V, Config = stage 1
    /// translates, S1ContextPtr = the stage-2 input address (IPA) of its one
    /// CD (S1Fmt = 0, S1CDMax = 0).
    pub fn guest_stage1(cd_ipa: u64) -> Result<[u64; 2], SteError> {
        if cd_ipa & !STE0_S1_CONTEXT_PTR_MASK != 0 {
            return Err(SteError::Misaligned);
        }
        Ok([Ste::valid(StreamConfig::Stage1).0[0] | cd_ipa, 0])
    }

    /// Valid, Config = abort: silent termination (§5.2 Config 0b000).
    pub fn abort() -> Ste {
        Ste::valid(StreamConfig::Abort)
    }

    /// Valid, Config = bypass with incoming attributes (§5.2 Config 0b100).
    pub fn bypass() -> Ste {
        let mut ste = Ste::valid(StreamConfig::Bypass);
        ste.0[1] = STE1_SHCFG_INCOMING;
        ste
    }

    /// Stage 1 through the single context descriptor at `cd` (S1Fmt = linear,
    /// S1CDMax = 0: no substreams), optionally nested over `stage2`.
    pub fn translate(cd: Option<u64>, stage2: Option<&Stage2Config>) -> Result<Ste, SteError> {
        let config = match (cd, stage2) {
            (None, None) => return Ok(Ste::bypass()),
            (Some(_), None) => StreamConfig::Stage1,
            (None, Some(_)) => StreamConfig::Stage2,
            (Some(_), Some(_)) => StreamConfig::Nested,
        };
        let mut ste = Ste::valid(config);
        ste.0[1] = STE1_SHCFG_INCOMING;
        if let Some(cd) = cd {
            if cd & !STE0_S1_CONTEXT_PTR_MASK != 0 {
                return Err(SteError::Misaligned);
            }
            ste.0[0] |= cd;
            ste.0[1] |= (WRITE_BACK << STE1_S1CIR_SHIFT)
                | (WRITE_BACK << STE1_S1COR_SHIFT)
                | (INNER_SHAREABLE << STE1_S1CSH_SHIFT);
        }
        if let Some(s2) = stage2 {
            if s2.root & !STE3_S2TTB_MASK != 0 {
                return Err(SteError::Misaligned);
            }
            let sl0 = s2.sl0().ok_or(SteError::StartLevel)?;
            ste.0[2] = (u64::from(s2.vmid) & STE2_S2VMID_MASK)
                | (u64::from(64 - s2.ias_bits) << STE2_S2T0SZ_SHIFT)
                | (sl0 << STE2_S2SL0_SHIFT)
                | (WRITE_BACK << STE2_S2IR0_SHIFT)
                | (WRITE_BACK << STE2_S2OR0_SHIFT)
                | (INNER_SHAREABLE << STE2_S2SH0_SHIFT)
                | (s2.granule.tg0() << STE2_S2TG_SHIFT)
                | (u64::from(s2.ps_encoding & 0b111) << STE2_S2PS_SHIFT)
                | STE2_S2AA64
                | STE2_S2R;
            ste.0[3] = s2.root;
        }
        Ok(ste)
    }

    /// Forbids stage-1 stalls (S1STALLD; for an SMMU whose
    /// IDR0.STALL_MODEL is 0b00, where it is legal): a stalled transaction
    /// waits for a CMD_RESUME this kernel never sends, and a task-owned CD
    /// (nesting) could ask for stalls. Linux `arm_smmu_make_cdtable_ste`
    /// sets it whenever the master has not enabled stalls.
    pub fn with_stalls_disabled(mut self) -> Ste {
        if matches!(
            self.config(),
            Some(StreamConfig::Stage1 | StreamConfig::Nested)
        ) {
            self.0[1] |= STE1_S1STALLD;
        }
        self
    }

    /// The CD-fetch (S1CIR/S1COR/S1CSH) and stage-2 walk (S2IR0/S2OR0/S2SH0)
    /// attributes of `walk`, for the fields this STE's configuration uses.
    pub fn with_walk(mut self, walk: crate::regs::Walk) -> Ste {
        let (cache, share) = walk.attributes();
        let (cache, share) = (u64::from(cache), u64::from(share));
        if matches!(
            self.config(),
            Some(StreamConfig::Stage1 | StreamConfig::Nested)
        ) {
            self.0[1] &=
                !((3 << STE1_S1CIR_SHIFT) | (3 << STE1_S1COR_SHIFT) | (3 << STE1_S1CSH_SHIFT));
            self.0[1] |= (cache << STE1_S1CIR_SHIFT)
                | (cache << STE1_S1COR_SHIFT)
                | (share << STE1_S1CSH_SHIFT);
        }
        if matches!(
            self.config(),
            Some(StreamConfig::Stage2 | StreamConfig::Nested)
        ) {
            self.0[2] &=
                !((3 << STE2_S2IR0_SHIFT) | (3 << STE2_S2OR0_SHIFT) | (3 << STE2_S2SH0_SHIFT));
            self.0[2] |= (cache << STE2_S2IR0_SHIFT)
                | (cache << STE2_S2OR0_SHIFT)
                | (share << STE2_S2SH0_SHIFT);
        }
        self
    }

    /// Whether stage-1 stalls are forbidden (S1STALLD).
    pub fn stalls_disabled(&self) -> bool {
        self.0[1] & STE1_S1STALLD != 0
    }

    /// V: the STE is valid.
    pub fn is_valid(&self) -> bool {
        self.0[0] & STE0_V != 0
    }

    /// The Config field, if it is one of the architected encodings.
    pub fn config(&self) -> Option<StreamConfig> {
        match (self.0[0] >> STE0_CONFIG_SHIFT) & 0b111 {
            0b000 => Some(StreamConfig::Abort),
            0b100 => Some(StreamConfig::Bypass),
            0b101 => Some(StreamConfig::Stage1),
            0b110 => Some(StreamConfig::Stage2),
            0b111 => Some(StreamConfig::Nested),
            _ => None,
        }
    }

    /// S2VMID.
    pub fn vmid(&self) -> u16 {
        (self.0[2] & STE2_S2VMID_MASK) as u16
    }
}

/// SMMUv3 §5.1 Level-1 Stream Table Descriptor: `L2Ptr[51:6]`, `Span[4:0]`
/// (Span = SPLIT + 1 for a full level-2 table, 0 = invalid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L1Std(pub u64);

const _: () = assert!(core::mem::size_of::<L1Std>() == 8);

impl L1Std {
    const SPAN_MASK: u64 = 0x1F;
    const L2PTR_MASK: u64 = ((1 << 52) - 1) & !0x3F;

    /// A descriptor for the level-2 table at `l2_table` of `2^(split)` STEs; `None` when they do not fit the encoding.
    pub fn new(l2_table: u64, split: u32) -> Option<Self> {
        (l2_table & !Self::L2PTR_MASK == 0)
            .then(|| Self(l2_table | (u64::from(split + 1) & Self::SPAN_MASK)))
    }

    /// Span: log2 of the level-2 table's STEs, plus one.
    pub fn span(&self) -> u32 {
        (self.0 & Self::SPAN_MASK) as u32
    }

    /// L2Ptr: the level-2 table.
    pub fn l2_table(&self) -> u64 {
        self.0 & Self::L2PTR_MASK
    }
}

/// A malformed STE request is the caller's error.
impl From<SteError> for iommu::IommuError {
    fn from(_: SteError) -> Self {
        iommu::IommuError::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_and_bypass_golden() {
        assert_eq!(Ste::abort().0, [1, 0, 0, 0, 0, 0, 0, 0]);
        // V | Config 0b100 << 1 = 0b1001; SHCFG = 1 at bit 44.
        assert_eq!(Ste::bypass().0[0], 0x9);
        assert_eq!(Ste::bypass().0[1], 1 << 44);
        assert!(!Ste::INVALID.is_valid());
        assert_eq!(Ste::abort().config(), Some(StreamConfig::Abort));
    }

    #[test]
    fn stage1_golden() {
        let ste = Ste::translate(Some(0x4008_1000), None).unwrap();
        // V | Config 0b101 << 1 = 0xB; CD pointer in place.
        assert_eq!(ste.0[0], 0x4008_1000 | 0xB);
        // S1CIR = 1 (bit 2), S1COR = 1 (bit 4), S1CSH = 3 (bits 7:6), SHCFG = 1.
        assert_eq!(ste.0[1], (1 << 44) | 0b1101_0100);
        assert_eq!(ste.0[2], 0);
        assert_eq!(ste.config(), Some(StreamConfig::Stage1));
    }

    #[test]
    fn guest_stage1_golden() {
        // V | Config 0b101 << 1 = 0xB, S1ContextPtr = the CD's IPA; word 1 zero.
        assert_eq!(Ste::guest_stage1(0x1_0000_2000), Ok([0x1_0000_200B, 0]));
        assert_eq!(Ste::guest_stage1(0x1020), Err(SteError::Misaligned));
        assert_eq!(Ste::guest_stage1(1 << 52), Err(SteError::Misaligned));
    }

    #[test]
    fn stage2_golden() {
        let s2 = Stage2Config {
            vmid: 7,
            root: 0x4010_0000,
            granule: Granule::K4,
            ias_bits: 40,
            start_level: 1,
            ps_encoding: 4,
        };
        let ste = Ste::translate(None, Some(&s2)).unwrap();
        assert_eq!(ste.0[0], 0xD);
        // S2TG = 0 (4K).
        let expected = 7
            | (24 << 32)          // S2T0SZ = 64 - 40
            | (1 << 38)           // SL0 = 1: level 1 for 4K
            | (1 << 40)           // S2IR0 WB
            | (1 << 42)           // S2OR0 WB
            | (3 << 44)           // S2SH0 inner shareable
            | (4 << 48)           // S2PS 44 bits
            | (1 << 51)           // S2AA64
            | (1 << 58); // S2R
        assert_eq!(ste.0[2], expected);
        assert_eq!(ste.0[3], 0x4010_0000);
        assert_eq!(ste.vmid(), 7);
    }

    #[test]
    fn nested_sets_both_stages_and_64k_sl0() {
        let s2 = Stage2Config {
            vmid: 1,
            root: 0x4000_0000,
            granule: Granule::K64,
            ias_bits: 42,
            start_level: 2,
            ps_encoding: 4,
        };
        let ste = Ste::translate(Some(0x5000_0040), Some(&s2)).unwrap();
        assert_eq!(ste.config(), Some(StreamConfig::Nested));
        assert_eq!((ste.0[2] >> 38) & 3, 1, "64K level 2 is SL0 = 1");
        assert_eq!((ste.0[2] >> 46) & 3, 1, "64K is S2TG = 1");
    }

    #[test]
    fn rejects_bad_start_level_and_alignment() {
        let s2 = Stage2Config {
            vmid: 1,
            root: 0x4000_0000,
            granule: Granule::K4,
            ias_bits: 40,
            start_level: 3,
            ps_encoding: 4,
        };
        assert_eq!(Ste::translate(None, Some(&s2)), Err(SteError::StartLevel));
        assert_eq!(
            Ste::translate(Some(0x4000_0008), None),
            Err(SteError::Misaligned)
        );
    }

    #[test]
    fn l1std_golden() {
        let desc = L1Std::new(0x4020_0000, 8).unwrap();
        assert_eq!(desc.0, 0x4020_0009);
        assert_eq!(desc.span(), 9);
        assert_eq!(desc.l2_table(), 0x4020_0000);
        assert_eq!(L1Std::new(0x4020_0010, 8), None);
    }
}
