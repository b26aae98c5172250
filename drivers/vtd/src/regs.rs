//! VT-d remapping-hardware registers (VT-d 3.4 §11.4), typed.
//!
//! Access widths matter on QEMU: a 64-bit access to a 32-bit register at an
//! 8-aligned offset aborts the emulator, so every register below carries its
//! width in its type ([`Reg32`] or [`Reg64`]).

use bitflags::bitflags;
use os_services::mmio::{Reg32, Reg64};

/// VT-d 3.4 §11.4.1 Version Register.
pub const VER: Reg32 = Reg32(0x00);
/// VT-d 3.4 §11.4.2 Capability Register.
pub const CAP: Reg64 = Reg64(0x08);
/// VT-d 3.4 §11.4.3 Extended Capability Register.
pub const ECAP: Reg64 = Reg64(0x10);
/// VT-d 3.4 §11.4.4 Global Command Register.
pub const GCMD: Reg32 = Reg32(0x18);
/// VT-d 3.4 §11.4.5 Global Status Register.
pub const GSTS: Reg32 = Reg32(0x1C);
/// VT-d 3.4 §11.4.6 Root Table Address Register.
pub const RTADDR: Reg64 = Reg64(0x20);
/// VT-d 3.4 §11.4.7 Context Command Register.
pub const CCMD: Reg64 = Reg64(0x28);
/// VT-d 3.4 §11.4.9.1 Fault Status Register.
pub const FSTS: Reg32 = Reg32(0x34);
/// VT-d 3.4 §11.4.9.2 Fault Event Control Register.
pub const FECTL: Reg32 = Reg32(0x38);
/// VT-d 3.4 §11.4.9.3 Fault Event Data Register.
pub const FEDATA: Reg32 = Reg32(0x3C);
/// VT-d 3.4 §11.4.9.4 Fault Event Address Register.
pub const FEADDR: Reg32 = Reg32(0x40);
/// VT-d 3.4 §11.4.9.5 Fault Event Upper Address Register.
pub const FEUADDR: Reg32 = Reg32(0x44);
/// VT-d 3.4 §11.4.10.1 Invalidation Queue Head Register.
pub const IQH: Reg64 = Reg64(0x80);
/// IQH.QH (bits 18:4): the byte offset of the next descriptor the hardware
/// fetches; the bits around it are reserved.
pub const IQH_QH_MASK: u64 = 0x7_FFF0;
/// VT-d 3.4 §11.4.10.2 Invalidation Queue Tail Register.
pub const IQT: Reg64 = Reg64(0x88);
/// VT-d 3.4 §11.4.10.3 Invalidation Queue Address Register.
pub const IQA: Reg64 = Reg64(0x90);
/// VT-d 3.4 §11.4.10.4 Invalidation Completion Status Register.
pub const ICS: Reg32 = Reg32(0x9C);
/// VT-d 3.4 §11.4.11.1 Interrupt Remapping Table Address Register.
pub const IRTA: Reg64 = Reg64(0xB8);

/// VT-d 3.4 §11.4.8.1 Invalidate Address Register, at ECAP.IRO × 16.
pub fn iva(ecap: Ecap) -> Reg64 {
    Reg64(ecap.iotlb_register_offset())
}

/// VT-d 3.4 §11.4.8.2 IOTLB Invalidate Register, 8 bytes after IVA.
pub fn iotlb(ecap: Ecap) -> Reg64 {
    Reg64(ecap.iotlb_register_offset() + 8)
}

/// Bytes of one fault recording register (VT-d 3.4 §11.4.14).
pub const FAULT_RECORD_SIZE: usize = 16;

/// VT-d 3.4 §11.4.14 Fault Recording Register `index`, low 64 bits (fault info).
pub fn fault_record_low(cap: Cap, index: usize) -> Reg64 {
    Reg64(cap.fault_record_offset() + index * FAULT_RECORD_SIZE)
}

/// VT-d 3.4 §11.4.14 Fault Recording Register `index`, high 64 bits.
pub fn fault_record_high(cap: Cap, index: usize) -> Reg64 {
    Reg64(cap.fault_record_offset() + index * FAULT_RECORD_SIZE + 8)
}

/// The top 32 bits of a fault record, where the W1C Fault bit lives; written
/// with a 32-bit access so that nothing else in the record is touched.
pub fn fault_record_top(cap: Cap, index: usize) -> Reg32 {
    Reg32(cap.fault_record_offset() + index * FAULT_RECORD_SIZE + 12)
}

const fn field(value: u64, low: u32, width: u32) -> u64 {
    (value >> low) & ((1u64 << width) - 1)
}

/// VT-d 3.4 §11.4.2 Capability Register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u64);

impl Cap {
    /// ND (2:0): domain ids supported, 2^(4 + 2·ND).
    pub fn domain_count(self) -> u32 {
        1u32 << (4 + 2 * field(self.0, 0, 3) as u32)
    }
    /// RWBF (4): software must flush the write buffer after table updates.
    pub fn required_write_buffer_flush(self) -> bool {
        field(self.0, 4, 1) == 1
    }
    /// CM (7): not-present and faulting entries may be cached.
    pub fn caching_mode(self) -> bool {
        field(self.0, 7, 1) == 1
    }
    /// SAGAW (12:8): bit n set ⇒ (n + 2)-level second-stage tables supported.
    pub fn sagaw(self) -> u8 {
        field(self.0, 8, 5) as u8
    }
    /// MGAW (21:16) + 1: maximum guest address width in bits.
    pub fn max_guest_address_width(self) -> u32 {
        field(self.0, 16, 6) as u32 + 1
    }
    /// FRO (33:24): fault recording registers at FRO × 16.
    pub fn fault_record_offset(self) -> usize {
        field(self.0, 24, 10) as usize * 16
    }
    /// SLLPS (37:34): bit 0 2 MiB, bit 1 1 GiB second-stage leaves.
    pub fn second_stage_large_pages(self) -> u8 {
        field(self.0, 34, 4) as u8
    }
    /// PSI (39): page-selective IOTLB invalidation supported.
    pub fn page_selective_invalidation(self) -> bool {
        field(self.0, 39, 1) == 1
    }
    /// NFR (47:40) + 1: number of fault recording registers.
    pub fn fault_record_count(self) -> usize {
        field(self.0, 40, 8) as usize + 1
    }
    /// MAMV (53:48): largest address mask of a page-selective invalidation.
    pub fn max_address_mask(self) -> u32 {
        field(self.0, 48, 6) as u32
    }
    /// FS1GP (56): first-stage 1 GiB pages.
    pub fn first_stage_1g_pages(self) -> bool {
        field(self.0, 56, 1) == 1
    }
}

/// VT-d 3.4 §11.4.3 Extended Capability Register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ecap(pub u64);

impl Ecap {
    /// C (0): page walks snoop the CPU caches.
    pub fn coherent(self) -> bool {
        field(self.0, 0, 1) == 1
    }
    /// QI (1): queued invalidation.
    pub fn queued_invalidation(self) -> bool {
        field(self.0, 1, 1) == 1
    }
    /// IR (3): interrupt remapping.
    pub fn interrupt_remapping(self) -> bool {
        field(self.0, 3, 1) == 1
    }
    /// EIM (4): x2APIC (32-bit destination) interrupt remapping.
    pub fn extended_interrupt_mode(self) -> bool {
        field(self.0, 4, 1) == 1
    }
    /// PT (6): pass-through translation type.
    pub fn pass_through(self) -> bool {
        field(self.0, 6, 1) == 1
    }
    /// IRO (17:8): IOTLB registers at IRO × 16.
    pub fn iotlb_register_offset(self) -> usize {
        field(self.0, 8, 10) as usize * 16
    }
    /// SMTS (43): scalable-mode translation.
    pub fn scalable_mode(self) -> bool {
        field(self.0, 43, 1) == 1
    }
    /// SLADS (45): the hardware sets the A and D bits of second-stage leaves
    /// when the PASID entry asks (SSADE): dirty tracking (§9.6; Linux
    /// `ecap_slads`).
    pub fn second_stage_access_dirty(self) -> bool {
        field(self.0, 45, 1) == 1
    }
    /// SLTS (46): second-stage translation in scalable mode.
    pub fn second_stage(self) -> bool {
        field(self.0, 46, 1) == 1
    }
    /// FLTS (47): first-stage translation in scalable mode.
    pub fn first_stage(self) -> bool {
        field(self.0, 47, 1) == 1
    }
    /// SMPWC (48): in scalable mode, page walks snoop when the PASID entry
    /// asks (PWSNP); C says nothing about them there (§3.6, §9.6).
    pub fn scalable_page_walk_coherent(self) -> bool {
        field(self.0, 48, 1) == 1
    }
}

bitflags! {
    /// VT-d 3.4 §11.4.4 Global Command Register and §11.4.5 Global Status
    /// Register: each command bit has its status twin at the same position.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Global: u32 {
        /// TE / TES: translation enable.
        const TRANSLATION = 1 << 31;
        /// SRTP / RTPS: set root table pointer (one-shot).
        const ROOT_TABLE_POINTER = 1 << 30;
        /// SFL / FLS: set fault log (one-shot).
        const FAULT_LOG = 1 << 29;
        /// EAFL / AFLS: advanced fault logging.
        const ADVANCED_FAULT_LOG = 1 << 28;
        /// WBF / WBFS: write-buffer flush (one-shot; status set while pending).
        const WRITE_BUFFER_FLUSH = 1 << 27;
        /// QIE / QIES: queued invalidation enable.
        const QUEUED_INVALIDATION = 1 << 26;
        /// IRE / IRES: interrupt remapping enable.
        const INTERRUPT_REMAPPING = 1 << 25;
        /// SIRTP / IRTPS: set interrupt remapping table pointer (one-shot).
        const IRT_POINTER = 1 << 24;
        /// CFI / CFIS: compatibility-format interrupts pass through.
        const COMPATIBILITY_FORMAT = 1 << 23;
    }
}

impl Global {
    /// The enables that stay set in GSTS and must be written back unchanged
    /// with every GCMD write; the one-shot commands are never among them
    /// (VT-d 3.4 §11.4.4: "software must not re-issue one-shot commands").
    pub const PERSISTENT: Self = Self::TRANSLATION
        .union(Self::ADVANCED_FAULT_LOG)
        .union(Self::QUEUED_INVALIDATION)
        .union(Self::INTERRUPT_REMAPPING)
        .union(Self::COMPATIBILITY_FORMAT);

    /// The GCMD value that keeps every enable of `status` and adds or
    /// removes `command`.
    pub fn command(status: Global, command: Global, on: bool) -> Global {
        let kept = status & Self::PERSISTENT;
        if on { kept | command } else { kept - command }
    }
}

bitflags! {
    /// VT-d 3.4 §11.4.9.1 Fault Status Register.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FaultStatus: u32 {
        /// PFO: primary fault overflow (W1C).
        const OVERFLOW = 1 << 0;
        /// PPF: a fault record is pending (derived from the records' F bits).
        const PENDING = 1 << 1;
        /// IQE: invalidation queue error (W1C).
        const QUEUE_ERROR = 1 << 4;
        /// ICE: invalidation completion error (W1C).
        const COMPLETION_ERROR = 1 << 5;
        /// ITE: invalidation time-out error (W1C).
        const TIMEOUT_ERROR = 1 << 6;
        const _ = !0;
    }
}

impl FaultStatus {
    /// FRI (15:8): index of the first pending fault record.
    pub fn first_record(self) -> usize {
        ((self.bits() >> 8) & 0xFF) as usize
    }
}

bitflags! {
    /// VT-d 3.4 §11.4.9.2 Fault Event Control Register.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FaultControl: u32 {
        /// IM: interrupt mask (set at reset).
        const MASK = 1 << 31;
        /// IP: interrupt pending (read-only).
        const PENDING = 1 << 30;
    }
}

/// VT-d 3.4 §11.4.6 RTADDR.TTM (11:10): legacy or scalable-mode root table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableMode {
    /// Root entries name context tables (§9.1).
    Legacy = 0b00,
    /// Scalable-mode root entries (§9.2).
    Scalable = 0b01,
}

/// VT-d 3.4 §11.4.6 Root Table Address Register value.
pub fn root_table_address(table: u64, mode: TableMode) -> u64 {
    table | ((mode as u64) << 10)
}

/// VT-d 3.4 §11.4.10.3 IQA.DW (11): 256-bit descriptors.
pub const IQA_WIDE: u64 = 1 << 11;

/// VT-d 3.4 §11.4.10.3 Invalidation Queue Address Register value for a queue
/// of 2^`size_log2` 4 KiB pages.
pub fn queue_address(base: u64, wide: bool, size_log2: u8) -> u64 {
    base | if wide { IQA_WIDE } else { 0 } | u64::from(size_log2 & 0x7)
}

/// VT-d 3.4 §11.4.11.1 IRTA: base, EIME (11), S (3:0) with 2^(S+1) entries.
pub fn irt_address(base: u64, extended: bool, entries_log2: u8) -> u64 {
    base | if extended { 1 << 11 } else { 0 } | u64::from(entries_log2.saturating_sub(1) & 0xF)
}

/// VT-d 3.4 §11.4.7 CCMD.CIRG / §11.4.8.2 IOTLB.IIRG / §6.5.2 descriptor G:
/// how much an invalidation covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// Everything.
    Global = 1,
    /// One domain.
    Domain = 2,
    /// Device (context cache) or page (IOTLB) selective.
    Selective = 3,
}

/// VT-d 3.4 §11.4.7 CCMD: ICC (63) | CIRG (62:61) | FM (33:32) | SID (31:16) | DID (15:0).
pub fn context_command(granularity: Granularity, did: u16, sid: u16) -> u64 {
    (1 << 63) | ((granularity as u64) << 61) | (u64::from(sid) << 16) | u64::from(did)
}

/// CCMD.ICC: set until the invalidation completed.
pub const CCMD_BUSY: u64 = 1 << 63;

/// VT-d 3.4 §11.4.8.2 IOTLB register: IVT (63) | IIRG (61:60) | DR (49) | DW (48) | DID (47:32).
pub fn iotlb_command(granularity: Granularity, did: u16) -> u64 {
    (1 << 63) | ((granularity as u64) << 60) | (1 << 49) | (1 << 48) | (u64::from(did) << 32)
}

/// IOTLB.IVT: set until the invalidation completed.
pub const IOTLB_BUSY: u64 = 1 << 63;

/// VT-d 3.4 §11.4.8.1 IVA: ADDR (63:12) | IH (6) | AM (5:0).
pub fn invalidate_address(address: u64, mask: u8, leaf_only: bool) -> u64 {
    (address & !0xFFF) | if leaf_only { 1 << 6 } else { 0 } | u64::from(mask & 0x3F)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 10.0.2's default CAP/ECAP (measured), decoded by hand from the spec.
    #[test]
    fn decodes_qemu_default_capabilities() {
        let cap = Cap(0x00d2_008c_222f_0606);
        assert_eq!(cap.domain_count(), 65536);
        assert!(!cap.caching_mode());
        assert!(!cap.required_write_buffer_flush());
        assert_eq!(cap.sagaw(), 0b00110);
        assert_eq!(cap.max_guest_address_width(), 48);
        assert_eq!(cap.fault_record_offset(), 0x220);
        assert_eq!(cap.fault_record_count(), 1);
        assert_eq!(cap.second_stage_large_pages(), 0b11);
        assert!(cap.page_selective_invalidation());
        assert_eq!(cap.max_address_mask(), 18);
        assert!(Cap(0x00d2_008c_222f_0686).caching_mode());
        assert!(Cap(0x01d2_008c_222f_0606).first_stage_1g_pages());

        let ecap = Ecap(0xf00f4a);
        assert!(ecap.queued_invalidation());
        assert!(ecap.interrupt_remapping());
        assert!(ecap.pass_through());
        assert!(!ecap.extended_interrupt_mode());
        assert!(!ecap.coherent());
        assert_eq!(ecap.iotlb_register_offset(), 0xF0);
        assert_eq!(iva(ecap), Reg64(0xF0));
        assert_eq!(iotlb(ecap), Reg64(0xF8));
        assert!(!ecap.scalable_mode());
        let scalable = Ecap(0x0000_4800_80f0_0f4a);
        assert!(scalable.scalable_mode() && scalable.second_stage() && !scalable.first_stage());
        let first = Ecap(0x0000_8800_00f0_0f4a);
        assert!(first.scalable_mode() && first.first_stage() && !first.second_stage());
    }

    #[test]
    fn gcmd_never_reissues_one_shot_commands() {
        // QEMU keeps RTPS and IRTPS set forever: copying them back would re-fire
        // SRTP/SIRTP and silently flush every cache.
        let status = Global::TRANSLATION
            | Global::ROOT_TABLE_POINTER
            | Global::QUEUED_INVALIDATION
            | Global::IRT_POINTER;
        let command = Global::command(status, Global::INTERRUPT_REMAPPING, true);
        assert_eq!(command.bits(), 0x8600_0000);
        assert_eq!(
            Global::command(status, Global::TRANSLATION, false).bits(),
            0x0400_0000
        );
        assert_eq!(Global::PERSISTENT.bits() & 0x4900_0000, 0);
    }

    #[test]
    fn register_command_encodings() {
        assert_eq!(
            root_table_address(0x1234_5000, TableMode::Scalable),
            0x1234_5400
        );
        assert_eq!(queue_address(0x7000, true, 0), 0x7800);
        assert_eq!(irt_address(0x9000, false, 8), 0x9007);
        assert_eq!(
            context_command(Granularity::Global, 0, 0),
            0xA000_0000_0000_0000
        );
        assert_eq!(
            context_command(Granularity::Selective, 3, 0x20),
            0xE000_0000_0020_0003
        );
        assert_eq!(iotlb_command(Granularity::Domain, 5), 0xA003_0005_0000_0000);
        assert_eq!(invalidate_address(0x12_3456, 4, true), 0x12_3044);
    }

    #[test]
    fn fault_status_fields() {
        let status = FaultStatus::from_bits_retain(0x0302);
        assert!(status.contains(FaultStatus::PENDING));
        assert_eq!(status.first_record(), 3);
    }
}
