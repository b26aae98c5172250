//! Fault records (VT-d 3.4 §7.1.3 primary fault logging, §11.4.14 Fault
//! Recording Registers) decoded into values.

use iommu::{Access, DeviceId, FaultReason, FaultRecord, UnitId};

/// FRCD bit 127 (bit 63 of the high word): F, a valid record (W1C).
pub const RECORD_VALID: u64 = 1 << 63;
/// The same bit as seen in the record's top 32-bit dword.
pub const RECORD_VALID_TOP: u32 = 1 << 31;

/// VT-d 3.4 Appendix A fault reasons that the driver distinguishes.
pub mod reason {
    /// Root entry not present.
    pub const ROOT_NOT_PRESENT: u8 = 0x1;
    /// Context entry not present (the blocked state).
    pub const CONTEXT_NOT_PRESENT: u8 = 0x2;
    /// Input address above the domain's address width.
    pub const ADDRESS_BEYOND_WIDTH: u8 = 0x4;
    /// Write to a second-stage entry without W (or not present).
    pub const WRITE: u8 = 0x5;
    /// Read from a second-stage entry without R (or not present).
    pub const READ: u8 = 0x6;
    /// Interrupt remapping: IRTE not present.
    pub const IRTE_NOT_PRESENT: u8 = 0x22;
    /// Interrupt remapping: the requester is not the one the IRTE names (SVT).
    pub const IRTE_SOURCE_ID: u8 = 0x26;
    /// Scalable mode: context entry not present.
    pub const SCALABLE_CONTEXT_NOT_PRESENT: u8 = 0x50;
    /// First stage: a paging entry is not present (seen from QEMU 10.0.2).
    pub const FIRST_STAGE_NOT_PRESENT: u8 = 0x71;
    /// Scalable mode: write to a leaf without write permission (seen from
    /// QEMU 10.0.2 with first-stage tables).
    pub const SCALABLE_WRITE: u8 = 0x85;
}

/// One decoded fault recording register (VT-d 3.4 §11.4.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// FR (103:96).
    pub reason: u8,
    /// SID (79:64): requester id of the faulting device.
    pub source_id: u16,
    /// FI (63:12): the faulting page; for interrupt-remapping faults the
    /// interrupt index sits in bits 63:48 instead.
    pub address: u64,
    /// T (126): 1 = read (or AtomicOp), 0 = write.
    pub is_read: bool,
    /// PV (123:104) when PP (95) is set; QEMU fills PV with junk when PP = 0.
    pub pasid: Option<u32>,
}

impl Fault {
    /// Decodes the two halves of a record whose F bit is set.
    pub fn decode(low: u64, high: u64) -> Option<Self> {
        if high & RECORD_VALID == 0 {
            return None;
        }
        let pasid_present = high & (1 << 31) != 0;
        Some(Self {
            reason: (high >> 32) as u8,
            source_id: high as u16,
            address: low & !0xFFF,
            is_read: high & (1 << 62) != 0,
            pasid: pasid_present.then_some(((high >> 40) & 0xF_FFFF) as u32),
        })
    }

    /// Interrupt-remapping faults (reasons 0x20-0x2F) describe an interrupt, not a DMA.
    pub fn is_interrupt_fault(&self) -> bool {
        (0x20..0x30).contains(&self.reason)
    }

    /// For interrupt-remapping faults: the interrupt index (FI bits 63:48).
    pub fn interrupt_index(&self) -> u16 {
        (self.address >> 48) as u16
    }

    /// The hardware-independent record; the raw reason is kept in `Other`
    /// where the common vocabulary has no word for it.
    pub fn to_record(&self, unit: UnitId) -> FaultRecord {
        let reason = match self.reason {
            reason::ROOT_NOT_PRESENT
            | reason::CONTEXT_NOT_PRESENT
            | reason::SCALABLE_CONTEXT_NOT_PRESENT => FaultReason::Blocked,
            reason::ADDRESS_BEYOND_WIDTH => FaultReason::AddressSize,
            // VT-d reports a non-present leaf as missing read/write permission
            // (an absent entry has R = W = 0), so both are "not permitted".
            reason::WRITE | reason::READ | reason::SCALABLE_WRITE => FaultReason::Permission,
            reason::FIRST_STAGE_NOT_PRESENT => FaultReason::NotPresent,
            other => FaultReason::Other(u32::from(other)),
        };
        FaultRecord {
            unit,
            vendor_code: u32::from(self.reason),
            requester: DeviceId(u32::from(self.source_id)),
            iova: self.address,
            access: if self.is_read {
                Access::Read
            } else {
                Access::Write
            },
            reason,
            guest_event: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record QEMU 10.0.2 left after an edu read of an unmapped IOVA (measured).
    #[test]
    fn decodes_the_measured_qemu_record() {
        let fault = Fault::decode(0x0b00_0000, 0xc0ff_ff06_0000_0008).unwrap();
        assert_eq!(
            fault,
            Fault {
                reason: reason::READ,
                source_id: 0x0008,
                address: 0x0b00_0000,
                is_read: true,
                pasid: None,
            }
        );
        let record = fault.to_record(UnitId(0));
        assert_eq!(record.requester, DeviceId(8));
        assert_eq!(record.access, Access::Read);
        assert_eq!(record.reason, FaultReason::Permission);
    }

    #[test]
    fn ignores_cleared_records_and_decodes_pasid_and_writes() {
        assert_eq!(Fault::decode(0x1000, 0x0000_0006_0000_0008), None);
        let fault = Fault::decode(
            0x2000,
            (1 << 63) | (0x5 << 32) | (1 << 31) | (7 << 40) | 0x20,
        )
        .unwrap();
        assert!(!fault.is_read);
        assert_eq!(fault.pasid, Some(7));
        assert_eq!(fault.to_record(UnitId(1)).access, Access::Write);
        let ir = Fault::decode(0x0005_0000_0000_0000, (1 << 63) | (0x22 << 32) | 0x20).unwrap();
        assert!(ir.is_interrupt_fault());
        assert_eq!(ir.interrupt_index(), 5);
    }
}
