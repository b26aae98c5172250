//! A user-space driver for QEMU's edu device (QEMU docs/specs/edu.rst),
//! shared by the programs that drive one: finding it with `device_list`,
//! opening it (`device_open` maps its BAR 0 into the task), and DMA whose
//! completion the task sleeps for in `irq_wait`.

use core::fmt;

use abi::{Command, DeviceList, DeviceListEntry, DeviceListFlags, DeviceOpen, Errno};

use crate::{iommufd, irq_wait};

pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x11E8;
/// BAR 0 registers: the DMA engine (8 bytes each) and the interrupt
/// acknowledge register (4 bytes).
const DMA_SOURCE: usize = 0x80;
const DMA_DESTINATION: usize = 0x88;
const DMA_COUNT: usize = 0x90;
const DMA_COMMAND: usize = 0x98;
const INTERRUPT_ACK: usize = 0x64;
/// DMA command bits: start, direction device -> RAM, interrupt when done.
const DMA_RUN: u64 = 1;
const DMA_TO_RAM: u64 = 2;
const DMA_IRQ: u64 = 4;
/// Interrupt status bit the DMA engine raises when it finishes.
const DMA_DONE: u32 = 0x100;
/// Where the device's own 4 KiB buffer sits in its DMA address space.
pub const BUFFER: u64 = 0x40000;
/// One transfer: the page size the programs use.
pub const TRANSFER: u64 = 4096;
/// How long a transfer may take (each completes 100 ms of virtual time after
/// it starts).
const DMA_TIMEOUT_NS: u64 = 2_000_000_000;
/// Polls of the command register before a polled transfer counts as hung.
const POLL_LIMIT: u32 = 2_000_000;

/// A PCI function as `device_list` names it: segment << 16 | bus << 8 | devfn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciAddress(pub u32);

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.0;
        write!(
            f,
            "{:02x}:{:02x}.{}",
            (a >> 8) & 0xFF,
            (a >> 3) & 0x1F,
            a & 7
        )
    }
}

/// `device_open` arguments for every function of bus 0, in read-only memory
/// (a `static` without interior mutability lands in the program's rodata).
static READ_ONLY_OPENS: [DeviceOpen; 256] = {
    let mut all = [DeviceOpen {
        size: core::mem::size_of::<DeviceOpen>() as u32,
        flags: 0,
        pci_address: 0,
        out_dev_id: 0,
        out_bar0_va: 0,
        out_bar0_len: 0,
    }; 256];
    let mut devfn = 0;
    while devfn < all.len() {
        all[devfn].pci_address = devfn as u32;
        devfn += 1;
    }
    all
};

/// A `device_open` argument struct for the bus-0 function at `address` that
/// the kernel can read but not write its answer into (the call must fail
/// with `EFAULT` and give everything back).
pub fn read_only_open(address: PciAddress) -> Option<&'static DeviceOpen> {
    READ_ONLY_OPENS.get(address.0 as usize)
}

/// The machine's PCI functions as `device_list` reports them.
pub fn device_list(entries: &mut [DeviceListEntry; 32]) -> Result<&[DeviceListEntry], Errno> {
    let mut list = DeviceList {
        size: core::mem::size_of::<DeviceList>() as u32,
        num: entries.len() as u32,
        entries_uptr: entries.as_mut_ptr() as u64,
    };
    iommufd(Command::DeviceList, &mut list)?;
    Ok(&entries[..list.num as usize])
}

/// The `index`-th edu that an IOMMU translates, if there is one.
pub fn find_translated(index: usize) -> Result<Option<PciAddress>, Errno> {
    let mut entries = [DeviceListEntry::default(); 32];
    Ok(device_list(&mut entries)?
        .iter()
        .filter(|e| {
            e.vendor_id == VENDOR_ID
                && e.device_id == DEVICE_ID
                && DeviceListFlags::from_bits_retain(e.flags).contains(DeviceListFlags::TRANSLATED)
        })
        .nth(index)
        .map(|e| PciAddress(e.pci_address)))
}

/// Who holds the function at `address`, as `device_list` says now.
pub fn holder(address: PciAddress) -> &'static str {
    let mut entries = [DeviceListEntry::default(); 32];
    let flags = device_list(&mut entries).ok().and_then(|list| {
        list.iter()
            .find(|e| e.pci_address == address.0)
            .map(|e| DeviceListFlags::from_bits_retain(e.flags))
    });
    match flags {
        Some(flags) if flags.contains(DeviceListFlags::OPENED) => "opened by this task",
        Some(flags) if flags.contains(DeviceListFlags::CLAIMED) => "claimed by another task",
        Some(_) => "free",
        None => "not listed",
    }
}

/// Why a transfer did not complete as it should.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// `irq_wait` did not report exactly one completion interrupt.
    Interrupt(Result<u64, Errno>),
    /// The interrupt came but the engine still runs.
    StillRunning,
}

/// An opened edu.
pub struct Edu {
    registers: *mut u8,
    /// The device's object id from `device_open`.
    pub id: u32,
}

impl Edu {
    /// Opens the function at `address` for this task (exclusively).
    pub fn open(address: PciAddress) -> Result<Edu, Errno> {
        let mut open = DeviceOpen {
            size: core::mem::size_of::<DeviceOpen>() as u32,
            pci_address: address.0,
            ..Default::default()
        };
        iommufd(Command::DeviceOpen, &mut open)?;
        Ok(Edu {
            registers: open.out_bar0_va as *mut u8,
            id: open.out_dev_id,
        })
    }

    /// Where `device_open` mapped BAR 0 in this task.
    pub fn registers(&self) -> *mut u8 {
        self.registers
    }

    fn write(&self, offset: usize, value: u64) {
        // SAFETY: BAR 0 (1 MiB) is mapped into this task by device_open; the
        // offsets are edu's 8-byte DMA registers.
        unsafe { (self.registers.add(offset) as *mut u64).write_volatile(value) }
    }

    fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as in `write`, for edu's 4-byte registers below 0x80.
        unsafe { (self.registers.add(offset) as *mut u32).write_volatile(value) }
    }

    fn read(&self, offset: usize) -> u64 {
        // SAFETY: as in `write`.
        unsafe { (self.registers.add(offset) as *const u64).read_volatile() }
    }

    /// Starts one page transfer without a completion interrupt and returns
    /// at once (the transfer ends 100 ms later, whatever the task does).
    pub fn start_polled(&self, iova: u64, to_ram: bool) {
        self.start(iova, to_ram, false);
    }

    /// Copies `count` bytes from the device buffer (at `offset`) to bus
    /// address `destination`, without a completion interrupt, and waits for
    /// the engine by polling.
    pub fn send_polled(&self, offset: u64, destination: u64, count: u64) -> Result<(), DmaError> {
        self.start_send(offset, destination, count);
        self.wait_polled()
    }

    /// Starts what [`Edu::send_polled`] does and returns at once.
    pub fn start_send(&self, offset: u64, destination: u64, count: u64) {
        self.write(DMA_SOURCE, BUFFER + offset);
        self.write(DMA_DESTINATION, destination);
        self.write(DMA_COUNT, count);
        self.write(DMA_COMMAND, DMA_RUN | DMA_TO_RAM);
    }

    /// The identification register (0x010000ED on QEMU's edu).
    pub fn identification(&self) -> u32 {
        // SAFETY: as in `write`, for the 4-byte register at offset 0.
        unsafe { (self.registers as *const u32).read_volatile() }
    }

    fn start(&self, iova: u64, to_ram: bool, interrupt: bool) {
        let (source, destination) = if to_ram {
            (BUFFER, iova)
        } else {
            (iova, BUFFER)
        };
        self.write(DMA_SOURCE, source);
        self.write(DMA_DESTINATION, destination);
        self.write(DMA_COUNT, TRANSFER);
        let mut command = DMA_RUN;
        if to_ram {
            command |= DMA_TO_RAM;
        }
        if interrupt {
            command |= DMA_IRQ;
        }
        self.write(DMA_COMMAND, command);
    }

    /// One transfer without a completion interrupt, its end found by polling
    /// the command register (for a device whose MSI the task's own stage-1
    /// table would have to translate).
    pub fn dma_polled(&self, iova: u64, to_ram: bool) -> Result<(), DmaError> {
        self.start(iova, to_ram, false);
        self.wait_polled()
    }

    /// Waits, polling the command register, until the engine is idle.
    pub fn wait_polled(&self) -> Result<(), DmaError> {
        for _ in 0..POLL_LIMIT {
            if self.read(DMA_COMMAND) & DMA_RUN == 0 {
                return Ok(());
            }
            // Leave QEMU's device timers room between two register reads.
            for _ in 0..200 {
                core::hint::spin_loop();
            }
        }
        Err(DmaError::StillRunning)
    }

    /// One transfer of a page between `iova` and the device buffer; sleeps in
    /// `irq_wait` until the device's completion interrupt.
    pub fn dma(&self, iova: u64, to_ram: bool) -> Result<(), DmaError> {
        self.start(iova, to_ram, true);
        let interrupts = irq_wait(self.id, DMA_TIMEOUT_NS);
        self.write32(INTERRUPT_ACK, DMA_DONE);
        match interrupts {
            Ok(1) if self.read(DMA_COMMAND) & DMA_RUN == 0 => Ok(()),
            Ok(1) => Err(DmaError::StillRunning),
            other => Err(DmaError::Interrupt(other)),
        }
    }
}
