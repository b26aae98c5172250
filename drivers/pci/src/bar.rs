//! Base Address Registers: sizing, decoding and assignment
//! (PCI Local Bus 3.0 §6.2.5.1).

use crate::{Bdf, Command, ConfigSpace, offsets};

/// Number of BARs in a type-0 header.
pub const BAR_COUNT: u8 = 6;
/// Number of BARs in a type-1 (bridge) header: the rest of its header holds
/// bus numbers and forwarding windows (PCI-to-PCI Bridge 1.2 §3.2).
pub const BRIDGE_BAR_COUNT: u8 = 2;

const BAR_IO_SPACE: u32 = 1 << 0;
const BAR_MEM_TYPE_MASK: u32 = 0b11 << 1;
const BAR_MEM_TYPE_64: u32 = 0b10 << 1;
const BAR_MEM_PREFETCHABLE: u32 = 1 << 3;
const BAR_MEM_ADDRESS_MASK: u32 = !0xF;
const BAR_IO_ADDRESS_MASK: u32 = !0x3;

/// A decoded BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// A memory BAR.
    Memory {
        /// Which BAR (0-5; a 64-bit one takes this and the next).
        index: u8,
        /// The bus address it decodes.
        address: u64,
        /// Its size (a power of two).
        size: u64,
        /// A 64-bit BAR.
        is_64bit: bool,
        /// Prefetchable memory.
        prefetchable: bool,
    },
    /// An I/O-space BAR.
    Io {
        /// Which BAR.
        index: u8,
        /// The port it decodes.
        address: u32,
        /// Its size.
        size: u32,
    },
}

impl Bar {
    /// Which BAR it is.
    pub fn index(&self) -> u8 {
        match *self {
            Bar::Memory { index, .. } | Bar::Io { index, .. } => index,
        }
    }
}

/// Why a BAR could not be read or placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarError {
    /// The index is past the last BAR, or names the upper half of a 64-bit BAR.
    NoSuchBar,
    /// The BAR is not implemented (reads back 0 after sizing).
    Unimplemented,
    /// No room for the BAR in the window.
    WindowFull,
    /// A 32-bit BAR cannot hold an address from this window.
    AddressTooHigh,
}

fn bar_offset(index: u8) -> u16 {
    offsets::BAR0 + 4 * u16::from(index)
}

/// Sizes and decodes BAR `index` of `bdf`. Memory and I/O decoding are
/// switched off while the all-ones pattern is in the BAR, so the function
/// never decodes a bogus range.
pub fn probe(config: &dyn ConfigSpace, bdf: Bdf, index: u8) -> Result<Bar, BarError> {
    if index >= BAR_COUNT {
        return Err(BarError::NoSuchBar);
    }
    let offset = bar_offset(index);
    let command = config.command(bdf);
    config.set_command(bdf, command - (Command::MEMORY_SPACE | Command::IO_SPACE));

    let original = config.read32(bdf, offset);
    config.write32(bdf, offset, u32::MAX);
    let mask = config.read32(bdf, offset);
    config.write32(bdf, offset, original);

    let result = if original & BAR_IO_SPACE != 0 {
        let size_mask = mask & BAR_IO_ADDRESS_MASK;
        if size_mask == 0 {
            Err(BarError::Unimplemented)
        } else {
            Ok(Bar::Io {
                index,
                address: original & BAR_IO_ADDRESS_MASK,
                // I/O BARs decode at most 16 bits of size in practice; the
                // upper bits of the mask read back as 0 on some devices.
                size: (!size_mask | 0xFFFF_0000).wrapping_add(1),
            })
        }
    } else if original & BAR_MEM_TYPE_MASK == BAR_MEM_TYPE_64 {
        if index + 1 >= BAR_COUNT {
            Err(BarError::NoSuchBar)
        } else {
            let upper_offset = bar_offset(index + 1);
            let upper_original = config.read32(bdf, upper_offset);
            config.write32(bdf, upper_offset, u32::MAX);
            let upper_mask = config.read32(bdf, upper_offset);
            config.write32(bdf, upper_offset, upper_original);
            let full_mask = (u64::from(upper_mask) << 32) | u64::from(mask & BAR_MEM_ADDRESS_MASK);
            if full_mask == 0 {
                Err(BarError::Unimplemented)
            } else {
                Ok(Bar::Memory {
                    index,
                    address: (u64::from(upper_original) << 32)
                        | u64::from(original & BAR_MEM_ADDRESS_MASK),
                    size: (!full_mask).wrapping_add(1),
                    is_64bit: true,
                    prefetchable: original & BAR_MEM_PREFETCHABLE != 0,
                })
            }
        }
    } else {
        let size_mask = mask & BAR_MEM_ADDRESS_MASK;
        if size_mask == 0 {
            Err(BarError::Unimplemented)
        } else {
            Ok(Bar::Memory {
                index,
                address: u64::from(original & BAR_MEM_ADDRESS_MASK),
                size: u64::from((!size_mask).wrapping_add(1)),
                is_64bit: false,
                prefetchable: original & BAR_MEM_PREFETCHABLE != 0,
            })
        }
    };
    config.set_command(bdf, command);
    result
}

/// Decodes every implemented BAR of a type-0 function (64-bit BARs take two slots).
pub fn probe_all(config: &dyn ConfigSpace, bdf: Bdf) -> alloc::vec::Vec<Bar> {
    let mut bars = alloc::vec::Vec::new();
    let header = crate::HeaderType::from_raw(config.read8(bdf, offsets::HEADER_TYPE));
    let count = match header.layout {
        crate::HeaderType::ENDPOINT => BAR_COUNT,
        crate::HeaderType::PCI_BRIDGE => BRIDGE_BAR_COUNT,
        // A CardBus bridge's "BAR" area is its socket registers: none to size.
        _ => 0,
    };
    let mut index = 0;
    while index < count {
        match probe(config, bdf, index) {
            Ok(bar) => {
                index += if matches!(bar, Bar::Memory { is_64bit: true, .. }) {
                    2
                } else {
                    1
                };
                bars.push(bar);
            }
            Err(_) => index += 1,
        }
    }
    bars
}

/// A CPU-visible window of PCI memory space, e.g. a device tree `ranges` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryWindow {
    /// Bus address of the window's start.
    pub pci_base: u64,
    /// CPU physical address the window's start appears at.
    pub cpu_base: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// Hands out naturally aligned ranges of a memory window to BARs (used where
/// no firmware assigned them: aarch64 `virt` booted from an ELF).
#[derive(Debug)]
pub struct BarAllocator {
    window: MemoryWindow,
    next: u64,
}

impl BarAllocator {
    /// Hands out `window` from its start.
    pub fn new(window: MemoryWindow) -> Self {
        BarAllocator {
            window,
            next: window.pci_base,
        }
    }

    /// Moves the next address up to a multiple of `alignment` (a power of
    /// two), so that what follows can sit in a window of its own (bridge
    /// memory windows have a 1 MiB grain).
    pub fn align(&mut self, alignment: u64) {
        self.next = self.next.next_multiple_of(alignment);
    }

    /// The bus address the next assignment starts from (before alignment).
    pub fn next_address(&self) -> u64 {
        self.next
    }

    /// Gives memory BAR `bar` an address in the window and writes it; returns
    /// the BAR with its new (bus) address.
    pub fn assign(
        &mut self,
        config: &dyn ConfigSpace,
        bdf: Bdf,
        bar: Bar,
    ) -> Result<Bar, BarError> {
        let Bar::Memory {
            index,
            size,
            is_64bit,
            prefetchable,
            ..
        } = bar
        else {
            return Err(BarError::NoSuchBar);
        };
        let address = self
            .next
            .checked_next_multiple_of(size)
            .ok_or(BarError::WindowFull)?;
        let end = address.checked_add(size).ok_or(BarError::WindowFull)?;
        if end > self.window.pci_base + self.window.size {
            return Err(BarError::WindowFull);
        }
        if !is_64bit && end > u64::from(u32::MAX) + 1 {
            return Err(BarError::AddressTooHigh);
        }
        let command = config.command(bdf);
        config.set_command(bdf, command - Command::MEMORY_SPACE);
        let offset = bar_offset(index);
        let flags = config.read32(bdf, offset) & !BAR_MEM_ADDRESS_MASK;
        config.write32(bdf, offset, (address as u32 & BAR_MEM_ADDRESS_MASK) | flags);
        if is_64bit {
            config.write32(bdf, bar_offset(index + 1), (address >> 32) as u32);
        }
        config.set_command(bdf, command);
        self.next = end;
        Ok(Bar::Memory {
            index,
            address,
            size,
            is_64bit,
            prefetchable,
        })
    }

    /// The CPU physical address of bus address `pci_address` in this window.
    pub fn cpu_address(&self, pci_address: u64) -> u64 {
        pci_address - self.window.pci_base + self.window.cpu_base
    }
}
