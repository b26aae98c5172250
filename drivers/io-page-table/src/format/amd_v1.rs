//! AMD-Vi v1 (host) I/O page tables.
//!
//! AMD IOMMU spec rev 3.10 §2.2.3 "I/O Page Tables for Host Translations"
//! (Figures 9-12, "PDE" and "PTE"): 1 to 6 levels (DTE.Mode), 512 entries a level.
//! A PDE names the level of the table it points to in Next Level; a PTE has Next
//! Level 0 and maps the size of the level it sits in (4 KiB at level 1, 2 MiB at
//! level 2, 1 GiB at level 3). IR/IW are checked at every level.
//!
//! Not generated: level skipping and Next Level = 7 (non-native page sizes); the
//! tables stay valid for hardware that supports them.

use super::{Format, Geometry, bits};
use crate::error::{ConfigError, MapError};
use crate::prot::Prot;

/// §2.2.3 bit 0: PR, present.
pub const AMD_PR: u64 = 1 << 0;
/// Bits 11:9: Next Level (0 = this entry is a PTE).
pub const AMD_NEXT_LEVEL: u64 = bits(11, 9);
/// Shift of the Next Level field.
pub const AMD_NEXT_LEVEL_SHIFT: u32 = 9;
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
}

impl Format for AmdV1 {
    const NAME: &'static str = "amd-v1";

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
        pte & AMD_NEXT_LEVEL != 0
    }

    fn table_addr(&self, pte: u64) -> u64 {
        pte & AMD_ADDR
    }

    fn leaf_addr(&self, level: u32, pte: u64) -> u64 {
        pte & AMD_ADDR & !super::low_mask(12 + 9 * level)
    }
}
