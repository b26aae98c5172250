//! Interrupt remapping table entries (AMD IOMMU §2.2.5 "Interrupt Remapping Tables").
//!
//! A device's MSI data bits 10:0 select an entry of its table (DTE IntTableRootPtr,
//! 2^IntTabLen entries); the entry supplies vector, destination and delivery mode.
//! The 32-bit format (§2.2.5.1) is used while Control.GAEn=0, the 128-bit format
//! (§2.2.5.2) when GAEn=1.

use core::mem::size_of;

/// §2.2.5.1 Table 22: 32-bit IRTE.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Irte32(pub u32);

const _: () = assert!(size_of::<Irte32>() == 4);

/// §2.2.5.2 Table 23: 128-bit IRTE (guest virtual APIC format, GuestMode=0 layout).
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Irte128(pub [u64; 2]);

const _: () = assert!(size_of::<Irte128>() == 16);

/// §2.2.5.1 IntType: the delivery mode the IOMMU sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntType {
    /// Fixed delivery.
    Fixed = 0,
    /// Lowest-priority (arbitrated) delivery.
    Arbitrated = 1,
}

/// What an interrupt is remapped to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The vector.
    pub vector: u8,
    /// Physical APIC ID (DM=0).
    pub destination: u32,
    /// How it is delivered.
    pub int_type: IntType,
}

/// Field positions shared by both formats' low dword (§2.2.5.1/§2.2.5.2).
mod field {
    /// Bit 0 RemapEn: the entry is valid; otherwise the interrupt is target-aborted.
    pub const REMAP_EN: u32 = 1 << 0;
    /// Bit 1 SupIOPF: suppress IO_PAGE_FAULT events for this entry.
    pub const SUP_IOPF: u32 = 1 << 1;
    /// Bits 4:2 IntType.
    pub const INT_TYPE_SHIFT: u32 = 2;
    /// Bit 6 DM: destination mode (0 = physical).
    /// Bits 15:8 Destination (32-bit format) / 31:8 `Destination[23:0]` (128-bit).
    pub const DEST_SHIFT: u32 = 8;
    /// Bits 23:16 Vector (32-bit format only).
    pub const VECTOR_SHIFT: u32 = 16;
    /// 128-bit format, upper quadword: Vector in 7:0, `Destination[31:24]` in 63:56.
    pub const HI_DEST_SHIFT: u32 = 56;
}

/// Largest APIC ID the 32-bit format can name.
pub const MAX_DESTINATION_32: u32 = 0xFF;

/// The x86 compatibility-format MSI (Intel SDM Vol. 3 §11.11): destination APIC ID in
/// address bits 19:12, vector in data bits 7:0, delivery mode in data bits 10:8.
pub fn target_of_compat_msi(address: u64, data: u32) -> Target {
    Target {
        vector: data as u8,
        destination: ((address >> 12) & 0xFF) as u32,
        int_type: if (data >> 8) & 0x7 == 1 {
            IntType::Arbitrated
        } else {
            IntType::Fixed
        },
    }
}

/// The MSI a device sends once its interrupts are remapped: the usual interrupt
/// window address and the IRTE index in data bits 10:0 (§2.2.5). Indices below 256
/// keep data bits 10:8 (the MSI delivery mode) at Fixed.
pub fn remappable_msi(index: u16) -> Option<(u64, u32)> {
    (index < 256).then_some((0xFEE0_0000, u32::from(index)))
}

impl Irte32 {
    /// RemapEn=0: the interrupt is target-aborted.
    pub const DISABLED: Self = Self(0);

    /// `None` when the destination does not fit the 8-bit field.
    pub fn remapped(target: Target) -> Option<Self> {
        if target.destination > MAX_DESTINATION_32 {
            return None;
        }
        Some(Self(
            field::REMAP_EN
                | (target.int_type as u32) << field::INT_TYPE_SHIFT
                | target.destination << field::DEST_SHIFT
                | u32::from(target.vector) << field::VECTOR_SHIFT,
        ))
    }

    /// RemapEn.
    pub fn enabled(&self) -> bool {
        self.0 & field::REMAP_EN != 0
    }

    /// The vector.
    pub fn vector(&self) -> u8 {
        (self.0 >> field::VECTOR_SHIFT) as u8
    }

    /// The destination APIC ID.
    pub fn destination(&self) -> u32 {
        (self.0 >> field::DEST_SHIFT) & 0xFF
    }

    /// SupIOPF: faults through it are not logged.
    pub fn suppresses_faults(&self) -> bool {
        self.0 & field::SUP_IOPF != 0
    }
}

impl Irte128 {
    /// RemapEn clear: interrupts through it abort.
    pub const DISABLED: Self = Self([0, 0]);

    /// An enabled entry delivering `target`.
    pub fn remapped(target: Target) -> Self {
        let lo = field::REMAP_EN
            | (target.int_type as u32) << field::INT_TYPE_SHIFT
            | (target.destination & 0x00FF_FFFF) << field::DEST_SHIFT;
        let hi =
            u64::from(target.vector) | u64::from(target.destination >> 24) << field::HI_DEST_SHIFT;
        Self([u64::from(lo), hi])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irte32_golden() {
        // Vector 0x31 to APIC 2, fixed: RemapEn | Dest 2 << 8 | Vector 0x31 << 16.
        let target = Target {
            vector: 0x31,
            destination: 2,
            int_type: IntType::Fixed,
        };
        let irte = Irte32::remapped(target).unwrap();
        assert_eq!(irte.0, 0x0031_0201);
        assert!(irte.enabled() && !irte.suppresses_faults());
        assert_eq!((irte.vector(), irte.destination()), (0x31, 2));
        let arbitrated = Irte32::remapped(Target {
            int_type: IntType::Arbitrated,
            ..target
        })
        .unwrap();
        assert_eq!(arbitrated.0, 0x0031_0205);
        assert_eq!(
            Irte32::remapped(Target {
                destination: 0x100,
                ..target
            }),
            None
        );
        assert!(!Irte32::DISABLED.enabled());
    }

    #[test]
    fn irte128_golden() {
        let irte = Irte128::remapped(Target {
            vector: 0x40,
            destination: 0x0312_3456,
            int_type: IntType::Fixed,
        });
        assert_eq!(irte.0, [0x1234_5601, 0x0300_0000_0000_0040]);
    }

    #[test]
    fn compat_msi_decodes_and_remappable_msi_carries_the_index() {
        let target = target_of_compat_msi(0xFEE0_2000, 0x0000_0031);
        assert_eq!(
            target,
            Target {
                vector: 0x31,
                destination: 2,
                int_type: IntType::Fixed
            }
        );
        assert_eq!(remappable_msi(5), Some((0xFEE0_0000, 5)));
        assert_eq!(remappable_msi(256), None);
    }
}
