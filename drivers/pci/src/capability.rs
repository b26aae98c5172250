//! The capability list (PCI Local Bus 3.0 §6.7) and the MSI capability (§6.8.1).

use crate::config::STATUS_CAPABILITIES_LIST;
use crate::{Bdf, ConfigSpace, offsets};

/// Capability IDs (PCI Code and ID Assignment Specification §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapabilityId(pub u8);

impl CapabilityId {
    /// Message Signalled Interrupts.
    pub const MSI: CapabilityId = CapabilityId(0x05);
    /// The PCI Express capability.
    pub const PCI_EXPRESS: CapabilityId = CapabilityId(0x10);
    /// MSI-X.
    pub const MSI_X: CapabilityId = CapabilityId(0x11);
    /// AMD's secure device capability: the AMD-Vi IOMMU's own PCI function.
    pub const SECURE_DEVICE: CapabilityId = CapabilityId(0x0F);
}

/// A capability list can hold at most this many entries: each is at least
/// 4 bytes inside the 192 bytes after the header. Walking more means a loop.
const MAX_CAPABILITIES: usize = 48;
/// The low two bits of a capability pointer are reserved.
const POINTER_MASK: u8 = !0x3;
/// Capabilities live after the 64-byte header.
const FIRST_CAPABILITY_OFFSET: u8 = 0x40;

/// Iterator over `(id, offset)` of a function's capabilities.
pub struct Capabilities<'a> {
    config: &'a dyn ConfigSpace,
    bdf: Bdf,
    next: u8,
    remaining: usize,
}

impl<'a> Capabilities<'a> {
    /// The capabilities of `bdf`, in list order (none without the Status bit).
    pub fn new(config: &'a dyn ConfigSpace, bdf: Bdf) -> Self {
        let has_list = config.read16(bdf, offsets::STATUS) & STATUS_CAPABILITIES_LIST != 0;
        let next = if has_list {
            config.read8(bdf, offsets::CAPABILITIES_POINTER) & POINTER_MASK
        } else {
            0
        };
        Capabilities {
            config,
            bdf,
            next,
            remaining: MAX_CAPABILITIES,
        }
    }

    /// Where capability `id` of `bdf` starts, if it has one.
    pub fn offset_of(config: &'a dyn ConfigSpace, bdf: Bdf, id: CapabilityId) -> Option<u16> {
        Capabilities::new(config, bdf)
            .find(|&(found, _)| found == id)
            .map(|(_, offset)| offset)
    }
}

impl Iterator for Capabilities<'_> {
    type Item = (CapabilityId, u16);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next < FIRST_CAPABILITY_OFFSET || self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let offset = u16::from(self.next);
        let header = self.config.read16(self.bdf, offset);
        self.next = (header >> 8) as u8 & POINTER_MASK;
        Some((CapabilityId(header as u8), offset))
    }
}

/// MSI capability register offsets relative to the capability (PCI 3.0 §6.8.1).
const MSI_CONTROL: u16 = 0x02;
const MSI_ADDRESS_LOW: u16 = 0x04;
const MSI_ADDRESS_HIGH: u16 = 0x08;
const MSI_DATA_32: u16 = 0x08;
const MSI_DATA_64: u16 = 0x0C;
const MSI_CONTROL_ENABLE: u16 = 1 << 0;
const MSI_CONTROL_MULTIPLE_ENABLE_MASK: u16 = 0b111 << 4;
const MSI_CONTROL_64BIT: u16 = 1 << 7;

/// A function's MSI capability.
#[derive(Clone, Copy, Debug)]
pub struct Msi {
    bdf: Bdf,
    offset: u16,
    is_64bit: bool,
}

impl Msi {
    /// The MSI capability of `bdf`, if it has one.
    pub fn find(config: &dyn ConfigSpace, bdf: Bdf) -> Option<Msi> {
        let offset = Capabilities::offset_of(config, bdf, CapabilityId::MSI)?;
        let control = config.read16(bdf, offset + MSI_CONTROL);
        Some(Msi {
            bdf,
            offset,
            is_64bit: control & MSI_CONTROL_64BIT != 0,
        })
    }

    /// Programs the message (one vector) and enables MSI.
    pub fn enable(&self, config: &dyn ConfigSpace, address: u64, data: u16) {
        let control_offset = self.offset + MSI_CONTROL;
        let control = config.read16(self.bdf, control_offset);
        config.write32(self.bdf, self.offset + MSI_ADDRESS_LOW, address as u32);
        if self.is_64bit {
            config.write32(
                self.bdf,
                self.offset + MSI_ADDRESS_HIGH,
                (address >> 32) as u32,
            );
            config.write16(self.bdf, self.offset + MSI_DATA_64, data);
        } else {
            config.write16(self.bdf, self.offset + MSI_DATA_32, data);
        }
        let control = (control & !MSI_CONTROL_MULTIPLE_ENABLE_MASK) | MSI_CONTROL_ENABLE;
        config.write16(self.bdf, control_offset, control);
    }

    /// Clears MSI Enable: the function signals nothing by MSI.
    pub fn disable(&self, config: &dyn ConfigSpace) {
        let control_offset = self.offset + MSI_CONTROL;
        let control = config.read16(self.bdf, control_offset);
        config.write16(self.bdf, control_offset, control & !MSI_CONTROL_ENABLE);
    }

    /// MSI Enable is set.
    pub fn is_enabled(&self, config: &dyn ConfigSpace) -> bool {
        config.read16(self.bdf, self.offset + MSI_CONTROL) & MSI_CONTROL_ENABLE != 0
    }
}
