//! The PCI functions the kernel found, and access to the edu devices.

use alloc::vec::Vec;
use core::ptr::NonNull;

use edu::Edu;
use os_services::mmio::Mmio;
use pci::bridge::Topology;
use pci::{Bar, BarAllocator, Command, ConfigSpace, Function, bar};

use crate::platform::Platform;
use crate::time::CLOCK;

/// A PCI function and its decoded memory BARs.
pub struct PciDevice {
    pub function: Function,
    pub bars: Vec<Bar>,
}

static DEVICES: spin::Once<Vec<PciDevice>> = spin::Once::new();
static TOPOLOGY: spin::Once<Topology> = spin::Once::new();

/// Enumerates PCI and, where no firmware did (aarch64 `virt` ELF boot),
/// numbers the buses behind bridges, assigns memory BARs from the host
/// bridge's 32-bit window (a fresh 1 MiB-aligned start for every bus, so that
/// each bridge's window covers exactly its buses) and opens the bridges'
/// windows. Bridges forward DMA only as bus masters: they all become one.
pub fn init(platform: &Platform) {
    DEVICES.call_once(|| {
        let config = &platform.pci.ecam;
        let mut allocator = platform.pci.bar_window.map(BarAllocator::new);
        if allocator.is_some() {
            pci::bridge::number_buses(config, *config.buses().start());
        }
        let functions = pci::enumerate(config, config.buses());
        let topology = Topology::discover(config, &functions);
        let mut devices = Vec::new();
        let mut last_bus = None;
        for function in functions {
            let mut bars = bar::probe_all(config, function.bdf);
            if let Some(allocator) = allocator.as_mut() {
                if last_bus.is_some_and(|bus| bus != function.bdf.bus) {
                    allocator.align(pci::bridge::WINDOW_GRAIN);
                }
                last_bus = Some(function.bdf.bus);
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
        // Peer-to-peer requests go up to the IOMMU wherever a port or a
        // multi-function device can make them (Linux `pci_enable_acs`).
        for device in &devices {
            pci::acs::enable_isolation(config, device.function.bdf);
        }
        for bridge in &topology.bridges {
            if allocator.is_some() {
                let window = memory_below(&devices, bridge);
                pci::bridge::open_memory_window(config, bridge.bdf, window);
            } else {
                pci::bridge::enable_forwarding(config, bridge.bdf);
            }
        }
        TOPOLOGY.call_once(|| topology);
        devices
    });
}

/// The bus-address range the memory BARs below `bridge` took, widened to
/// the bridges' 1 MiB grain; `None` if there are none.
fn memory_below(devices: &[PciDevice], bridge: &pci::bridge::Bridge) -> Option<(u64, u64)> {
    let grain = pci::bridge::WINDOW_GRAIN;
    devices
        .iter()
        .filter(|device| (bridge.secondary..=bridge.subordinate).contains(&device.function.bdf.bus))
        .flat_map(|device| device.bars.iter())
        .filter_map(|bar| match *bar {
            Bar::Memory { address, size, .. } if address != 0 => Some((address, address + size)),
            _ => None,
        })
        .reduce(|(start, end), (a, b)| (start.min(a), end.max(b)))
        .map(|(start, end)| (start & !(grain - 1), end.next_multiple_of(grain)))
}

/// The requester id `bdf`'s DMA carries at the root, after every bridge on
/// its way (`pci::bridge::Topology::dma_alias`): what the IOMMU isolates.
pub fn dma_alias(bdf: pci::Bdf) -> pci::Bdf {
    TOPOLOGY
        .get()
        .map_or(bdf, |topology| topology.dma_alias(bdf))
}

/// The buses an MSI of `bdf` may carry a requester id from, when a
/// PCIe-to-PCI bridge took its requests over (`pci::bridge::Topology::msi_buses`).
pub fn msi_buses(bdf: pci::Bdf) -> Option<(u8, u8)> {
    TOPOLOGY.get()?.msi_buses(bdf)
}

/// Every requester id `bdf`'s DMA may carry on its way to the root, its
/// own first and [`dma_alias`] last (`pci::bridge::Topology::for_each_dma_alias`).
pub fn dma_aliases(bdf: pci::Bdf) -> Vec<pci::Bdf> {
    let mut ids = Vec::new();
    match TOPOLOGY.get() {
        Some(topology) => topology.for_each_dma_alias(bdf, |id| ids.push(id)),
        None => ids.push(bdf),
    }
    ids
}

/// The functions that share `bdf`'s isolation group: below the same bridge
/// that lets peers reach each other, or functions of its device that ACS
/// does not keep apart (`pci::acs::isolation_group`, Linux
/// `pci_device_group`). `bdf` is among them.
pub fn isolation_group(platform: &Platform, bdf: pci::Bdf) -> Vec<pci::Bdf> {
    let functions: Vec<pci::Function> =
        all().iter().map(|device| device.function.clone()).collect();
    match TOPOLOGY.get() {
        Some(topology) => pci::acs::isolation_group(&platform.pci.ecam, topology, &functions, bdf),
        None => alloc::vec![bdf],
    }
}

/// The (secondary, subordinate) buses of the bridge at requester id
/// `bridge`, if it is one (what a DMAR sub-hierarchy scope covers).
#[cfg(target_arch = "x86_64")]
pub fn buses_below(bridge: u16) -> Option<(u8, u8)> {
    let bdf = pci::Bdf::from_requester_id(bridge);
    TOPOLOGY
        .get()?
        .bridges
        .iter()
        .find(|b| b.bdf == bdf)
        .map(|b| (b.secondary, b.subordinate))
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
            OpenError::Driver(err) => write!(f, "edu driver: {err}"),
        }
    }
}

/// Enables memory decoding and bus mastering on `device` and binds the edu
/// driver to its BAR0.
pub fn open_edu(platform: &Platform, device: &PciDevice) -> Result<Edu<'static>, OpenError> {
    let config = &platform.pci.ecam;
    let bdf = device.function.bdf;
    config.set_command(
        bdf,
        config.command(bdf) | Command::MEMORY_SPACE | Command::BUS_MASTER,
    );
    bind_edu(platform, device)
}

/// Binds the kernel's edu driver to `device`'s BAR0 through the kernel's
/// identity map (memory decoding must be on).
fn bind_edu(platform: &Platform, device: &PciDevice) -> Result<Edu<'static>, OpenError> {
    let Some(Bar::Memory { address, .. }) =
        device.bars.iter().find(|bar| bar.index() == 0).copied()
    else {
        return Err(OpenError::NoBar0);
    };
    let base = NonNull::new(cpu_address(platform, address) as *mut u8).ok_or(OpenError::NoBar0)?;
    // SAFETY: BAR0 of an edu is 1 MiB of registers, identity-mapped uncached
    // by the boot page tables (x86_64: PCI hole; aarch64: first GiB as Device).
    let regs = unsafe { Mmio::new(base, edu::BAR0_SIZE) };
    Edu::new(regs, &CLOCK).map_err(OpenError::Driver)
}

/// The CPU address of bus address `bus_address` in the host bridge's memory
/// window. BARs hold bus addresses; on both machines the 32-bit window is
/// identity-mapped between bus and CPU.
pub fn cpu_address(platform: &Platform, bus_address: u64) -> u64 {
    platform.pci.bar_window.map_or(bus_address, |window| {
        bus_address - window.pci_base + window.cpu_base
    })
}

fn is_edu(device: &PciDevice) -> bool {
    device.function.vendor_id == edu::VENDOR_ID && device.function.device_id == edu::DEVICE_ID
}

/// Why a device could not be quiesced or scrubbed.
#[derive(Debug)]
pub struct StuckDevice(pub OpenError);

/// Stops `device` issuing DMA on behalf of an owner that let it go (VFIO's
/// `vfio_pci_core_disable`): bus mastering off at once, then the device's own
/// hook waits out work in flight, then memory decoding off. The device then
/// neither reaches memory nor answers its registers until it is opened again.
///
/// The edu hook waits for its DMA engine to go idle: a transfer started by
/// the old owner finishes with bus mastering off, so it reaches nobody's
/// memory, rather than 100 ms later in the next owner's domain.
pub fn quiesce(platform: &Platform, device: &PciDevice) -> Result<(), StuckDevice> {
    let config = &platform.pci.ecam;
    let bdf = device.function.bdf;
    let command = config.command(bdf);
    config.set_command(bdf, command - Command::BUS_MASTER);
    let drained = if is_edu(device) && command.contains(Command::MEMORY_SPACE) {
        bind_edu(platform, device)
            .and_then(|edu| edu.wait_dma().map_err(OpenError::Driver))
            .map_err(StuckDevice)
    } else {
        Ok(())
    };
    config.set_command(
        bdf,
        config.command(bdf) - (Command::MEMORY_SPACE | Command::BUS_MASTER),
    );
    drained
}

/// Resets made by [`reset_released`]: (function level, secondary bus).
static RESETS: [core::sync::atomic::AtomicUsize; 2] =
    [const { core::sync::atomic::AtomicUsize::new(0) }; 2];

/// How many function-level and secondary-bus resets released functions got
/// (tests).
pub fn resets() -> (usize, usize) {
    use core::sync::atomic::Ordering;
    (
        RESETS[0].load(Ordering::SeqCst),
        RESETS[1].load(Ordering::SeqCst),
    )
}

/// Resets a released, quiesced function where the hardware offers a reset
/// (VFIO resets a device between owners; Linux `pci_reset_function`): a
/// Function Level Reset if it has one; else, when the bridge above it leads
/// to a bus where no function is `open` any more, that bridge's Secondary
/// Bus Reset, which resets the group behind it at once. The configuration
/// the kernel gave them (BARs, windows, bus numbers) is restored.
pub fn reset_released(
    platform: &Platform,
    device: &PciDevice,
    open: &[pci::Bdf],
) -> Result<(), pci::reset::NotReady> {
    use core::sync::atomic::Ordering;
    let config = &platform.pci.ecam;
    let bdf = device.function.bdf;
    if pci::reset::supports_flr(config, bdf) {
        RESETS[0].fetch_add(1, Ordering::SeqCst);
        return pci::reset::function_level_reset(config, &crate::time::CLOCK, bdf);
    }
    let Some(bridge) = TOPOLOGY
        .get()
        .and_then(|topology| topology.bridge_to(bdf.bus))
    else {
        return Ok(());
    };
    let buses = bridge.secondary..=bridge.subordinate;
    if open.iter().any(|other| buses.contains(&other.bus)) {
        return Ok(());
    }
    let below: Vec<pci::Bdf> = all()
        .iter()
        .map(|device| device.function.bdf)
        .filter(|other| buses.contains(&other.bus))
        .collect();
    RESETS[1].fetch_add(1, Ordering::SeqCst);
    pci::reset::secondary_bus_reset(config, &crate::time::CLOCK, bridge.bdf, &below)
}

/// Whether `device` keeps data of its owner's that survives [`quiesce`] and
/// that [`scrub`] knows how to overwrite (edu: its 4 KiB DMA buffer).
pub fn holds_residue(device: &PciDevice) -> bool {
    is_edu(device)
}

/// Overwrites what an earlier owner left in `device`: the edu copies
/// [`edu::BUFFER_SIZE`] bytes from `zeros` (a bus address the caller made
/// read zeros) over its buffer. Decoding and bus mastering are off again
/// afterwards.
pub fn scrub(platform: &Platform, device: &PciDevice, zeros: u64) -> Result<(), StuckDevice> {
    if !is_edu(device) {
        return Ok(());
    }
    let config = &platform.pci.ecam;
    let bdf = device.function.bdf;
    let command = config.command(bdf);
    config.set_command(bdf, command | Command::MEMORY_SPACE | Command::BUS_MASTER);
    let copied = bind_edu(platform, device).and_then(|edu| {
        edu.dma(edu::Direction::ToDevice, zeros, 0, edu::BUFFER_SIZE)
            .map_err(OpenError::Driver)
    });
    config.set_command(bdf, command - (Command::MEMORY_SPACE | Command::BUS_MASTER));
    copied.map_err(StuckDevice)
}
