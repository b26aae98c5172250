//! Driver for QEMU's `edu` device (hw/misc/edu.c, docs/specs/edu.rst): a PCI
//! function with a 4 KiB on-device buffer and a DMA engine that copies between
//! that buffer and bus addresses. Every IOMMU test uses it as the DMA master.
//!
//! The device never reports a failed transfer (a blocked read delivers zeros,
//! a blocked write vanishes), so callers judge blocking by memory contents and
//! the IOMMU's own fault records. Out-of-range buffer offsets overflow QEMU's
//! heap (docs/QEMU.md §4), which is why this driver refuses them before they
//! reach the device.
#![no_std]
#![warn(missing_docs)]

use core::time::Duration;

use os_services::mmio::{Mmio, Reg32, Reg64};
use os_services::{Clock, TimedOut, wait_until};

/// PCI identity of the device.
pub const VENDOR_ID: u16 = 0x1234;
/// QEMU's edu device id (`hw/misc/edu.c`).
pub const DEVICE_ID: u16 = 0x11E8;

/// BAR0 register map (edu.rst "MMIO area spec").
mod regs {
    use super::{Reg32, Reg64};
    /// 0x010000ed: major.minor version and 0xED.
    pub const IDENTIFICATION: Reg32 = Reg32(0x00);
    /// Reads back the bitwise inverse of what was written.
    pub const LIVENESS: Reg32 = Reg32(0x04);
    pub const INTERRUPT_STATUS: Reg32 = Reg32(0x24);
    pub const INTERRUPT_RAISE: Reg32 = Reg32(0x60);
    pub const INTERRUPT_ACK: Reg32 = Reg32(0x64);
    /// Offsets >= 0x80 take 8-byte accesses; a 4-byte write zeroes the upper half.
    pub const DMA_SOURCE: Reg64 = Reg64(0x80);
    pub const DMA_DESTINATION: Reg64 = Reg64(0x88);
    pub const DMA_COUNT: Reg64 = Reg64(0x90);
    pub const DMA_COMMAND: Reg64 = Reg64(0x98);
}

/// DMA command register bits.
const DMA_RUN: u64 = 1 << 0;
/// Direction: set = device buffer to RAM, clear = RAM to device buffer.
const DMA_TO_RAM: u64 = 1 << 1;
/// Raise interrupt 0x100 when the transfer completes.
const DMA_RAISE_IRQ: u64 = 1 << 2;
/// The interrupt status bit a DMA completion raises.
pub const DMA_COMPLETION_IRQ: u32 = 0x100;

const IDENTIFICATION_MAGIC_MASK: u32 = 0xFF;
const IDENTIFICATION_MAGIC: u32 = 0xED;

/// The device buffer: 4 KiB at device address 0x40000.
pub const BUFFER_DEVICE_ADDRESS: u64 = 0x40000;
/// Its size in bytes.
pub const BUFFER_SIZE: usize = 4096;
/// BAR0 is 1 MiB.
pub const BAR0_SIZE: usize = 1 << 20;

/// A transfer completes 100 ms of virtual time after it starts; allow a
/// generous margin for a loaded host before calling the device hung.
const DMA_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an edu operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EduError {
    /// The identification register does not read 0x??????ED.
    NotAnEdu {
        /// What the identification register read.
        identification: u32,
    },
    /// The transfer would run outside the 4 KiB device buffer.
    OutsideBuffer {
        /// Where in the buffer the transfer would start.
        offset: usize,
        /// Its length.
        len: usize,
    },
    /// A zero-length transfer was requested.
    Empty,
    /// The previous transfer is still running.
    Busy,
    /// The transfer did not complete within the bound.
    Timeout(TimedOut),
}

impl core::fmt::Display for EduError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EduError::NotAnEdu { identification } => write!(
                f,
                "not an edu: its identification register reads {identification:#010x}"
            ),
            EduError::OutsideBuffer { offset, len } => write!(
                f,
                "{len} bytes at {offset:#x} run outside the device's {BUFFER_SIZE}-byte buffer"
            ),
            EduError::Empty => write!(f, "a transfer of no bytes"),
            EduError::Busy => write!(f, "the previous transfer is still running"),
            EduError::Timeout(_) => write!(f, "the transfer did not complete in time"),
        }
    }
}

/// Which way a transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Read `len` bytes at a bus address into the device buffer.
    ToDevice,
    /// Write `len` bytes from the device buffer to a bus address.
    ToRam,
}

/// One edu function, reached through its BAR0 mapping.
pub struct Edu<'a> {
    regs: Mmio,
    clock: &'a dyn Clock,
}

impl<'a> Edu<'a> {
    /// Takes over the device whose BAR0 is mapped by `regs` (the caller has
    /// enabled memory decoding and, for DMA, bus mastering).
    pub fn new(regs: Mmio, clock: &'a dyn Clock) -> Result<Self, EduError> {
        let identification = regs.read32(regs::IDENTIFICATION);
        if identification & IDENTIFICATION_MAGIC_MASK != IDENTIFICATION_MAGIC {
            return Err(EduError::NotAnEdu { identification });
        }
        Ok(Edu { regs, clock })
    }

    /// The identification register: major.minor version and the 0xED magic.
    pub fn identification(&self) -> u32 {
        self.regs.read32(regs::IDENTIFICATION)
    }

    /// Checks the liveness register inverts what is written.
    pub fn is_alive(&self, probe: u32) -> bool {
        self.regs.write32(regs::LIVENESS, probe);
        self.regs.read32(regs::LIVENESS) == !probe
    }

    /// Copies `len` bytes between bus address `bus_address` and the device
    /// buffer at `buffer_offset`, waiting (bounded) for completion.
    pub fn dma(
        &self,
        direction: Direction,
        bus_address: u64,
        buffer_offset: usize,
        len: usize,
    ) -> Result<(), EduError> {
        self.start_dma(direction, bus_address, buffer_offset, len, false)?;
        self.wait_dma()
    }

    /// Starts a transfer without waiting; `raise_irq` asks for the completion interrupt.
    pub fn start_dma(
        &self,
        direction: Direction,
        bus_address: u64,
        buffer_offset: usize,
        len: usize,
        raise_irq: bool,
    ) -> Result<(), EduError> {
        if len == 0 {
            return Err(EduError::Empty);
        }
        if buffer_offset
            .checked_add(len)
            .is_none_or(|end| end > BUFFER_SIZE)
        {
            return Err(EduError::OutsideBuffer {
                offset: buffer_offset,
                len,
            });
        }
        if self.is_busy() {
            return Err(EduError::Busy);
        }
        let buffer = BUFFER_DEVICE_ADDRESS + buffer_offset as u64;
        let (source, destination, direction_bit) = match direction {
            Direction::ToDevice => (bus_address, buffer, 0),
            Direction::ToRam => (buffer, bus_address, DMA_TO_RAM),
        };
        self.regs.write64(regs::DMA_SOURCE, source);
        self.regs.write64(regs::DMA_DESTINATION, destination);
        self.regs.write64(regs::DMA_COUNT, len as u64);
        let irq = if raise_irq { DMA_RAISE_IRQ } else { 0 };
        self.regs
            .write64(regs::DMA_COMMAND, DMA_RUN | direction_bit | irq);
        Ok(())
    }

    /// A DMA transfer is running.
    pub fn is_busy(&self) -> bool {
        self.regs.read64(regs::DMA_COMMAND) & DMA_RUN != 0
    }

    /// Waits (bounded) for the running transfer to finish.
    pub fn wait_dma(&self) -> Result<(), EduError> {
        wait_until(self.clock, DMA_TIMEOUT, || (!self.is_busy()).then_some(()))
            .map_err(EduError::Timeout)
    }

    /// The interrupt bits raised and not yet acknowledged.
    pub fn interrupt_status(&self) -> u32 {
        self.regs.read32(regs::INTERRUPT_STATUS)
    }

    /// Raises interrupt bits (an MSI when MSI is enabled, else INTx).
    pub fn raise_interrupt(&self, bits: u32) {
        self.regs.write32(regs::INTERRUPT_RAISE, bits);
    }

    /// Acknowledges interrupt `bits` (and lowers INTx once none is left).
    pub fn acknowledge_interrupt(&self, bits: u32) {
        self.regs.write32(regs::INTERRUPT_ACK, bits);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use core::cell::Cell;
    use core::ptr::NonNull;
    use std::boxed::Box;

    use super::*;

    /// A clock that jumps 1 ms per read.
    struct FastClock(Cell<u64>);

    impl Clock for FastClock {
        fn now_ns(&self) -> u64 {
            self.0.set(self.0.get() + 1_000_000);
            self.0.get()
        }
    }

    /// A register block in ordinary memory: the "device" never acts, which
    /// is exactly a hung device.
    fn fake_registers(identification: u32) -> (Box<[u64; 32]>, Mmio) {
        let mut block = Box::new([0u64; 32]);
        block[0] = u64::from(identification);
        // SAFETY: the boxed block outlives the Mmio in every test below.
        let mmio = unsafe { Mmio::new(NonNull::new(block.as_mut_ptr().cast()).unwrap(), 256) };
        (block, mmio)
    }

    #[test]
    fn refuses_a_device_that_is_not_an_edu() {
        let clock = FastClock(Cell::new(0));
        let (_block, mmio) = fake_registers(0x1234_5678);
        assert_eq!(
            Edu::new(mmio, &clock).err(),
            Some(EduError::NotAnEdu {
                identification: 0x1234_5678
            })
        );
    }

    #[test]
    fn refuses_transfers_outside_the_buffer_before_touching_the_device() {
        let clock = FastClock(Cell::new(0));
        let (block, mmio) = fake_registers(0x0100_00ED);
        let edu = Edu::new(mmio, &clock).unwrap();
        assert_eq!(
            edu.dma(Direction::ToDevice, 0x1000, 0, 4097),
            Err(EduError::OutsideBuffer {
                offset: 0,
                len: 4097
            })
        );
        assert_eq!(
            edu.dma(Direction::ToRam, 0x1000, 4000, 100),
            Err(EduError::OutsideBuffer {
                offset: 4000,
                len: 100
            })
        );
        assert_eq!(
            edu.dma(Direction::ToRam, 0x1000, usize::MAX, 2),
            Err(EduError::OutsideBuffer {
                offset: usize::MAX,
                len: 2
            })
        );
        assert_eq!(
            edu.dma(Direction::ToRam, 0x1000, 0, 0),
            Err(EduError::Empty)
        );
        assert_eq!(
            block[0x98 / 8],
            0,
            "a refused transfer must not start the engine"
        );
    }

    #[test]
    fn programs_source_destination_count_and_direction() {
        let clock = FastClock(Cell::new(0));
        let (block, mmio) = fake_registers(0x0100_00ED);
        let edu = Edu::new(mmio, &clock).unwrap();
        edu.start_dma(Direction::ToRam, 0x1_2345_6000, 0x10, 64, true)
            .unwrap();
        assert_eq!(block[0x80 / 8], BUFFER_DEVICE_ADDRESS + 0x10);
        assert_eq!(block[0x88 / 8], 0x1_2345_6000);
        assert_eq!(block[0x90 / 8], 64);
        assert_eq!(block[0x98 / 8], DMA_RUN | DMA_TO_RAM | DMA_RAISE_IRQ);
        // The engine is "running" and never finishes: busy, then a bounded timeout.
        assert_eq!(
            edu.start_dma(Direction::ToDevice, 0, 0, 1, false),
            Err(EduError::Busy)
        );
        assert!(matches!(edu.wait_dma(), Err(EduError::Timeout(_))));
    }
}
