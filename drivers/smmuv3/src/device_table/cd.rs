//! Context descriptors (SMMUv3 §5.4 CD): the stage-1 translation regime of a
//! stream (TCR-like fields, TTB0, MAIR, ASID).

use crate::regs::Granule;

/// SMMUv3 §5.4 Context Descriptor: 64 bytes, eight little-endian doublewords.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cd(pub [u64; 8]);

const _: () = assert!(core::mem::size_of::<Cd>() == 64);

/// CD word 0 fields (SMMUv3 §5.4).
mod w0 {
    /// `T0SZ[5:0]`.
    pub const T0SZ_SHIFT: u32 = 0;
    /// `TG0[7:6]`.
    pub const TG0_SHIFT: u32 = 6;
    /// `IR0[9:8]`, `OR0[11:10]`, `SH0[13:12]`: walk attributes of TTB0.
    pub const IR0_SHIFT: u32 = 8;
    pub const OR0_SHIFT: u32 = 10;
    pub const SH0_SHIFT: u32 = 12;
    /// `EPD1[30]`: no walks through TTB1 (the upper half faults).
    pub const EPD1: u64 = 1 << 30;
    /// `V[31]`.
    pub const V: u64 = 1 << 31;
    /// `IPS[34:32]`: intermediate physical address size (IDR5.OAS encoding).
    pub const IPS_SHIFT: u32 = 32;
    /// `AA64[41]`: AArch64 translation tables.
    pub const AA64: u64 = 1 << 41;
    /// `HD[42]`: the SMMU updates the dirty state of leaves with DBM (HTTU;
    /// Linux `CTXDESC_CD_0_TCR_HD`).
    pub const HD: u64 = 1 << 42;
    /// `HA[43]`: the SMMU sets the access flag (Linux `CTXDESC_CD_0_TCR_HA`).
    pub const HA: u64 = 1 << 43;
    /// `R[45]`: record faults.
    pub const R: u64 = 1 << 45;
    /// `A[46]`: abort (rather than stall) on faults; QEMU requires 1.
    pub const A: u64 = 1 << 46;
    /// `ASET[47]`: the ASID is not shared with PE broadcast TLB maintenance.
    pub const ASET: u64 = 1 << 47;
    /// `ASID[63:48]`.
    pub const ASID_SHIFT: u32 = 48;
}

/// CD word 1: `TTB0[51:4]`.
const TTB0_MASK: u64 = ((1 << 52) - 1) & !0xF;

/// Normal write-back (SMMUv3 §5.4 IR0/OR0 encoding 0b01).
const WRITE_BACK: u64 = 1;
/// Inner shareable (SMMUv3 §5.4 SH0 encoding 0b11).
const INNER_SHAREABLE: u64 = 3;

/// The default memory attribute indirection (ARM ARM D8.5 MAIR_ELx): index 0 =
/// Normal write-back read/write-allocate (0xFF), index 1 = Device-nGnRE (0x04),
/// index 2 = Normal non-cacheable (0x44).
pub const DEFAULT_MAIR: u64 = 0x44_04_FF;

/// A stage-1 regime for one context descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage1Config {
    /// The ASID the TLB tags the context's entries with.
    pub asid: u16,
    /// Physical address of the level-0/1 table (TTB0).
    pub root: u64,
    /// TG0.
    pub granule: Granule,
    /// Input address bits: T0SZ = 64 - ias_bits (QEMU accepts 25..=48).
    pub ias_bits: u32,
    /// IPS encoding (IDR5.OAS encoding).
    pub ips_encoding: u32,
    /// MAIR: the memory attributes AttrIndx selects.
    pub mair: u64,
}

/// Why a CD could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CdError {
    /// T0SZ outside 16..=39 (SMMUv3 §5.4 T0SZ; VAX = 0 gives 48 bits).
    AddressBits,
    /// A table address not aligned to the granule.
    Misaligned,
}

impl Cd {
    /// A valid stage-1 descriptor: TTB0 only (EPD1 set), AArch64, record and
    /// abort on faults, private ASID.
    /// The walk attributes of TTB0 (IR0/OR0/SH0) for `walk`.
    pub fn with_walk(mut self, walk: crate::regs::Walk) -> Cd {
        let (cache, share) = walk.attributes();
        self.0[0] &= !((3 << w0::IR0_SHIFT) | (3 << w0::OR0_SHIFT) | (3 << w0::SH0_SHIFT));
        self.0[0] |= (u64::from(cache) << w0::IR0_SHIFT)
            | (u64::from(cache) << w0::OR0_SHIFT)
            | (u64::from(share) << w0::SH0_SHIFT);
        self
    }

    /// A valid CD for `config`'s table (§5.4).
    pub fn stage1(config: &Stage1Config) -> Result<Cd, CdError> {
        if !(25..=48).contains(&config.ias_bits) {
            return Err(CdError::AddressBits);
        }
        if config.root & !TTB0_MASK != 0 {
            return Err(CdError::Misaligned);
        }
        let mut cd = Cd::default();
        cd.0[0] = (u64::from(64 - config.ias_bits) << w0::T0SZ_SHIFT)
            | (config.granule.tg0() << w0::TG0_SHIFT)
            | (WRITE_BACK << w0::IR0_SHIFT)
            | (WRITE_BACK << w0::OR0_SHIFT)
            | (INNER_SHAREABLE << w0::SH0_SHIFT)
            | w0::EPD1
            | w0::V
            | (u64::from(config.ips_encoding & 0b111) << w0::IPS_SHIFT)
            | w0::AA64
            | w0::R
            | w0::A
            | w0::ASET
            | (u64::from(config.asid) << w0::ASID_SHIFT);
        cd.0[1] = config.root;
        cd.0[3] = config.mair;
        Ok(cd)
    }

    /// V: the CD is valid.
    pub fn is_valid(&self) -> bool {
        self.0[0] & w0::V != 0
    }

    /// Its ASID.
    pub fn asid(&self) -> u16 {
        (self.0[0] >> w0::ASID_SHIFT) as u16
    }

    /// HA and HD: the SMMU manages the access flag and the dirty state of
    /// the leaves (only with IDR0.HTTU = 0b10, §6.3.1; the table's writable
    /// leaves carry DBM).
    pub fn with_hardware_dirty(mut self) -> Self {
        self.0[0] |= w0::HA | w0::HD;
        self
    }

    /// HD (and HA): the SMMU updates the dirty state of DBM leaves.
    pub fn hardware_dirty(&self) -> bool {
        self.0[0] & (w0::HA | w0::HD) == w0::HA | w0::HD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage1_cd_golden() {
        let cd = Cd::stage1(&Stage1Config {
            asid: 3,
            root: 0x4123_4000,
            granule: Granule::K4,
            ias_bits: 48,
            ips_encoding: 4,
            mair: DEFAULT_MAIR,
        })
        .unwrap();
        // T0SZ = 64 - 48 = 16, TG0 = 0 (4K).
        let expected = 16
            | (1 << 8) | (1 << 10)     // IR0, OR0 write-back
            | (3 << 12)                // SH0 inner shareable
            | (1 << 30)                // EPD1
            | (1 << 31)                // V
            | (4 << 32)                // IPS 44 bits
            | (1 << 41)                // AA64
            | (1 << 45) | (1 << 46)    // R, A
            | (1 << 47)                // ASET
            | (3 << 48); // ASID
        assert_eq!(cd.0[0], expected);
        assert_eq!(cd.0[1], 0x4123_4000);
        assert_eq!(cd.0[2], 0);
        assert_eq!(cd.0[3], 0x44_04_FF);
        assert_eq!(cd.asid(), 3);
        assert!(cd.is_valid());
    }

    #[test]
    fn tg0_of_16k_and_64k() {
        let mut config = Stage1Config {
            asid: 1,
            root: 0x4000_0000,
            granule: Granule::K16,
            ias_bits: 47,
            ips_encoding: 4,
            mair: 0,
        };
        assert_eq!((Cd::stage1(&config).unwrap().0[0] >> 6) & 3, 2);
        config.granule = Granule::K64;
        assert_eq!((Cd::stage1(&config).unwrap().0[0] >> 6) & 3, 1);
    }

    #[test]
    fn rejects_out_of_range_t0sz_and_misaligned_root() {
        let mut config = Stage1Config {
            asid: 1,
            root: 0x4000_0000,
            granule: Granule::K4,
            ias_bits: 49,
            ips_encoding: 4,
            mair: 0,
        };
        assert_eq!(Cd::stage1(&config), Err(CdError::AddressBits));
        config.ias_bits = 39;
        config.root = 0x4000_0008;
        assert_eq!(Cd::stage1(&config), Err(CdError::Misaligned));
    }
}
