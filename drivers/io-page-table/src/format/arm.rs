//! ARM VMSAv8-64 long-descriptor (LPAE) translation tables, stage 1 and stage 2,
//! 4 KiB / 16 KiB / 64 KiB granules, as walked by an SMMUv3.
//!
//! ARM ARM (DDI 0487) D8.3 "Translation table descriptor formats" and D8.2
//! "Translation table walk" (level ranges per granule and input size); SMMUv3
//! spec (IHI 0070) §5.4 CD (T0SZ, TG0, IPS, IR0/OR0/SH0) and §5.2 STE (S2T0SZ,
//! S2SL0, S2TG, S2PS). Output addresses up to 48 bits (no FEAT_LPA/LPA2). With
//! [`ArmConfig::contiguous`], aligned runs of pages or blocks carry the
//! Contiguous bit (D8.6.1), so an SMMU that honours it holds each run in one TLB
//! entry. Our level 0 is ARM level 3.

use super::{Format, Geometry, bits};
use crate::error::{ConfigError, MapError};
use crate::prot::Prot;

/// D8.3 bit 0: valid.
pub const ARM_VALID: u64 = 1 << 0;
/// D8.3 bits 1:0 = 0b11: table descriptor (levels 0-2) or page descriptor (level 3).
pub const ARM_TABLE_OR_PAGE: u64 = 0b11;
/// D8.3 bits 1:0 = 0b01: block descriptor.
pub const ARM_BLOCK: u64 = 0b01;
/// Bit 1 distinguishes table (1) from block (0) above level 3.
pub const ARM_TYPE_TABLE: u64 = 1 << 1;
/// Stage 1 lower attributes bits 4:2: AttrIndx, the MAIR byte to use.
pub const ARM_S1_ATTRINDX_SHIFT: u32 = 2;
/// Stage 1 bit 6: `AP[1]`, EL0 (unprivileged) access allowed.
pub const ARM_S1_AP_EL0: u64 = 1 << 6;
/// Stage 1 bit 7: `AP[2]`, read-only.
pub const ARM_S1_AP_RDONLY: u64 = 1 << 7;
/// Stage 2 bits 5:2: MemAttr.
pub const ARM_S2_MEMATTR_SHIFT: u32 = 2;
/// Stage 2 bit 6: `S2AP[0]`, reads allowed.
pub const ARM_S2_AP_READ: u64 = 1 << 6;
/// Stage 2 bit 7: `S2AP[1]`, writes allowed.
pub const ARM_S2_AP_WRITE: u64 = 1 << 7;
/// Bits 9:8: SH, shareability.
pub const ARM_SH_SHIFT: u32 = 8;
/// SH = 0b10: outer shareable.
pub const ARM_SH_OUTER: u64 = 0b10;
/// SH = 0b11: inner shareable.
pub const ARM_SH_INNER: u64 = 0b11;
/// Bit 10: AF, access flag (preset: SMMUs without HTTU fault on AF = 0).
pub const ARM_AF: u64 = 1 << 10;
/// Stage 1 bit 11: nG, not global (TLB entries tagged with the ASID).
pub const ARM_S1_NG: u64 = 1 << 11;
/// Stage 1 bit 53: PXN.
pub const ARM_S1_PXN: u64 = 1 << 53;
/// Stage 1 bit 54: UXN/XN; stage 2 bit 54: `XN[1]` (not executable at any EL).
pub const ARM_XN: u64 = 1 << 54;
/// Bits 47:12 hold the output address (the granule's low bits are zero).
pub const ARM_ADDR: u64 = bits(47, 12);
/// Block and page descriptors bit 52: Contiguous, one of an aligned run of
/// entries with the same attributes and adjacent output addresses (D8.6.1).
pub const ARM_CONTIGUOUS: u64 = 1 << 52;
/// DBM: dirty bit modifier (D8.4.6): with hardware dirty state management
/// (SMMUv3 HTTU, CD.HD / STE.S2HD), a write through a writable-clean leaf
/// (stage 1: `AP[2]` = 1; stage 2: `S2AP[1]` = 0) makes it writable-dirty
/// instead of faulting.
pub const ARM_DBM: u64 = 1 << 51;

/// MAIR attribute index for Normal write-back read/write-allocate memory.
pub const MAIR_IDX_CACHED: u64 = 0;
/// MAIR attribute index for Normal non-cacheable memory.
pub const MAIR_IDX_NONCACHED: u64 = 1;
/// MAIR attribute index for Device-nGnRE memory (MSI doorbells, MMIO).
pub const MAIR_IDX_DEVICE: u64 = 2;
/// MAIR attribute byte: Normal, inner and outer write-back non-transient RW-allocate.
pub const MAIR_ATTR_CACHED: u8 = 0xff;
/// MAIR attribute byte: Normal, inner and outer non-cacheable.
pub const MAIR_ATTR_NONCACHED: u8 = 0x44;
/// MAIR attribute byte: Device-nGnRE.
pub const MAIR_ATTR_DEVICE: u8 = 0x04;

/// Stage 2 MemAttr (D8.5.5, without FWB): Normal outer WB, inner WB.
pub const S2_MEMATTR_CACHED: u64 = 0b1111;
/// Stage 2 MemAttr: Normal outer NC, inner NC.
pub const S2_MEMATTR_NONCACHED: u64 = 0b0101;
/// Stage 2 MemAttr: Device-nGnRE.
pub const S2_MEMATTR_DEVICE: u64 = 0b0001;

/// Translation stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Stage 1 (CD.TTB0, ASID-tagged).
    Stage1,
    /// Stage 2 (STE.S2TTB, VMID-tagged).
    Stage2,
}

/// Translation granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granule {
    /// 4 KiB pages, 512-entry tables.
    K4,
    /// 16 KiB pages, 2048-entry tables.
    K16,
    /// 64 KiB pages, 8192-entry tables.
    K64,
}

impl Granule {
    /// log2 of the page size.
    pub const fn shift(self) -> u32 {
        match self {
            Granule::K4 => 12,
            Granule::K16 => 14,
            Granule::K64 => 16,
        }
    }

    /// TCR.TG0 / CD.TG0 / VTCR.TG0 / STE.S2TG encoding (4K 0b00, 64K 0b01, 16K 0b10).
    pub const fn tg(self) -> u8 {
        match self {
            Granule::K4 => 0b00,
            Granule::K64 => 0b01,
            Granule::K16 => 0b10,
        }
    }
}

/// Parameters of an ARM LPAE table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmConfig {
    /// Stage 1 or 2.
    pub stage: Stage,
    /// The granule.
    pub granule: Granule,
    /// Input address bits (25..=48; SMMU_IDR5.VAX=0 caps stage 1 at 48).
    pub input_bits: u32,
    /// Output address bits (32, 36, 40, 42, 44 or 48; ≤ SMMU_IDR5.OAS).
    pub output_bits: u32,
    /// Set the Contiguous bit on aligned runs of leaves (D8.6.1: 16 entries
    /// at every level with the 4K granule; 128 pages or 32 blocks with 16K; 32
    /// with 64K), so that a run may take one TLB entry.
    pub contiguous: bool,
}

/// Walk-cacheability and shareability of the table walk itself (CD IR0/OR0/SH0,
/// STE S2IR0/S2OR0/S2SH0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkAttrs {
    /// Inner cacheability: 0b01 write-back, 0b00 non-cacheable.
    pub irgn: u8,
    /// Outer cacheability, same encoding.
    pub orgn: u8,
    /// Shareability: 0b11 inner, 0b10 outer.
    pub sh: u8,
}

/// Stage-1 fields for the SMMUv3 CD (same encodings as TCR_EL1/MAIR_EL1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage1Fields {
    /// CD.T0SZ = 64 - input bits.
    pub t0sz: u8,
    /// CD.TG0.
    pub tg0: u8,
    /// CD.IPS (intermediate physical size encoding).
    pub ips: u8,
    /// CD.MAIR0/MAIR1 as one 64-bit MAIR value, matching this crate's AttrIndx use.
    pub mair: u64,
}

/// Stage-2 fields for the SMMUv3 STE (same encodings as VTCR_EL2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Fields {
    /// STE.S2T0SZ = 64 - input bits.
    pub t0sz: u8,
    /// STE.S2SL0: start level encoding for the granule.
    pub sl0: u8,
    /// STE.S2TG.
    pub tg: u8,
    /// STE.S2PS.
    pub ps: u8,
}

/// The ARM LPAE format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmLpae {
    config: ArmConfig,
    levels: u32,
    top_bits: u32,
    /// Writable leaves carry DBM: the SMMU tracks their dirty state.
    hardware_dirty: bool,
}

impl ArmLpae {
    /// Checks `config` and derives the levels: stage 2 concatenates up to 16 root
    /// tables rather than start at ARM level 0 with ≤ 16 entries (ARM ARM D8.2.7).
    pub fn new(config: ArmConfig) -> Result<Self, ConfigError> {
        if !(25..=48).contains(&config.input_bits) {
            return Err(ConfigError::InputSize);
        }
        if ps_encoding(config.output_bits).is_none() {
            return Err(ConfigError::OutputSize);
        }
        let g = config.granule.shift();
        let b = g - 3;
        let va = config.input_bits - g;
        let mut levels = va.div_ceil(b);
        let mut top_bits = va - b * (levels - 1);
        if levels > 4 {
            return Err(ConfigError::InputSize);
        }
        let starts_at_arm_level_0 = levels == 4;
        if config.stage == Stage::Stage2 && starts_at_arm_level_0 && top_bits <= 4 {
            levels -= 1;
            top_bits += b;
        }
        if config.stage == Stage::Stage2 && top_bits > b + 4 {
            // More than 16 concatenated tables: not a stage-2 configuration.
            return Err(ConfigError::InputSize);
        }
        Ok(Self {
            config,
            levels,
            top_bits,
            hardware_dirty: false,
        })
    }

    /// The format with DBM on every writable leaf, for an SMMU that manages
    /// dirty state in hardware (IDR0.HTTU = 0b10 with CD.HD or STE.S2HD).
    /// As Linux (`IO_PGTABLE_QUIRK_ARM_HD`), a new writable leaf starts
    /// writable-dirty; clearing its dirty state makes it writable-clean.
    pub fn with_hardware_dirty(mut self) -> Self {
        self.hardware_dirty = true;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &ArmConfig {
        &self.config
    }

    /// ARM's number of the root level (0..=3).
    pub fn start_level(&self) -> u32 {
        4 - self.levels
    }

    /// The MAIR value matching the AttrIndx this crate writes.
    pub const fn mair() -> u64 {
        (MAIR_ATTR_CACHED as u64) << (8 * MAIR_IDX_CACHED)
            | (MAIR_ATTR_NONCACHED as u64) << (8 * MAIR_IDX_NONCACHED)
            | (MAIR_ATTR_DEVICE as u64) << (8 * MAIR_IDX_DEVICE)
    }

    /// Stage-1 CD fields.
    pub fn stage1_fields(&self) -> Stage1Fields {
        Stage1Fields {
            t0sz: (64 - self.config.input_bits) as u8,
            tg0: self.config.granule.tg(),
            ips: ps_encoding(self.config.output_bits).unwrap_or(0),
            mair: Self::mair(),
        }
    }

    /// Stage-2 STE fields.
    pub fn stage2_fields(&self) -> Stage2Fields {
        let start = self.start_level();
        // VTCR_EL2.SL0: for 4K, 0 = level 2, 1 = level 1, 2 = level 0; for 16K and
        // 64K, 0 = level 3, 1 = level 2, 2 = level 1, (16K) 3 = level 0.
        let sl0 = match self.config.granule {
            Granule::K4 => 2 - start.min(2),
            Granule::K16 | Granule::K64 => 3 - start,
        };
        Stage2Fields {
            t0sz: (64 - self.config.input_bits) as u8,
            sl0: sl0 as u8,
            tg: self.config.granule.tg(),
            ps: ps_encoding(self.config.output_bits).unwrap_or(0),
        }
    }

    /// Walk attributes to program for a coherent (IDR0.COHACC = 1) or
    /// non-coherent table walker.
    pub fn walk_attrs(coherent: bool) -> WalkAttrs {
        if coherent {
            WalkAttrs {
                irgn: 0b01,
                orgn: 0b01,
                sh: ARM_SH_INNER as u8,
            }
        } else {
            WalkAttrs {
                irgn: 0b00,
                orgn: 0b00,
                sh: ARM_SH_OUTER as u8,
            }
        }
    }
}

/// TCR.IPS / VTCR.PS encoding of an output size.
pub const fn ps_encoding(bits: u32) -> Option<u8> {
    match bits {
        32 => Some(0b000),
        36 => Some(0b001),
        40 => Some(0b010),
        42 => Some(0b011),
        44 => Some(0b100),
        48 => Some(0b101),
        _ => None,
    }
}

impl Format for ArmLpae {
    /// ARM ARM D8.3: a table entry's type bit; a leaf's AP (stage 1) or
    /// S2AP (stage 2), AF, nG, DBM, Contiguous, PXN and XN.
    fn entry_bits(&self, level: u32, pte: u64) -> &'static [(&'static str, u64)] {
        if level > 0 && self.is_table(level, pte) {
            return &[("valid", ARM_VALID), ("table", ARM_TYPE_TABLE)];
        }
        match self.config.stage {
            Stage::Stage1 => &[
                ("valid", ARM_VALID),
                ("AP[1] EL0", ARM_S1_AP_EL0),
                ("AP[2] read-only", ARM_S1_AP_RDONLY),
                ("AF", ARM_AF),
                ("nG", ARM_S1_NG),
                ("DBM", ARM_DBM),
                ("Contiguous", ARM_CONTIGUOUS),
                ("PXN", ARM_S1_PXN),
                ("XN", ARM_XN),
            ],
            Stage::Stage2 => &[
                ("valid", ARM_VALID),
                ("S2AP read", ARM_S2_AP_READ),
                ("S2AP write", ARM_S2_AP_WRITE),
                ("AF", ARM_AF),
                ("DBM", ARM_DBM),
                ("Contiguous", ARM_CONTIGUOUS),
                ("XN", ARM_XN),
            ],
        }
    }

    const NAME: &'static str = "arm-lpae";
    const VALID: Option<u64> = Some(ARM_VALID);

    fn geometry(&self) -> Geometry {
        let g = self.config.granule.shift();
        // Blocks: 4K granule at ARM levels 1 and 2, 16K/64K at level 2 only
        // (their level-1 blocks need 52-bit output addresses).
        let blocks = match self.config.granule {
            Granule::K4 => 0b111,
            Granule::K16 | Granule::K64 => 0b011,
        };
        Geometry {
            granule_shift: g,
            bits_per_level: g - 3,
            levels: self.levels,
            top_bits: self.top_bits,
            leaf_levels: blocks & ((1u32 << self.levels) - 1),
            iova_bits: self.config.input_bits,
            output_bits: self.config.output_bits,
        }
    }

    fn leaf_attrs(&self, level: u32, prot: Prot) -> Result<u64, MapError> {
        let mut pte = if level == 0 {
            ARM_TABLE_OR_PAGE
        } else {
            ARM_BLOCK
        };
        pte |= ARM_AF;
        let sh = if prot.contains(Prot::CACHE) {
            ARM_SH_INNER
        } else {
            ARM_SH_OUTER
        };
        pte |= sh << ARM_SH_SHIFT;
        match self.config.stage {
            Stage::Stage1 => {
                pte |= ARM_S1_NG | ARM_S1_AP_EL0;
                if !prot.contains(Prot::WRITE) {
                    pte |= ARM_S1_AP_RDONLY;
                } else if self.hardware_dirty {
                    pte |= ARM_DBM;
                }
                let idx = if prot.contains(Prot::MMIO) {
                    MAIR_IDX_DEVICE
                } else if prot.contains(Prot::CACHE) {
                    MAIR_IDX_CACHED
                } else {
                    MAIR_IDX_NONCACHED
                };
                pte |= idx << ARM_S1_ATTRINDX_SHIFT;
                if prot.contains(Prot::NOEXEC) {
                    pte |= ARM_S1_PXN | ARM_XN;
                }
            }
            Stage::Stage2 => {
                if prot.contains(Prot::READ) {
                    pte |= ARM_S2_AP_READ;
                }
                if prot.contains(Prot::WRITE) {
                    pte |= ARM_S2_AP_WRITE;
                    if self.hardware_dirty {
                        pte |= ARM_DBM;
                    }
                }
                let attr = if prot.contains(Prot::MMIO) {
                    S2_MEMATTR_DEVICE
                } else if prot.contains(Prot::CACHE) {
                    S2_MEMATTR_CACHED
                } else {
                    S2_MEMATTR_NONCACHED
                };
                pte |= attr << ARM_S2_MEMATTR_SHIFT;
                if prot.contains(Prot::NOEXEC) {
                    pte |= ARM_XN;
                }
            }
        }
        Ok(pte)
    }

    fn table_attrs(&self, _level: u32) -> u64 {
        ARM_TABLE_OR_PAGE
    }

    fn is_table(&self, level: u32, pte: u64) -> bool {
        level > 0 && pte & ARM_TYPE_TABLE != 0
    }

    fn table_addr(&self, pte: u64) -> u64 {
        pte & ARM_ADDR & !super::low_mask(self.config.granule.shift())
    }

    fn leaf_addr(&self, level: u32, pte: u64) -> u64 {
        let g = self.config.granule.shift();
        pte & ARM_ADDR & !super::low_mask(g + (g - 3) * level)
    }

    fn leaf_runs(&self, level: u32) -> u32 {
        if !self.config.contiguous || !self.geometry().leaf_allowed(level) {
            return 0;
        }
        1 << self.contiguous_run(level)
    }

    fn run_entry(&self, _level: u32, _k: u32, _run_phys: u64, entry_phys: u64, attrs: u64) -> u64 {
        // Each entry keeps its own output address; the bit says the run is one.
        entry_phys | attrs | ARM_CONTIGUOUS
    }

    /// Writable-dirty: DBM with the write permission the hardware gave back
    /// (stage 1: `AP[2]` clear; stage 2: `S2AP[1]` set).
    fn leaf_dirty(&self, _level: u32, pte: u64) -> bool {
        pte & ARM_DBM != 0
            && match self.config.stage {
                Stage::Stage1 => pte & ARM_S1_AP_RDONLY == 0,
                Stage::Stage2 => pte & ARM_S2_AP_WRITE != 0,
            }
    }

    /// Writable-clean: the write permission withdrawn, DBM kept, so the next
    /// write sets it again instead of faulting.
    fn clean_leaf(&self, _level: u32, pte: u64) -> u64 {
        if pte & ARM_DBM == 0 {
            return pte;
        }
        match self.config.stage {
            Stage::Stage1 => pte | ARM_S1_AP_RDONLY,
            Stage::Stage2 => pte & !ARM_S2_AP_WRITE,
        }
    }

    fn written_leaf(&self, _level: u32, pte: u64) -> u64 {
        if pte & ARM_DBM == 0 {
            return pte;
        }
        match self.config.stage {
            Stage::Stage1 => pte & !ARM_S1_AP_RDONLY,
            Stage::Stage2 => pte | ARM_S2_AP_WRITE,
        }
    }

    fn leaf_run(&self, level: u32, pte: u64) -> u32 {
        if pte & ARM_CONTIGUOUS != 0 {
            self.contiguous_run(level)
        } else {
            0
        }
    }
}

impl ArmLpae {
    /// log2 of the entries in a contiguous run at `level` (D8.6.1).
    fn contiguous_run(&self, level: u32) -> u32 {
        match (self.config.granule, level) {
            (Granule::K4, _) => 4,
            (Granule::K16, 0) => 7,
            (Granule::K16, _) | (Granule::K64, _) => 5,
        }
    }
}
