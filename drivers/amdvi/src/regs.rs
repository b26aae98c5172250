//! The AMD-Vi MMIO register block (AMD IOMMU §3.4) and the IOMMU capability block in
//! the IOMMU's PCI configuration space (§3.2.1).
//!
//! Every register here is 64 bits wide and accessed with 64-bit loads and stores:
//! QEMU 10.0.2 latches a base-address register only when its high dword (or the whole
//! quadword) is written, and returns all-ones for 1-byte reads.

use bitflags::bitflags;
use os_services::mmio::Reg64;

/// Size of the register block the IVHD's base address names (§3.4: 16 KiB).
pub const MMIO_SIZE: usize = 16 * 1024;

/// §3.4.1 Device Table Base Address Register.
pub const DEVICE_TABLE_BASE: Reg64 = Reg64(0x0000);
/// §3.4.2 Command Buffer Base Address Register.
pub const COMMAND_BUFFER_BASE: Reg64 = Reg64(0x0008);
/// §3.4.3 Event Log Base Address Register.
pub const EVENT_LOG_BASE: Reg64 = Reg64(0x0010);
/// §3.4.4 IOMMU Control Register.
pub const CONTROL: Reg64 = Reg64(0x0018);
/// §3.4.5 IOMMU Exclusion Base Register.
pub const EXCLUSION_BASE: Reg64 = Reg64(0x0020);
/// §3.4.6 IOMMU Exclusion Range Limit Register.
pub const EXCLUSION_LIMIT: Reg64 = Reg64(0x0028);
/// §3.4.7 IOMMU Extended Feature Register.
pub const EXTENDED_FEATURE: Reg64 = Reg64(0x0030);
/// §3.4.7 IOMMU Extended Feature 2 Register.
pub const EXTENDED_FEATURE_2: Reg64 = Reg64(0x01A0);
/// §3.4.9 Command Buffer Head Pointer Register (byte offset, bits 18:4).
pub const COMMAND_HEAD: Reg64 = Reg64(0x2000);
/// §3.4.9 Command Buffer Tail Pointer Register (byte offset, bits 18:4).
pub const COMMAND_TAIL: Reg64 = Reg64(0x2008);
/// §3.4.10 Event Log Head Pointer Register (byte offset, bits 18:4).
pub const EVENT_HEAD: Reg64 = Reg64(0x2010);
/// §3.4.10 Event Log Tail Pointer Register (byte offset, bits 18:4).
pub const EVENT_TAIL: Reg64 = Reg64(0x2018);
/// §3.4.11 IOMMU Status Register.
pub const STATUS: Reg64 = Reg64(0x2020);

/// Bits 51:12 of a base-address register: a 4 KiB-aligned system physical address.
pub const BASE_ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// §3.4.9/§3.4.10: head and tail pointers are byte offsets in bits 18:4.
pub const RING_POINTER_MASK: u64 = 0x0007_FFF0;
/// Every command-buffer (§2.4) and event-log (§2.5) entry is 128 bits.
pub const ENTRY_SIZE: u32 = 16;

/// §3.4.1 Device Table Base Address Register: DevTabBase (51:12) and Size (8:0),
/// the table length in 4 KiB units minus one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTableBase(pub u64);

impl DeviceTableBase {
    /// Largest Size field: 512 pages = 2 MiB = 65536 entries.
    pub const MAX_PAGES: u64 = 512;

    /// `None` when `phys` is not 4 KiB aligned or `pages` is not in 1..=512.
    pub fn new(phys: u64, pages: u64) -> Option<Self> {
        let aligned = phys & !BASE_ADDRESS_MASK == 0;
        (aligned && (1..=Self::MAX_PAGES).contains(&pages)).then(|| Self(phys | (pages - 1)))
    }
}

/// §3.4.2 / §3.4.3: the command buffer and event log base registers share one layout:
/// base in 51:12 and the length as log2(entries) in 59:56 (8 = 256 entries minimum,
/// 15 = 32768 entries maximum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBase(pub u64);

impl RingBase {
    /// Where the log2 of the entries goes (bits 59:56).
    pub const LENGTH_SHIFT: u32 = 56;
    /// The smallest ring: 256 entries.
    pub const MIN_LOG2_ENTRIES: u32 = 8;
    /// The largest ring: 32768 entries.
    pub const MAX_LOG2_ENTRIES: u32 = 15;

    /// The base register value of a ring at `phys` of `2^log2_entries` entries; `None` when either is out of range.
    pub fn new(phys: u64, log2_entries: u32) -> Option<Self> {
        let aligned = phys & !BASE_ADDRESS_MASK == 0;
        let sized = (Self::MIN_LOG2_ENTRIES..=Self::MAX_LOG2_ENTRIES).contains(&log2_entries);
        (aligned && sized).then(|| Self(phys | u64::from(log2_entries) << Self::LENGTH_SHIFT))
    }
}

bitflags! {
    /// §3.4.4 IOMMU Control Register (the bits this driver uses or must keep clear).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Control: u64 {
        /// IommuEn: translation and the command/event machinery are on.
        const IOMMU_EN = 1 << 0;
        /// HtTunEn: HyperTransport tunnel translation.
        const HT_TUN_EN = 1 << 1;
        /// EventLogEn: events are written to the event log.
        const EVENT_LOG_EN = 1 << 2;
        /// EventIntEn: an interrupt when an event is logged.
        const EVENT_INT_EN = 1 << 3;
        /// ComWaitIntEn: COMPLETION_WAIT with I=1 raises an interrupt.
        const COM_WAIT_INT_EN = 1 << 4;
        /// InvTimeOut (bits 7:5) = 2: a device-IOTLB invalidation the device
        /// does not answer within 10 ms is logged as IOTLB_INV_TIMEOUT (§2.5.8)
        /// instead of holding the command buffer forever; shorter than the
        /// driver's own COMPLETION_WAIT bound, so the IOMMU gives up first.
        const INV_TIMEOUT_10MS = 2 << 5;
        /// The whole InvTimeOut field (bits 7:5; 0 = no timeout).
        const INV_TIMEOUT = 7 << 5;
        /// Coherent: the IOMMU's device-table reads snoop the processor
        /// caches. Clear, it reads DRAM, where a DTE the CPU wrote may not be yet:
        /// a stale zero entry (V=0) means *pass-through* on AMD (§2.2.2.1).
        const COHERENT = 1 << 10;
        /// CmdBufEn: the IOMMU fetches commands.
        const CMD_BUF_EN = 1 << 12;
        /// PPRLogEn.
        const PPR_LOG_EN = 1 << 13;
        /// GTEn: guest (v2) translation.
        const GT_EN = 1 << 16;
        /// GAEn: 128-bit guest-virtual-APIC IRTE format.
        const GA_EN = 1 << 17;
        /// XTEn: x2APIC interrupt destinations.
        const XT_EN = 1 << 49;
    }
}

bitflags! {
    /// §3.4.5 IOMMU Exclusion Base Register: with ExEn, DMA to the range
    /// up to the Exclusion Range Limit bypasses translation (for every
    /// device with Allow, or whose DTE has EX). Firmware may leave it set; this
    /// driver never uses it and clears both registers at bring-up.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ExclusionBase: u64 {
        /// ExEn: the exclusion range is active.
        const EX_EN = 1 << 0;
        /// Allow: the range is excluded for every device.
        const ALLOW = 1 << 1;
        /// ExclBase (51:12).
        const BASE = BASE_ADDRESS_MASK;
    }
}

bitflags! {
    /// §3.4.11 IOMMU Status Register. EventOverflow, EventLogInt, ComWaitInt,
    /// PprOverflow and PprInt are write-1-to-clear; the *Run bits are read-only.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Status: u64 {
        /// EventOverflow: the event log was full; events were lost.
        const EVENT_OVERFLOW = 1 << 0;
        /// EventLogInt: an event was logged.
        const EVENT_LOG_INT = 1 << 1;
        /// ComWaitInt: a COMPLETION_WAIT with I completed.
        const COM_WAIT_INT = 1 << 2;
        /// EventLogRun: the event log is running.
        const EVENT_LOG_RUN = 1 << 3;
        /// CmdBufRun: the command buffer is running.
        const CMD_BUF_RUN = 1 << 4;
        /// PprOverflow: the PPR log was full.
        const PPR_OVERFLOW = 1 << 5;
        /// PprInt: a PPR request was logged.
        const PPR_INT = 1 << 6;
        /// PprLogRun: the PPR log is running.
        const PPR_LOG_RUN = 1 << 7;
    }
}

/// §3.4.7 IOMMU Extended Feature Register, kept raw for `get_hw_info` and decoded on
/// demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtendedFeatures(pub u64);

impl ExtendedFeatures {
    /// Bit 0 PreFSup: PREFETCH_IOMMU_PAGES is implemented.
    pub fn prefetch(self) -> bool {
        self.0 & 1 != 0
    }
    /// Bit 1 PPRSup: peripheral page requests.
    pub fn ppr(self) -> bool {
        self.0 & (1 << 1) != 0
    }
    /// Bit 2 XTSup: x2APIC destinations.
    pub fn x2apic(self) -> bool {
        self.0 & (1 << 2) != 0
    }
    /// Bit 3 NXSup: no-execute protection.
    pub fn no_execute(self) -> bool {
        self.0 & (1 << 3) != 0
    }
    /// Bit 4 GTSup: guest (v2) translation.
    pub fn guest_translation(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// Bit 6 IASup: INVALIDATE_IOMMU_ALL is implemented.
    pub fn invalidate_all(self) -> bool {
        self.0 & (1 << 6) != 0
    }
    /// Bit 7 GASup: guest virtual APIC (128-bit IRTEs).
    pub fn guest_apic(self) -> bool {
        self.0 & (1 << 7) != 0
    }
    /// Bit 8 HESup: hardware error registers.
    pub fn hardware_errors(self) -> bool {
        self.0 & (1 << 8) != 0
    }
    /// Bits 11:10 HATS: host page-table levels, 0 = 4, 1 = 5, 2 = 6 (3 reserved).
    pub fn host_levels(self) -> Option<u8> {
        match (self.0 >> 10) & 0x3 {
            3 => None,
            hats => Some(4 + hats as u8),
        }
    }
    /// Bit 52 HDSup: the IOMMU sets the D bit of host (v1) page-table leaves
    /// it writes through when the DTE enables HAD (Linux `FEATURE_HDSUP`).
    pub fn host_dirty(self) -> bool {
        self.0 & (1 << 52) != 0
    }
}

/// §3.2.1 IOMMU Capability Header, the first dword of the IOMMU's PCI capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapabilityHeader(pub u32);

impl CapabilityHeader {
    /// Bits 7:0 CapID: 0Fh (secure device).
    pub const CAP_ID: u8 = 0x0F;
    /// Bits 18:16 CapType: 3 = IOMMU.
    pub const CAP_TYPE_IOMMU: u8 = 3;

    /// CapId: 0Fh for the IOMMU.
    pub fn cap_id(self) -> u8 {
        self.0 as u8
    }
    /// CapType: 3 for the IOMMU capability.
    pub fn cap_type(self) -> u8 {
        ((self.0 >> 16) & 0x7) as u8
    }
    /// Bit 24 IotlbSup: remote (device) IOTLBs supported.
    pub fn iotlb(self) -> bool {
        self.0 & (1 << 24) != 0
    }
    /// Bit 26 NpCache: the IOMMU may cache not-present (zero) page-table entries, so
    /// software must invalidate after *creating* a mapping too.
    pub fn np_cache(self) -> bool {
        self.0 & (1 << 26) != 0
    }
    /// Bit 27 EFRSup: the Extended Feature Register exists.
    pub fn efr(self) -> bool {
        self.0 & (1 << 27) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_table_base_encodes_size_minus_one() {
        assert_eq!(
            DeviceTableBase::new(0x12_3000, 1),
            Some(DeviceTableBase(0x12_3000))
        );
        assert_eq!(
            DeviceTableBase::new(0x12_3000, 512),
            Some(DeviceTableBase(0x12_31FF))
        );
        assert_eq!(DeviceTableBase::new(0x12_3800, 1), None);
        assert_eq!(DeviceTableBase::new(0x12_3000, 0), None);
        assert_eq!(DeviceTableBase::new(0x12_3000, 513), None);
    }

    #[test]
    fn ring_base_puts_log2_length_in_bits_59_56() {
        assert_eq!(
            RingBase::new(0x8000, 8),
            Some(RingBase(0x0800_0000_0000_8000))
        );
        assert_eq!(RingBase::new(0x8000, 7), None);
        assert_eq!(RingBase::new(0x8000, 16), None);
        assert_eq!(RingBase::new(0x8010, 8), None);
    }

    #[test]
    fn qemu_efr_decodes_as_measured() {
        // QEMU 10.0.2 default EFR (docs/QEMU.md §2): PreF, PPR, GT, IA, GA, HE, HATS=2.
        let efr = ExtendedFeatures(0x29d3);
        assert!(efr.prefetch() && efr.ppr() && efr.guest_translation());
        assert!(efr.invalidate_all() && efr.guest_apic() && efr.hardware_errors());
        assert!(!efr.x2apic() && !efr.no_execute());
        assert_eq!(efr.host_levels(), Some(6));
    }

    #[test]
    fn qemu_capability_header_has_np_cache() {
        let header = CapabilityHeader(0x1f03_000f);
        assert_eq!(header.cap_id(), CapabilityHeader::CAP_ID);
        assert_eq!(header.cap_type(), CapabilityHeader::CAP_TYPE_IOMMU);
        assert!(header.np_cache() && header.efr() && header.iotlb());
        assert!(!CapabilityHeader(0x1b03_000f).np_cache());
    }
}
