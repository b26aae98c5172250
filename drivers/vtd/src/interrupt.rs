//! Interrupt remapping (VT-d 3.4 chapter 5): the remapping table entry and
//! the remappable MSI format.

use core::mem::size_of;

/// VT-d 3.4 §9.10 Interrupt Remapping Table Entry, remapped format (IM = 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Irte {
    /// P (0), FPD (1), DM (2), RH (3), TM (4), DLM (7:5), IM (15) = 0,
    /// V (23:16), DST (63:32; xAPIC: APIC id in 47:40).
    pub low: u64,
    /// SID (79:64), SQ (81:80), SVT (83:82).
    pub high: u64,
}
const _: () = assert!(size_of::<Irte>() == 16);

/// §9.10 SVT = 01: verify the full requester id (with SQ = 00).
const VERIFY_REQUESTER: u64 = 0b01 << 18;
/// §9.10 SVT = 10: verify that the requester's bus lies between `SID[15:8]`
/// (start bus) and `SID[7:0]` (end bus).
const VERIFY_BUS: u64 = 0b10 << 18;

/// Which requesters an IRTE accepts (§9.10 SVT, SQ, SID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceCheck {
    /// Exactly this requester id.
    Requester(u16),
    /// Any requester on buses `first..=last` (a function behind a PCIe-to-PCI
    /// bridge, whose MSIs may carry its own id or the bridge's alias).
    Buses {
        /// The first bus.
        first: u8,
        /// The last bus.
        last: u8,
    },
}

impl Irte {
    /// A present, edge-triggered, fixed-delivery, physical-destination entry
    /// for `vector` on xAPIC `apic_id`, accepted only from `requester`.
    pub fn remapped(vector: u8, apic_id: u8, requester: u16) -> Self {
        Self::remapped_from(vector, apic_id, SourceCheck::Requester(requester))
    }

    /// The same entry, accepted from the requesters `source` names.
    pub fn remapped_from(vector: u8, apic_id: u8, source: SourceCheck) -> Self {
        let high = match source {
            SourceCheck::Requester(requester) => VERIFY_REQUESTER | u64::from(requester),
            SourceCheck::Buses { first, last } => {
                VERIFY_BUS | (u64::from(first) << 8) | u64::from(last)
            }
        };
        Self {
            low: 1 | (u64::from(vector) << 16) | (u64::from(apic_id) << 40),
            high,
        }
    }

    /// The present bit (P, bit 0).
    pub fn is_present(&self) -> bool {
        self.low & 1 != 0
    }
}

/// VT-d 3.4 §5.1.5.2 Remappable MSI address: 0xFEE (31:20), `handle[14:0]`
/// (19:5), interrupt format (4) = 1, SHV (3) = 0, `handle[15]` (2).
pub fn remappable_msi_address(handle: u16) -> u64 {
    0xFEE0_0000 | (u64::from(handle & 0x7FFF) << 5) | (1 << 4) | (u64::from(handle >> 15) << 2)
}

/// Interrupt-remapping table size used by the driver: 256 entries (one page).
pub const TABLE_ENTRIES_LOG2: u8 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irte_and_msi_golden() {
        let irte = Irte::remapped(0x31, 0, 0x0020);
        assert_eq!(irte.low, 0x0031_0001);
        assert_eq!(irte.high, 0x0004_0020);
        assert_eq!(Irte::remapped(0x40, 3, 8).low, 0x0000_0300_0040_0001);
        assert_eq!(remappable_msi_address(0), 0xFEE0_0010);
        assert_eq!(remappable_msi_address(5), 0xFEE0_00B0);
        assert_eq!(remappable_msi_address(0x8001), 0xFEE0_0034);
        // SVT = 10 (bits 83:82), SID = start bus 2, end bus 3.
        let bus = Irte::remapped_from(0x31, 0, SourceCheck::Buses { first: 2, last: 3 });
        assert_eq!(bus.high, 0x0008_0203);
    }
}
