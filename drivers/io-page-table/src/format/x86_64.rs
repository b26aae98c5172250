//! x86-64 4-/5-level paging entries, as used by the VT-d first stage and the
//! AMD-Vi v2 (guest) tables.
//!
//! Intel SDM Vol. 3A §4.5 "4-Level Paging and 5-Level Paging" (Tables 4-15 to 4-20),
//! VT-d spec rev 4.1 §9.7 "First-Stage Paging Entries", AMD IOMMU spec rev 3.10
//! §2.2.6 (guest tables use the AMD64 long-mode format). Permissions are ANDed
//! over the levels, so table links grant RW (and US where requested).

use super::{Format, Geometry, bits};
use crate::error::{ConfigError, MapError};
use crate::prot::Prot;

/// SDM Table 4-19 bit 0: present.
pub const X86_P: u64 = 1 << 0;
/// Bit 1: writes allowed.
pub const X86_RW: u64 = 1 << 1;
/// Bit 2: user-mode accesses allowed (QEMU's VT-d first stage treats every DMA as user).
pub const X86_US: u64 = 1 << 2;
/// Bit 3: page-level write-through.
pub const X86_PWT: u64 = 1 << 3;
/// Bit 4: page-level cache disable.
pub const X86_PCD: u64 = 1 << 4;
/// Bit 5: accessed (preset so the walker never has to write it back).
pub const X86_A: u64 = 1 << 5;
/// Bit 6: dirty, in a leaf (preset on writable leaves for the same reason).
pub const X86_D: u64 = 1 << 6;
/// Bit 7: page size, a 2 MiB (PDE) or 1 GiB (PDPTE) leaf.
pub const X86_PS: u64 = 1 << 7;
/// Bit 63: execute disable.
pub const X86_NX: u64 = 1 << 63;
/// Bits 51:12: physical address (bit 12 of a large leaf is PAT, masked by the level).
pub const X86_ADDR: u64 = bits(51, 12);

/// Parameters of an x86-64-format IO table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X86Config {
    /// 4 or 5 levels (48- or 57-bit addresses; VT-d FLPM, AMD GLX).
    pub levels: u32,
    /// Set US on every entry (required by QEMU's VT-d first stage).
    pub user: bool,
    /// Honour `Prot::NOEXEC` with the NX bit (only where NX is not reserved).
    pub nx: bool,
    /// 1 GiB leaves allowed (VT-d CAP.FS1GP); 2 MiB leaves always are.
    pub leaf_1g: bool,
    /// Output address bits (at most 52).
    pub output_bits: u32,
}

/// The x86-64 long-mode paging format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X86_64 {
    config: X86Config,
    /// Writable leaves start clean (D = 0) for hardware that sets D.
    hardware_dirty: bool,
}

impl X86_64 {
    /// Checks `config` against the format's limits.
    pub fn new(config: X86Config) -> Result<Self, ConfigError> {
        if !(4..=5).contains(&config.levels) {
            return Err(ConfigError::Levels);
        }
        if !(12..=52).contains(&config.output_bits) {
            return Err(ConfigError::OutputSize);
        }
        Ok(Self {
            config,
            hardware_dirty: false,
        })
    }

    /// The format with writable leaves mapped clean (D = 0), for an IOMMU
    /// that sets D on a write (SDM §4.8; VT-d first stage, AMD-Vi v2). Without
    /// it, writable leaves are mapped dirty so that the walker never has to
    /// write D itself, and their dirty state means nothing.
    pub fn with_hardware_dirty(mut self) -> Self {
        self.hardware_dirty = true;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &X86Config {
        &self.config
    }

    /// VT-d scalable-mode PASID entry FLPM: 0 = 4-level, 1 = 5-level (VT-d §9.6).
    pub fn vtd_flpm(&self) -> u8 {
        (self.config.levels - 4) as u8
    }
}

impl Format for X86_64 {
    /// Intel SDM Vol. 3A §4.5 (VT-d 3.4 §9.7 first stage): P, R/W, U/S, PWT,
    /// PCD, A, D, PS, XD.
    fn entry_bits(&self, _level: u32, _pte: u64) -> &'static [(&'static str, u64)] {
        &[
            ("P", X86_P),
            ("R/W", X86_RW),
            ("U/S", X86_US),
            ("PWT", X86_PWT),
            ("PCD", X86_PCD),
            ("A", X86_A),
            ("D", X86_D),
            ("PS", X86_PS),
            ("XD", X86_NX),
        ]
    }

    const NAME: &'static str = "x86-64";
    const VALID: Option<u64> = Some(X86_P);

    fn geometry(&self) -> Geometry {
        let leaf_levels = if self.config.leaf_1g { 0b111 } else { 0b011 };
        Geometry {
            granule_shift: 12,
            bits_per_level: 9,
            levels: self.config.levels,
            top_bits: 9,
            leaf_levels,
            // Only the lower canonical half: the upper half would need sign-extended IOVAs.
            iova_bits: 12 + 9 * self.config.levels - 1,
            output_bits: self.config.output_bits,
        }
    }

    fn leaf_attrs(&self, level: u32, prot: Prot) -> Result<u64, MapError> {
        let mut pte = X86_P | X86_A;
        if prot.contains(Prot::WRITE) {
            pte |= X86_RW;
            if !self.hardware_dirty {
                pte |= X86_D;
            }
        }
        if self.config.user {
            pte |= X86_US;
        }
        if level > 0 {
            pte |= X86_PS;
        }
        if prot.contains(Prot::MMIO) {
            pte |= X86_PCD | X86_PWT;
        }
        if self.config.nx && prot.contains(Prot::NOEXEC) {
            pte |= X86_NX;
        }
        Ok(pte)
    }

    fn table_attrs(&self, _level: u32) -> u64 {
        let mut pte = X86_P | X86_RW | X86_A;
        if self.config.user {
            pte |= X86_US;
        }
        pte
    }

    fn is_table(&self, level: u32, pte: u64) -> bool {
        level > 0 && pte & X86_PS == 0
    }

    fn table_addr(&self, pte: u64) -> u64 {
        pte & X86_ADDR
    }

    fn leaf_addr(&self, level: u32, pte: u64) -> u64 {
        pte & X86_ADDR & !super::low_mask(12 + 9 * level)
    }

    fn leaf_dirty(&self, _level: u32, pte: u64) -> bool {
        self.hardware_dirty && pte & X86_D != 0
    }

    fn clean_leaf(&self, _level: u32, pte: u64) -> u64 {
        pte & !X86_D
    }

    fn written_leaf(&self, _level: u32, pte: u64) -> u64 {
        pte | X86_A | X86_D
    }
}
