//! Configuration-space access and the type-0 header layout.

use bitflags::bitflags;

use crate::Bdf;

/// Access to configuration space. Offsets are byte offsets into a function's
/// 4 KiB space; accesses are naturally aligned.
pub trait ConfigSpace {
    /// Reads the dword at `offset`.
    fn read32(&self, bdf: Bdf, offset: u16) -> u32;
    /// Writes the dword at `offset`.
    fn write32(&self, bdf: Bdf, offset: u16, value: u32);

    /// Reads 16 bits (from the containing dword).
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        (self.read32(bdf, offset & !3) >> ((offset & 2) * 8)) as u16
    }

    /// Reads 8 bits (from the containing dword).
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        (self.read32(bdf, offset & !3) >> ((offset & 3) * 8)) as u8
    }

    /// Writes 16 bits with a read-modify-write of the containing dword.
    ///
    /// Careful with registers that have write-1-to-clear neighbours: the
    /// command register's neighbour is the status register, whose error bits
    /// are RW1C; [`ConfigSpace::set_command`] avoids clearing them.
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        let shift = (offset & 2) * 8;
        let old = self.read32(bdf, offset & !3);
        let new = (old & !(0xFFFF << shift)) | (u32::from(value) << shift);
        self.write32(bdf, offset & !3, new);
    }

    /// The Command register.
    fn command(&self, bdf: Bdf) -> Command {
        Command::from_bits_retain(self.read16(bdf, offsets::COMMAND))
    }

    /// Writes the command register without touching the status register
    /// (writing zeros to its RW1C bits leaves them alone).
    fn set_command(&self, bdf: Bdf, command: Command) {
        self.write32(bdf, offsets::COMMAND, u32::from(command.bits()));
    }
}

/// Type-0 configuration header offsets (PCI Local Bus 3.0 §6.1, Figure 6-1).
pub mod offsets {
    /// Vendor ID.
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID.
    pub const DEVICE_ID: u16 = 0x02;
    /// Command.
    pub const COMMAND: u16 = 0x04;
    /// Status.
    pub const STATUS: u16 = 0x06;
    /// Revision ID and class code.
    pub const REVISION_CLASS: u16 = 0x08;
    /// Header Type.
    pub const HEADER_TYPE: u16 = 0x0E;
    /// The first BAR.
    pub const BAR0: u16 = 0x10;
    /// The first capability's offset.
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    /// Interrupt Line.
    pub const INTERRUPT_LINE: u16 = 0x3C;
}

bitflags! {
    /// PCI Local Bus 3.0 §6.2.2 Command register.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Command: u16 {
        /// Decodes its I/O BARs.
        const IO_SPACE = 1 << 0;
        /// Decodes its memory BARs.
        const MEMORY_SPACE = 1 << 1;
        /// Lets the function issue DMA (and MSI writes).
        const BUS_MASTER = 1 << 2;
        /// Raises no INTx.
        const INTX_DISABLE = 1 << 10;
    }
}

/// Status register bit: the function has a capability list (PCI 3.0 §6.2.3).
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;

/// PCI Local Bus 3.0 §6.2.1 Header Type register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderType {
    /// 0 = endpoint, 1 = PCI-to-PCI bridge, 2 = CardBus bridge.
    pub layout: u8,
    /// The device has more functions than 0.
    pub multi_function: bool,
}

impl HeaderType {
    /// Layout 0: an endpoint.
    pub const ENDPOINT: u8 = 0;
    /// Layout 1: a PCI-to-PCI bridge.
    pub const PCI_BRIDGE: u8 = 1;

    /// Decodes the register's value.
    pub fn from_raw(raw: u8) -> Self {
        HeaderType {
            layout: raw & 0x7F,
            multi_function: raw & 0x80 != 0,
        }
    }
}
