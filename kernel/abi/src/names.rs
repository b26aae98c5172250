//! The words a person reads for the numbers a fault record carries: the
//! common reason, the access, and the unit's own code by the name its
//! specification gives it (VT-d fault reasons, SMMUv3 event types, AMD-Vi
//! event codes), so that a program's report says what the hardware said.

use crate::{FaultAccess, FaultReasonCode, HwInfoType};

/// The common reason `code` ([`FaultRecord::reason`](crate::FaultRecord)) in words.
pub fn reason(code: u32) -> &'static str {
    match code {
        c if c == FaultReasonCode::NotPresent as u32 => "nothing mapped there",
        c if c == FaultReasonCode::Permission as u32 => "the mapping forbids this access",
        c if c == FaultReasonCode::AddressSize as u32 => "beyond the domain's address size",
        c if c == FaultReasonCode::Blocked as u32 => "the device is blocked",
        c if c == FaultReasonCode::Other as u32 => "another reason (the unit's code says which)",
        _ => "an unknown reason",
    }
}

/// The access `bits` ([`FaultAccess`]) in words.
pub fn access(bits: u32) -> &'static str {
    let access = FaultAccess::from_bits_truncate(bits);
    if access.contains(FaultAccess::EXEC) {
        "instruction fetch"
    } else if access.contains(FaultAccess::WRITE) {
        "write"
    } else if access.contains(FaultAccess::READ) {
        "read"
    } else {
        "access"
    }
}

/// What the unit calls `code` (a [`FaultRecord::vendor_reason`](crate::FaultRecord)),
/// for a unit whose `get_hw_info` answered `data_type` (an [`HwInfoType`]):
/// the spec's identifier and a few words. `None` for a code the table does
/// not know (the number is still the spec's).
pub fn vendor_reason(data_type: u32, code: u32) -> Option<&'static str> {
    match data_type {
        t if t == HwInfoType::IntelVtd as u32 => vtd_fault_reason(code),
        t if t == HwInfoType::ArmSmmuV3 as u32 => smmuv3_event(code),
        t if t == HwInfoType::AmdVi as u32 => amdvi_event(code),
        _ => None,
    }
}

/// The vendor's name for the kind of code [`vendor_reason`] decodes.
pub fn vendor_code_kind(data_type: u32) -> &'static str {
    match data_type {
        t if t == HwInfoType::IntelVtd as u32 => "VT-d fault reason",
        t if t == HwInfoType::ArmSmmuV3 as u32 => "SMMUv3 event",
        t if t == HwInfoType::AmdVi as u32 => "AMD-Vi event code",
        _ => "unit code",
    }
}

/// VT-d 3.4 Appendix A, non-recoverable fault reasons (the ones this
/// kernel's units report; the interrupt-remapping ones are 20h and up).
fn vtd_fault_reason(code: u32) -> Option<&'static str> {
    Some(match code {
        0x01 => "root entry not present",
        0x02 => "context entry not present",
        0x03 => "context entry programmed wrong",
        0x04 => "address beyond the domain's address width",
        0x05 => "write through an entry without write permission",
        0x06 => "read through an entry without read permission",
        0x07 => "error reading a paging entry",
        0x08 => "root table address invalid",
        0x09 => "context table address invalid",
        0x0A => "reserved bit set in a root entry",
        0x0B => "reserved bit set in a context entry",
        0x0C => "reserved bit set in a paging entry",
        0x0D => "translation type blocks the request",
        0x22 => "interrupt: IRTE not present",
        0x26 => "interrupt: requester is not the one the IRTE names",
        0x50 => "scalable mode: context entry not present",
        0x71 => "first stage: paging entry not present",
        0x85 => "scalable mode: write without write permission",
        _ => return None,
    })
}

/// SMMUv3 §7.3 event record types.
fn smmuv3_event(code: u32) -> Option<&'static str> {
    Some(match code {
        0x01 => "F_UUT: unsupported upstream transaction",
        0x02 => "C_BAD_STREAMID: StreamID outside the stream table",
        0x03 => "F_STE_FETCH: error fetching the STE",
        0x04 => "C_BAD_STE: invalid STE",
        0x05 => "F_BAD_ATS_TREQ: bad ATS translation request",
        0x06 => "F_STREAM_DISABLED: stream disabled",
        0x07 => "F_TRANSL_FORBIDDEN: translation forbidden",
        0x08 => "C_BAD_SUBSTREAMID: bad SubstreamID",
        0x09 => "F_CD_FETCH: error fetching the CD",
        0x0A => "C_BAD_CD: invalid CD",
        0x0B => "F_WALK_EABT: external abort during a walk",
        0x10 => "F_TRANSLATION: no valid translation",
        0x11 => "F_ADDR_SIZE: address beyond the range",
        0x12 => "F_ACCESS: access flag clear",
        0x13 => "F_PERMISSION: permission denied",
        0x20 => "F_TLB_CONFLICT: conflicting TLB entries",
        0x21 => "F_CFG_CONFLICT: conflicting configuration cache entries",
        0x24 => "E_PAGE_REQUEST: page request",
        0x25 => "F_VMS_FETCH: error fetching the VMS",
        _ => return None,
    })
}

/// AMD IOMMU §2.5 event log codes.
fn amdvi_event(code: u32) -> Option<&'static str> {
    Some(match code {
        0x1 => "ILLEGAL_DEV_TABLE_ENTRY: invalid device table entry",
        0x2 => "IO_PAGE_FAULT: page fault",
        0x3 => "DEV_TAB_HARDWARE_ERROR: error reading the device table",
        0x4 => "PAGE_TAB_HARDWARE_ERROR: error reading a page table",
        0x5 => "ILLEGAL_COMMAND_ERROR: illegal command",
        0x6 => "COMMAND_HARDWARE_ERROR: error reading a command",
        0x7 => "IOTLB_INV_TIMEOUT: device IOTLB invalidation timed out",
        0x8 => "INVALID_DEVICE_REQUEST: request the device may not make",
        0x9 => "INVALID_PPR_REQUEST: invalid peripheral page request",
        0xA => "EVENT_COUNTER_ZERO: event counter reached zero",
        0xC => "RMP_HARDWARE_ERROR: error reading the RMP",
        0xD => "RMP_PAGE_FAULT: RMP check failed",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vendor_code_is_named_by_its_spec() {
        let vtd = HwInfoType::IntelVtd as u32;
        let smmu = HwInfoType::ArmSmmuV3 as u32;
        let amd = HwInfoType::AmdVi as u32;
        assert!(vendor_reason(vtd, 0x5).unwrap().starts_with("write"));
        assert!(
            vendor_reason(smmu, 0x10)
                .unwrap()
                .starts_with("F_TRANSLATION")
        );
        assert!(
            vendor_reason(amd, 0x2)
                .unwrap()
                .starts_with("IO_PAGE_FAULT")
        );
        assert_eq!(vendor_reason(vtd, 0xFF), None);
        assert_eq!(vendor_reason(HwInfoType::None as u32, 0x5), None);
        assert_eq!(vendor_code_kind(smmu), "SMMUv3 event");
    }

    #[test]
    fn reasons_and_accesses_read_as_words() {
        assert_eq!(
            reason(FaultReasonCode::Permission as u32),
            "the mapping forbids this access"
        );
        assert_eq!(reason(99), "an unknown reason");
        assert_eq!(access(FaultAccess::WRITE.bits()), "write");
        assert_eq!(access(FaultAccess::READ.bits()), "read");
    }
}
