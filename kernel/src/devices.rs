//! The PCI functions the kernel found, and access to the edu devices.

use alloc::vec::Vec;
use core::ptr::NonNull;

use edu::Edu;
use os_services::mmio::Mmio;
use pci::{Bar, BarAllocator, Command, ConfigSpace, Function, bar};

use crate::platform::Platform;
use crate::time::CLOCK;

/// A PCI function and its decoded memory BARs.
pub struct PciDevice {
    pub function: Function,
    pub bars: Vec<Bar>,
}

static DEVICES: spin::Once<Vec<PciDevice>> = spin::Once::new();

/// Enumerates PCI and, where no firmware did (aarch64 `virt` ELF boot),
/// assigns memory BARs from the host bridge's 32-bit window.
pub fn init(platform: &Platform) {
    DEVICES.call_once(|| {
        let config = &platform.pci.ecam;
        let mut allocator = platform.pci.bar_window.map(BarAllocator::new);
        let mut devices = Vec::new();
        for function in pci::enumerate(config, config.buses()) {
            let mut bars = bar::probe_all(config, function.bdf);
            if let Some(allocator) = allocator.as_mut() {
                for bar in bars
                    .iter_mut()
                    .filter(|bar| matches!(bar, Bar::Memory { .. }))
                {
                    match allocator.assign(config, function.bdf, *bar) {
                        Ok(assigned) => *bar = assigned,
                        Err(err) => println!(
                            "pci: {} BAR{}: not assigned: {err:?}",
                            function.bdf,
                            bar.index()
                        ),
                    }
                }
            }
            devices.push(PciDevice { function, bars });
        }
        devices
    });
}

pub fn all() -> &'static [PciDevice] {
    DEVICES.get().map(Vec::as_slice).unwrap_or(&[])
}

/// The edu functions, in BDF order.
pub fn edus() -> impl Iterator<Item = &'static PciDevice> {
    all().iter().filter(|device| {
        device.function.vendor_id == edu::VENDOR_ID && device.function.device_id == edu::DEVICE_ID
    })
}

/// Errors opening an edu device.
#[derive(Debug)]
pub enum OpenError {
    NoBar0,
    Driver(edu::EduError),
}

impl core::fmt::Display for OpenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            OpenError::NoBar0 => write!(f, "no memory BAR0"),
            OpenError::Driver(err) => write!(f, "edu driver: {err:?}"),
        }
    }
}

/// Enables memory decoding and bus mastering on `device` and binds the edu
/// driver to its BAR0.
pub fn open_edu(platform: &Platform, device: &PciDevice) -> Result<Edu<'static>, OpenError> {
    let config = &platform.pci.ecam;
    let bdf = device.function.bdf;
    let Some(Bar::Memory { address, .. }) =
        device.bars.iter().find(|bar| bar.index() == 0).copied()
    else {
        return Err(OpenError::NoBar0);
    };
    // BARs hold bus addresses; on both machines the 32-bit window is
    // identity-mapped between bus and CPU.
    let cpu_address = platform.pci.bar_window.map_or(address, |window| {
        address - window.pci_base + window.cpu_base
    });
    config.set_command(
        bdf,
        config.command(bdf) | Command::MEMORY_SPACE | Command::BUS_MASTER,
    );
    let base = NonNull::new(cpu_address as *mut u8).ok_or(OpenError::NoBar0)?;
    // SAFETY: BAR0 of an edu is 1 MiB of registers, identity-mapped uncached
    // by the boot page tables (x86_64: PCI hole; aarch64: first GiB as Device).
    let regs = unsafe { Mmio::new(base, edu::BAR0_SIZE) };
    Edu::new(regs, &CLOCK).map_err(OpenError::Driver)
}
