//! AMD-Vi v1 (host) I/O page tables.
//!
//! AMD IOMMU spec rev 3.10 §2.2.3 "I/O Page Tables for Host Translations"
//! (Figures 9-12, "PDE" and "PTE"): 1 to 6 levels (DTE.Mode), 512 entries a level.
//! A PDE names the level of the table it points to in Next Level; a PTE has Next
//! Level 0 and maps the size of the level it sits in (4 KiB at level 1, 2 MiB at
//! level 2, 1 GiB at level 3). IR/IW are checked at every level.
//!
//! With [`AmdV1Config::nl7_pages`], pages between the native sizes (8 KiB to
//! 1 MiB at level 1, 4 MiB to 512 MiB at level 2, 2 GiB to 256 GiB at level 3)
//! use Next Level = 7: the address field encodes the page size (bits 12 up to
//! one below the size's log2 set, the next bit clear) and the PTE is replicated
//! in every entry the page spans. Not generated: level skipping.

use super::{Format, Geometry, bits};
use crate::error::{ConfigError, MapError};
use crate::prot::Prot;

/// §2.2.3 bit 0: PR, present.
pub const AMD_PR: u64 = 1 << 0;
/// A: accessed, set by the IOMMU when the DTE enables HA (EFR HASup).
pub const AMD_A: u64 = 1 << 5;
/// D: dirty, set by the IOMMU on a write when the DTE enables HD (EFR
/// HDSup; AMD IOMMU §2.2.7.2; Linux `IOMMU_PTE_HD_BIT`).
pub const AMD_D: u64 = 1 << 6;
/// Bits 11:9: Next Level (0 = this entry is a PTE).
pub const AMD_NEXT_LEVEL: u64 = bits(11, 9);
/// Shift of the Next Level field.
pub const AMD_NEXT_LEVEL_SHIFT: u32 = 9;
/// Next Level = 7: a PTE whose page size is encoded in its address field.
pub const AMD_NEXT_LEVEL_SIZED: u64 = 7 << AMD_NEXT_LEVEL_SHIFT;
/// The smallest Next Level 7 page holds two entries of its level: its size is
/// 2^(13 + the number of consecutive ones from address bit 12) at level 1.
const SIZED_MIN_SHIFT: u32 = 13;
/// Sized pages take 2 to 256 entries (one less than a whole table of the level).
const SIZED_RUNS: u32 = 0b1_1111_1110;
/// Bits 51:12: next table or page address.
pub const AMD_ADDR: u64 = bits(51, 12);
/// Bit 60: FC, force coherent (snooped) DMA for the page.
pub const AMD_FC: u64 = 1 << 60;
/// Bit 61: IR, reads allowed.
pub const AMD_IR: u64 = 1 << 61;
/// Bit 62: IW, writes allowed.
pub const AMD_IW: u64 = 1 << 62;

/// Parameters of an AMD-Vi v1 table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdV1Config {
    /// 1..=6 levels (DTE.Mode); 3 levels cover 39 bits, 4 cover 48.
    pub levels: u32,
    /// Output address bits (at most 52).
    pub output_bits: u32,
    /// Map the power-of-two sizes between the native ones as Next Level 7 pages
    /// (replicated PTEs), as Linux's AMD v1 tables do.
    pub nl7_pages: bool,
}

/// The AMD-Vi v1 host format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdV1 {
    config: AmdV1Config,
}

impl AmdV1 {
    /// Checks `config` against the format's limits.
    pub fn new(config: AmdV1Config) -> Result<Self, ConfigError> {
        if !(1..=6).contains(&config.levels) {
            return Err(ConfigError::Levels);
        }
        if !(12..=52).contains(&config.output_bits) {
            return Err(ConfigError::OutputSize);
        }
        Ok(Self { config })
    }

    /// The configuration.
    pub fn config(&self) -> &AmdV1Config {
        &self.config
    }

    /// DTE Mode field: the number of levels (§2.2.2.1 DTE bits 11:9).
    pub fn dte_mode(&self) -> u8 {
        self.config.levels as u8
    }

    /// log2 of the size of the Next Level 7 page `pte` (§2.2.3 page size
    /// encoding: 8 KiB when address bit 12 is clear, doubling with each
    /// consecutive one above it).
    fn sized_page_shift(pte: u64) -> u32 {
        SIZED_MIN_SHIFT + ((pte & AMD_ADDR) >> 12).trailing_ones()
    }
}

impl Format for AmdV1 {
    /// AMD IOMMU §2.2.3: PR, A, D, FC, IR, IW (Next Level is a field).
    fn entry_bits(&self, _level: u32, _pte: u64) -> &'static [(&'static str, u64)] {
        &[
            ("PR", AMD_PR),
            ("A", AMD_A),
            ("D", AMD_D),
            ("FC", AMD_FC),
            ("IR", AMD_IR),
            ("IW", AMD_IW),
        ]
    }

    const NAME: &'static str = "amd-v1";
    const VALID: Option<u64> = Some(AMD_PR);

    fn geometry(&self) -> Geometry {
        let levels = self.config.levels;
        // 4 KiB, 2 MiB and 1 GiB leaves, where the tree is that deep.
        let leaf_levels = 0b111 & ((1u32 << levels) - 1);
        let top_bits = 9.min(64 - (12 + 9 * (levels - 1)));
        Geometry {
            granule_shift: 12,
            bits_per_level: 9,
            levels,
            top_bits,
            leaf_levels,
            iova_bits: (12 + 9 * levels).min(64),
            output_bits: self.config.output_bits,
        }
    }

    fn leaf_attrs(&self, _level: u32, prot: Prot) -> Result<u64, MapError> {
        let mut pte = AMD_PR;
        if prot.contains(Prot::READ) {
            pte |= AMD_IR;
        }
        if prot.contains(Prot::WRITE) {
            pte |= AMD_IW;
        }
        if prot.contains(Prot::CACHE) {
            pte |= AMD_FC;
        }
        Ok(pte)
    }

    fn table_attrs(&self, level: u32) -> u64 {
        // The linked table is at our level - 1, which is AMD level `level`.
        AMD_PR | AMD_IR | AMD_IW | (u64::from(level) << AMD_NEXT_LEVEL_SHIFT)
    }

    fn is_table(&self, _level: u32, pte: u64) -> bool {
        let next_level = pte & AMD_NEXT_LEVEL;
        next_level != 0 && next_level != AMD_NEXT_LEVEL_SIZED
    }

    fn table_addr(&self, pte: u64) -> u64 {
        pte & AMD_ADDR
    }

    fn leaf_addr(&self, level: u32, pte: u64) -> u64 {
        let size_shift = if pte & AMD_NEXT_LEVEL == AMD_NEXT_LEVEL_SIZED {
            Self::sized_page_shift(pte)
        } else {
            12 + 9 * level
        };
        pte & AMD_ADDR & !super::low_mask(size_shift)
    }

    fn leaf_dirty(&self, _level: u32, pte: u64) -> bool {
        pte & AMD_D != 0
    }

    fn clean_leaf(&self, _level: u32, pte: u64) -> u64 {
        pte & !AMD_D
    }

    fn written_leaf(&self, _level: u32, pte: u64) -> u64 {
        pte | AMD_A | AMD_D
    }

    fn leaf_runs(&self, level: u32) -> u32 {
        if self.config.nl7_pages && self.geometry().leaf_allowed(level) {
            SIZED_RUNS
        } else {
            0
        }
    }

    fn run_entry(&self, level: u32, k: u32, run_phys: u64, _entry_phys: u64, attrs: u64) -> u64 {
        // Every entry of the page is the same PTE: the walker may land on any.
        let size_shift = 12 + 9 * level + k;
        let size_code = super::low_mask(size_shift - 1) & !super::low_mask(12);
        run_phys | size_code | attrs | AMD_NEXT_LEVEL_SIZED
    }

    fn leaf_run(&self, level: u32, pte: u64) -> u32 {
        if pte & AMD_NEXT_LEVEL == AMD_NEXT_LEVEL_SIZED {
            Self::sized_page_shift(pte) - (12 + 9 * level)
        } else {
            0
        }
    }
}
