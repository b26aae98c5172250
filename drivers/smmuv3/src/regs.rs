//! SMMUv3 programming interface registers (SMMUv3 §6.2 register map, §6.3
//! register descriptions) and typed views of the fields the driver uses.

use bitflags::bitflags;
use os_services::mmio::{Reg32, Reg64};

/// SMMUv3 §6.3.1 SMMU_IDR0.
pub const IDR0: Reg32 = Reg32(0x00);
/// SMMUv3 §6.3.2 SMMU_IDR1.
pub const IDR1: Reg32 = Reg32(0x04);
/// SMMUv3 §6.3.3 SMMU_IDR2.
pub const IDR2: Reg32 = Reg32(0x08);
/// SMMUv3 §6.3.4 SMMU_IDR3.
pub const IDR3: Reg32 = Reg32(0x0C);
/// SMMUv3 §6.3.5 SMMU_IDR4 (implementation defined).
pub const IDR4: Reg32 = Reg32(0x10);
/// SMMUv3 §6.3.6 SMMU_IDR5.
pub const IDR5: Reg32 = Reg32(0x14);
/// SMMUv3 §6.3.7 SMMU_IIDR.
pub const IIDR: Reg32 = Reg32(0x18);
/// SMMUv3 §6.3.8 SMMU_AIDR.
pub const AIDR: Reg32 = Reg32(0x1C);
/// SMMUv3 §6.3.9 SMMU_CR0.
pub const CR0: Reg32 = Reg32(0x20);
/// SMMUv3 §6.3.10 SMMU_CR0ACK.
pub const CR0ACK: Reg32 = Reg32(0x24);
/// SMMUv3 §6.3.11 SMMU_CR1.
pub const CR1: Reg32 = Reg32(0x28);
/// SMMUv3 §6.3.12 SMMU_CR2.
pub const CR2: Reg32 = Reg32(0x2C);
/// SMMUv3 §6.3.14 SMMU_GBPA.
pub const GBPA: Reg32 = Reg32(0x44);
/// SMMUv3 §6.3.16 SMMU_IRQ_CTRL.
pub const IRQ_CTRL: Reg32 = Reg32(0x50);
/// SMMUv3 §6.3.17 SMMU_IRQ_CTRLACK.
pub const IRQ_CTRLACK: Reg32 = Reg32(0x54);
/// SMMUv3 §6.3.18 SMMU_GERROR.
pub const GERROR: Reg32 = Reg32(0x60);
/// SMMUv3 §6.3.19 SMMU_GERRORN.
pub const GERRORN: Reg32 = Reg32(0x64);
/// SMMUv3 §6.3.24 SMMU_STRTAB_BASE.
pub const STRTAB_BASE: Reg64 = Reg64(0x80);
/// SMMUv3 §6.3.25 SMMU_STRTAB_BASE_CFG.
pub const STRTAB_BASE_CFG: Reg32 = Reg32(0x88);
/// SMMUv3 §6.3.26 SMMU_CMDQ_BASE.
pub const CMDQ_BASE: Reg64 = Reg64(0x90);
/// SMMUv3 §6.3.27 SMMU_CMDQ_PROD.
pub const CMDQ_PROD: Reg32 = Reg32(0x98);
/// SMMUv3 §6.3.28 SMMU_CMDQ_CONS.
pub const CMDQ_CONS: Reg32 = Reg32(0x9C);
/// SMMUv3 §6.3.29 SMMU_EVENTQ_BASE.
pub const EVENTQ_BASE: Reg64 = Reg64(0xA0);
/// SMMUv3 §6.3.30 SMMU_EVENTQ_PROD, in register page 1 (§6.2).
pub const EVENTQ_PROD: Reg32 = Reg32(0x1_00A8);
/// SMMUv3 §6.3.31 SMMU_EVENTQ_CONS, in register page 1 (§6.2).
pub const EVENTQ_CONS: Reg32 = Reg32(0x1_00AC);

/// Size of the register block the driver touches: pages 0 and 1 (§6.2).
pub const REGISTER_SPAN: usize = 0x2_0000;

bitflags! {
    /// SMMUv3 §6.3.1 SMMU_IDR0 single-bit features.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Idr0: u32 {
        /// Stage-2 translation supported.
        const S2P = 1 << 0;
        /// Stage-1 translation supported.
        const S1P = 1 << 1;
        /// Coherent access to tables and queues.
        const COHACC = 1 << 4;
        /// 16-bit ASIDs.
        const ASID16 = 1 << 12;
        /// MSI generation for the queues and GERROR.
        const MSI = 1 << 13;
        /// 16-bit VMIDs.
        const VMID16 = 1 << 18;
        /// Two-level context descriptor tables.
        const CD2L = 1 << 19;
        const _ = !0;
    }
}

impl Idr0 {
    /// `IDR0.TTF[3:2]`: translation table formats; bit 1 of the field = AArch64.
    pub fn aarch64_tables(self) -> bool {
        (self.bits() >> 2) & 0b10 != 0
    }

    /// `IDR0.STALL_MODEL[25:24]`: whether faulting transactions may stall.
    pub fn stall_model(self) -> StallModel {
        match (self.bits() >> 24) & 0b11 {
            0b00 => StallModel::StallOrTerminate,
            0b10 => StallModel::StallForced,
            _ => StallModel::TerminateOnly,
        }
    }

    /// `IDR0.ST_LEVEL[28:27]`: 0b01 = two-level stream tables supported.
    pub fn two_level_stream_table(self) -> bool {
        (self.bits() >> 27) & 0b11 == 0b01
    }
}

/// SMMUv3 §6.3.1 IDR0.STALL_MODEL: what a CD's S bit (stall on fault) may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallModel {
    /// 0b00: a CD chooses stall or terminate; an STE can forbid stalls
    /// (S1STALLD).
    StallOrTerminate,
    /// 0b01 (and the reserved 0b11): faults terminate; S1STALLD is ILLEGAL.
    TerminateOnly,
    /// 0b10: faults always stall.
    StallForced,
}

/// SMMUv3 §6.3.2 SMMU_IDR1 fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idr1(pub u32);

impl Idr1 {
    /// `SIDSIZE[5:0]`: StreamID bits.
    pub fn sid_bits(self) -> u32 {
        self.0 & 0x3F
    }
    /// `SSIDSIZE[10:6]`: SubstreamID bits (0 = no substreams).
    pub fn ssid_bits(self) -> u32 {
        (self.0 >> 6) & 0x1F
    }
    /// `EVENTQS[20:16]`: log2 of the largest event queue.
    pub fn eventq_log2(self) -> u32 {
        (self.0 >> 16) & 0x1F
    }
    /// `CMDQS[25:21]`: log2 of the largest command queue.
    pub fn cmdq_log2(self) -> u32 {
        (self.0 >> 21) & 0x1F
    }
    /// `TABLES_PRESET[30]`: the stream table base is fixed by the implementation.
    pub fn tables_preset(self) -> bool {
        self.0 & (1 << 30) != 0
    }
    /// `QUEUES_PRESET[29]`: the queue bases are fixed by the implementation.
    pub fn queues_preset(self) -> bool {
        self.0 & (1 << 29) != 0
    }
}

bitflags! {
    /// SMMUv3 §6.3.4 SMMU_IDR3.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Idr3: u32 {
        /// Hierarchical attribute disable in CDs.
        const HAD = 1 << 2;
        /// Execute-never distinguishes privilege at stage 2.
        const XNX = 1 << 4;
        /// Range invalidation (TLBI TG/NUM/SCALE).
        const RIL = 1 << 10;
        const _ = !0;
    }
}

/// SMMUv3 §6.3.6 SMMU_IDR5 fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idr5(pub u32);

/// A translation granule (SMMUv3 §6.3.6 IDR5.GRAN*; ARM ARM D8.1 granules).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Granule {
    /// 4 KiB pages.
    K4,
    /// 16 KiB pages.
    K16,
    /// 64 KiB pages.
    K64,
}

impl Granule {
    /// Every granule, smallest first.
    pub const ALL: [Granule; 3] = [Granule::K4, Granule::K16, Granule::K64];

    /// log2 of the page size.
    pub fn shift(self) -> u32 {
        match self {
            Granule::K4 => 12,
            Granule::K16 => 14,
            Granule::K64 => 16,
        }
    }

    /// The page size.
    pub fn size(self) -> u64 {
        1 << self.shift()
    }

    /// CD.TG0 / STE.S2TG encoding (SMMUv3 §5.4 CD TG0, §5.2 STE S2TG): 0 = 4K,
    /// 1 = 64K, 2 = 16K.
    pub fn tg0(self) -> u64 {
        match self {
            Granule::K4 => 0,
            Granule::K64 => 1,
            Granule::K16 => 2,
        }
    }

    /// TLBI command TG encoding (SMMUv3 §4.4.1 range invalidation): 1 = 4K,
    /// 2 = 16K, 3 = 64K.
    pub fn tlbi_tg(self) -> u64 {
        match self {
            Granule::K4 => 1,
            Granule::K16 => 2,
            Granule::K64 => 3,
        }
    }
}

impl Idr5 {
    /// `OAS[2:0]` decoded to bits (SMMUv3 §6.3.6: 32, 36, 40, 42, 44, 48, 52).
    pub fn output_bits(self) -> Option<u32> {
        match self.0 & 0b111 {
            0 => Some(32),
            1 => Some(36),
            2 => Some(40),
            3 => Some(42),
            4 => Some(44),
            5 => Some(48),
            6 => Some(52),
            _ => None,
        }
    }

    /// The raw OAS encoding, which is also the CD.IPS / STE.S2PS encoding.
    pub fn oas_encoding(self) -> u32 {
        self.0 & 0b111
    }

    /// IDR5.GRAN4K/16K/64K: the SMMU walks `granule`.
    pub fn supports(self, granule: Granule) -> bool {
        let bit = match granule {
            Granule::K4 => 4,
            Granule::K16 => 5,
            Granule::K64 => 6,
        };
        self.0 & (1 << bit) != 0
    }

    /// Every granule the SMMU walks.
    pub fn granules(self) -> impl Iterator<Item = Granule> {
        Granule::ALL.into_iter().filter(move |g| self.supports(*g))
    }
}

bitflags! {
    /// SMMUv3 §6.3.9 SMMU_CR0 (and §6.3.10 CR0ACK, which mirrors it).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Cr0: u32 {
        /// Translation on.
        const SMMUEN = 1 << 0;
        /// The PRI queue runs.
        const PRIQEN = 1 << 1;
        /// The event queue runs.
        const EVENTQEN = 1 << 2;
        /// The command queue runs.
        const CMDQEN = 1 << 3;
        /// ATS requests are checked against the STE.
        const ATSCHK = 1 << 4;
    }
}

/// SMMUv3 §6.3.11 SMMU_CR1: cacheability and shareability of table and queue
/// accesses. Normal write-back (1) and inner shareable (3) for a coherent SMMU.
/// How the SMMU's own accesses (tables, queues, walks) meet the CPU caches,
/// from IDR0.COHACC (§6.3.1): coherent, it snoops and memory is Normal
/// write-back inner shareable; not, it reads DRAM, so the attributes say
/// Normal non-cacheable outer shareable (no cache of its own holds a stale
/// copy) and the driver cleans what it writes and invalidates what it reads
/// (Linux: `ARM_SMMU_FEAT_COHERENCY`, io-pgtable `coherent_walk`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// IDR0.COHACC: the SMMU snoops.
    Coherent,
    /// It reads DRAM: the driver cleans and invalidates.
    NonCoherent,
}

impl Walk {
    /// Inner/outer cacheability (0b01 write-back, 0b00 non-cacheable) and
    /// shareability (0b11 inner, 0b10 outer) encodings, as CR1, STEs and CDs
    /// spell them.
    pub const fn attributes(self) -> (u32, u32) {
        match self {
            Walk::Coherent => (cr1::WRITE_BACK, cr1::INNER_SHAREABLE),
            Walk::NonCoherent => (cr1::NON_CACHEABLE, cr1::OUTER_SHAREABLE),
        }
    }
}

/// SMMUv3 §6.3.11 SMMU_CR1 fields and their encodings.
pub mod cr1 {
    /// Non-cacheable.
    pub const NON_CACHEABLE: u32 = 0;
    /// Write-back cacheable.
    pub const WRITE_BACK: u32 = 1;
    /// Outer shareable.
    pub const OUTER_SHAREABLE: u32 = 2;
    /// Inner shareable.
    pub const INNER_SHAREABLE: u32 = 3;
    /// QUEUE_IC: inner cacheability of queue accesses.
    pub const QUEUE_IC_SHIFT: u32 = 0;
    /// QUEUE_OC: outer cacheability of queue accesses.
    pub const QUEUE_OC_SHIFT: u32 = 2;
    /// QUEUE_SH: shareability of queue accesses.
    pub const QUEUE_SH_SHIFT: u32 = 4;
    /// TABLE_IC: inner cacheability of table accesses.
    pub const TABLE_IC_SHIFT: u32 = 6;
    /// TABLE_OC: outer cacheability of table accesses.
    pub const TABLE_OC_SHIFT: u32 = 8;
    /// TABLE_SH: shareability of table accesses.
    pub const TABLE_SH_SHIFT: u32 = 10;

    /// The same attributes for tables and queues (§6.3.11).
    pub const fn for_walk(walk: super::Walk) -> u32 {
        let (cache, share) = walk.attributes();
        (cache << QUEUE_IC_SHIFT)
            | (cache << QUEUE_OC_SHIFT)
            | (share << QUEUE_SH_SHIFT)
            | (cache << TABLE_IC_SHIFT)
            | (cache << TABLE_OC_SHIFT)
            | (share << TABLE_SH_SHIFT)
    }
}

bitflags! {
    /// SMMUv3 §6.3.12 SMMU_CR2.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Cr2: u32 {
        /// Record C_BAD_STREAMID for invalid StreamIDs.
        const RECINVSID = 1 << 1;
        /// Private TLB maintenance: ignore broadcast TLBI.
        const PTM = 1 << 2;
    }
}

bitflags! {
    /// SMMUv3 §6.3.14 SMMU_GBPA: what happens to traffic while SMMUEN = 0.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Gbpa: u32 {
        /// Terminate incoming transactions instead of bypassing them.
        const ABORT = 1 << 20;
        /// Write 1 with the new value; the SMMU clears it when applied.
        const UPDATE = 1 << 31;
        const _ = !0;
    }
}

bitflags! {
    /// SMMUv3 §6.3.16 SMMU_IRQ_CTRL (and §6.3.17 IRQ_CTRLACK).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct IrqCtrl: u32 {
        /// Global error interrupts.
        const GERROR_IRQEN = 1 << 0;
        /// PRI queue interrupts.
        const PRIQ_IRQEN = 1 << 1;
        /// Event queue interrupts.
        const EVENTQ_IRQEN = 1 << 2;
    }
}

bitflags! {
    /// SMMUv3 §6.3.18 SMMU_GERROR: an error is active while its bit differs
    /// from the same bit of GERRORN (§6.3.19).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct Gerror: u32 {
        /// A command could not be executed; CMDQ_CONS.ERR says why.
        const CMDQ_ERR = 1 << 0;
        /// The event queue could not be written (full or abort).
        const EVENTQ_ABT_ERR = 1 << 2;
        /// The PRI queue could not be written.
        const PRIQ_ABT_ERR = 1 << 3;
        /// A CMD_SYNC's MSI aborted.
        const MSI_CMDQ_ABT_ERR = 1 << 4;
        /// The event queue's MSI aborted.
        const MSI_EVENTQ_ABT_ERR = 1 << 5;
        /// The PRI queue's MSI aborted.
        const MSI_PRIQ_ABT_ERR = 1 << 6;
        /// The global error MSI aborted.
        const MSI_GERROR_ABT_ERR = 1 << 7;
        /// Service failure mode: the SMMU stopped translating.
        const SFM_ERR = 1 << 8;
        /// A command queue control page error (ECMDQ).
        const CMDQP_ERR = 1 << 9;
        const _ = !0;
    }
}

/// SMMUv3 §6.3.25 SMMU_STRTAB_BASE_CFG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrtabBaseCfg(pub u32);

impl StrtabBaseCfg {
    /// `FMT[17:16]` = 0b00: linear.
    pub const FMT_LINEAR: u32 = 0;
    /// `FMT[17:16]` = 0b01: two-level.
    pub const FMT_TWO_LEVEL: u32 = 1;

    /// `log2size` = StreamID bits covered; `split` = StreamID bits resolved by
    /// each level-2 table (only for the two-level format).
    pub fn new(format: u32, log2size: u32, split: u32) -> Self {
        Self((format << 16) | ((split & 0x1F) << 6) | (log2size & 0x3F))
    }
}

/// SMMUv3 §6.3.24 STRTAB_BASE / §6.3.26 CMDQ_BASE / §6.3.29 EVENTQ_BASE:
/// RA/WA (read/write-allocate hint) at bit 62.
pub const BASE_ALLOCATE_HINT: u64 = 1 << 62;
/// `ADDR[51:6]` of STRTAB_BASE (64-byte aligned).
pub const STRTAB_BASE_ADDR_MASK: u64 = ((1 << 52) - 1) & !0x3F;
/// `ADDR[51:5]` of the queue base registers; `LOG2SIZE[4:0]` below it.
pub const QUEUE_BASE_ADDR_MASK: u64 = ((1 << 52) - 1) & !0x1F;

/// SMMUv3 §6.3.28 `SMMU_CMDQ_CONS.ERR[30:24]`: why the command at CONS failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// No error.
    None,
    /// CERROR_ILL: illegal or unsupported command.
    Illegal,
    /// CERROR_ABT: the command fetch aborted.
    Abort,
    /// CERROR_ATC_INV_SYNC: an ATC invalidation timed out before a CMD_SYNC.
    AtcInvSync,
    /// Another code.
    Other(u32),
}

impl CommandError {
    /// The error CMDQ_CONS holds.
    pub fn from_cons(cons: u32) -> Self {
        match (cons >> 24) & 0x7F {
            0 => Self::None,
            1 => Self::Illegal,
            2 => Self::Abort,
            3 => Self::AtcInvSync,
            other => Self::Other(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IDR values QEMU 10.0.2 reports for the nested (`virt`) SMMU.
    const QEMU_IDR0: u32 = 0x0d44_101b;
    const QEMU_IDR1: u32 = 0x0273_0010;
    const QEMU_IDR3: u32 = 0x1414;
    const QEMU_IDR5: u32 = 0x74;

    #[test]
    fn decodes_qemu_id_registers() {
        let idr0 = Idr0::from_bits_retain(QEMU_IDR0);
        assert!(idr0.contains(Idr0::S1P | Idr0::S2P | Idr0::COHACC | Idr0::ASID16 | Idr0::VMID16));
        assert!(!idr0.contains(Idr0::MSI));
        assert!(idr0.aarch64_tables());
        assert!(idr0.two_level_stream_table());
        let idr1 = Idr1(QEMU_IDR1);
        assert_eq!(idr1.sid_bits(), 16);
        assert_eq!(idr1.ssid_bits(), 0);
        assert_eq!(idr1.eventq_log2(), 19);
        assert_eq!(idr1.cmdq_log2(), 19);
        assert!(!idr1.tables_preset());
        assert!(Idr3::from_bits_retain(QEMU_IDR3).contains(Idr3::RIL | Idr3::XNX | Idr3::HAD));
        let idr5 = Idr5(QEMU_IDR5);
        assert_eq!(idr5.output_bits(), Some(44));
        assert_eq!(
            idr5.granules().collect::<std::vec::Vec<_>>(),
            [Granule::K4, Granule::K16, Granule::K64]
        );
    }

    #[test]
    fn stage_one_only_idr0_lacks_s2p() {
        let idr0 = Idr0::from_bits_retain(0x0d44_101a);
        assert!(idr0.contains(Idr0::S1P));
        assert!(!idr0.contains(Idr0::S2P));
    }

    #[test]
    fn cmdq_cons_error_decodes() {
        assert_eq!(CommandError::from_cons(0x0100_000b), CommandError::Illegal);
        assert_eq!(CommandError::from_cons(0x0000_000b), CommandError::None);
        assert_eq!(CommandError::from_cons(0x0200_0000), CommandError::Abort);
    }

    #[test]
    fn strtab_cfg_encodes_format_split_and_size() {
        assert_eq!(StrtabBaseCfg::new(StrtabBaseCfg::FMT_LINEAR, 5, 0).0, 5);
        assert_eq!(
            StrtabBaseCfg::new(StrtabBaseCfg::FMT_TWO_LEVEL, 16, 8).0,
            (1 << 16) | (8 << 6) | 16
        );
    }

    #[test]
    fn cr1_values() {
        // QIC=1, QOC=1, QSH=3, TIC=1, TOC=1, TSH=3.
        assert_eq!(cr1::for_walk(Walk::Coherent), 0b11_01_01_11_01_01);
        // Non-cacheable, outer shareable.
        assert_eq!(cr1::for_walk(Walk::NonCoherent), 0b10_00_00_10_00_00);
    }
}
