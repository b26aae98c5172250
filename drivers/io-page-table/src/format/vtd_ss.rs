//! Intel VT-d second-stage (legacy "second-level") paging entries.
//!
//! VT-d spec rev 4.1 §9.8 "Second-Stage Paging Entries": 3-, 4- or 5-level trees of
//! 512 eight-byte entries (AGAW 39/48/57 bits). R/W permissions apply at every
//! level (so table links carry both), `PS` turns an entry at the 2 MiB or 1 GiB
//! level into a leaf when CAP.SLLPS allows it, and `SNP` asks for snooped DMA.

use super::{Format, Geometry, bits};
use crate::error::{ConfigError, MapError};
use crate::prot::Prot;

/// VT-d §9.8 bit 0: read permission.
pub const SS_R: u64 = 1 << 0;
/// VT-d §9.8 bit 1: write permission.
pub const SS_W: u64 = 1 << 1;
/// VT-d §9.8 bit 7: page size (leaf) in a 2 MiB / 1 GiB level entry.
pub const SS_PS: u64 = 1 << 7;
/// VT-d §9.8 bit 11: snoop behaviour for the leaf's accesses (needs ECAP.SC, else reserved).
pub const SS_SNP: u64 = 1 << 11;
/// D: dirty, set by the hardware on a write when the PASID entry enables
/// second-stage A/D (SSADE, ECAP.SSADS; VT-d 3.4 §9.8).
pub const SS_D: u64 = 1 << 9;
/// VT-d §9.8 bits (HAW-1):12: address of the next table or page frame (52-bit max).
pub const SS_ADDR: u64 = bits(51, 12);

/// CAP.SLLPS bit 0: 2 MiB second-stage pages (VT-d §11.4.2).
pub const SLLPS_2M: u8 = 1 << 0;
/// CAP.SLLPS bit 1: 1 GiB second-stage pages.
pub const SLLPS_1G: u8 = 1 << 1;

/// Parameters of a VT-d second-stage table, read from CAP/ECAP by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdSsConfig {
    /// 3, 4 or 5 levels (AGAW 39, 48, 57 bits); must be in CAP.SAGAW.
    pub levels: u32,
    /// CAP.SLLPS: which large leaves may be used.
    pub sllps: u8,
    /// Set SNP on `Prot::CACHE` leaves (only if ECAP.SC = 1).
    pub snoop: bool,
    /// Output address bits (CAP.MGAW, at most 52).
    pub output_bits: u32,
}

/// The VT-d second-stage format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdSecondStage {
    config: VtdSsConfig,
}

impl VtdSecondStage {
    /// Checks `config` against the format's limits.
    pub fn new(config: VtdSsConfig) -> Result<Self, ConfigError> {
        if !(3..=5).contains(&config.levels) {
            return Err(ConfigError::Levels);
        }
        if !(12..=52).contains(&config.output_bits) {
            return Err(ConfigError::OutputSize);
        }
        Ok(Self { config })
    }

    /// The configuration.
    pub fn config(&self) -> &VtdSsConfig {
        &self.config
    }

    /// Adjusted guest address width in bits (30 + 9 × AW).
    pub fn agaw_bits(&self) -> u32 {
        12 + 9 * self.config.levels
    }

    /// Legacy context entry AW / scalable PASID entry AW field: 1 = 3-level
    /// (39-bit), 2 = 4-level (48-bit), 3 = 5-level (57-bit) (VT-d §9.4, §9.6).
    pub fn context_aw(&self) -> u8 {
        (self.config.levels - 2) as u8
    }
}

impl Format for VtdSecondStage {
    /// VT-d 3.4 §9.8: R, W, PS, SNP, D (a leaf's), all one bit.
    fn entry_bits(&self, _level: u32, _pte: u64) -> &'static [(&'static str, u64)] {
        &[
            ("R", SS_R),
            ("W", SS_W),
            ("PS", SS_PS),
            ("D", SS_D),
            ("SNP", SS_SNP),
        ]
    }

    const NAME: &'static str = "vtd-ss";
    // No single valid bit: an entry is live when R or W is set (§9.8).

    fn geometry(&self) -> Geometry {
        let mut leaf_levels = 1;
        if self.config.sllps & SLLPS_2M != 0 {
            leaf_levels |= 1 << 1;
        }
        if self.config.sllps & SLLPS_1G != 0 {
            leaf_levels |= 1 << 2;
        }
        Geometry {
            granule_shift: 12,
            bits_per_level: 9,
            levels: self.config.levels,
            top_bits: 9,
            leaf_levels,
            iova_bits: self.agaw_bits(),
            output_bits: self.config.output_bits,
        }
    }

    fn leaf_attrs(&self, level: u32, prot: Prot) -> Result<u64, MapError> {
        let mut pte = 0;
        if prot.contains(Prot::READ) {
            pte |= SS_R;
        }
        if prot.contains(Prot::WRITE) {
            pte |= SS_W;
        }
        if level > 0 {
            pte |= SS_PS;
        }
        if self.config.snoop && prot.contains(Prot::CACHE) {
            pte |= SS_SNP;
        }
        Ok(pte)
    }

    fn table_attrs(&self, _level: u32) -> u64 {
        SS_R | SS_W
    }

    fn is_table(&self, level: u32, pte: u64) -> bool {
        level > 0 && pte & SS_PS == 0
    }

    fn table_addr(&self, pte: u64) -> u64 {
        pte & SS_ADDR
    }

    fn leaf_addr(&self, level: u32, pte: u64) -> u64 {
        pte & SS_ADDR & !super::low_mask(12 + 9 * level)
    }

    fn leaf_dirty(&self, _level: u32, pte: u64) -> bool {
        pte & SS_D != 0
    }

    fn clean_leaf(&self, _level: u32, pte: u64) -> u64 {
        pte & !SS_D
    }

    fn written_leaf(&self, _level: u32, pte: u64) -> u64 {
        pte | SS_D
    }
}
