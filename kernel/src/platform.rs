//! What the firmware says the machine has: PCI host bridges and (later) the
//! IOMMUs, from ACPI on x86_64 and the device tree on aarch64.

use alloc::format;
use alloc::string::String;
use core::ptr::NonNull;

use pci::{Ecam, MemoryWindow};

use crate::boot_info::{BootInfo, FirmwareTables};

/// The PCI segment the kernel drives (QEMU's machines have one).
pub struct PciHost {
    pub ecam: Ecam,
    /// Where BARs may be placed when no firmware assigned them (aarch64).
    pub bar_window: Option<MemoryWindow>,
}

pub struct Platform {
    pub pci: PciHost,
    pub firmware: Firmware,
}

/// The parsed firmware description, kept for the drivers.
pub enum Firmware {
    #[cfg(target_arch = "x86_64")]
    Acpi(firmware::acpi::AcpiInfo),
    #[cfg(target_arch = "aarch64")]
    DeviceTree(firmware::devicetree::Platform),
}

impl Platform {
    pub fn summary(&self) -> String {
        let buses = self.pci.ecam.buses();
        let tables = match &self.firmware {
            #[cfg(target_arch = "x86_64")]
            Firmware::Acpi(info) => format!(
                "ACPI ({} tables; DMAR: {}, IVRS: {})",
                info.tables.len(),
                if info.dmar.is_some() { "yes" } else { "no" },
                if info.ivrs.is_some() { "yes" } else { "no" }
            ),
            #[cfg(target_arch = "aarch64")]
            Firmware::DeviceTree(tree) => format!("device tree ({} SMMUv3)", tree.smmus.len()),
        };
        let cpus = cpu_ids(self).len();
        format!(
            "{tables}, PCI buses {:#04x}-{:#04x}, {cpus} CPU{} listed",
            buses.start(),
            buses.end(),
            if cpus == 1 { "" } else { "s" }
        )
    }
}

#[derive(Debug)]
pub enum DiscoveryError {
    Firmware(firmware::FirmwareError),
    NoPciHost,
}

impl core::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DiscoveryError::Firmware(err) => write!(f, "firmware tables: {err:?}"),
            DiscoveryError::NoPciHost => write!(f, "no PCI host bridge described"),
        }
    }
}

impl From<firmware::FirmwareError> for DiscoveryError {
    fn from(err: firmware::FirmwareError) -> Self {
        DiscoveryError::Firmware(err)
    }
}

/// # Safety contract of the ECAM mapping
/// Both architectures identity-map the ECAM window as uncached device memory
/// in their boot page tables (x86_64: the low 4 GiB, uncached above
/// 0xB000_0000; aarch64: the 0x40_0000_0000 GiB slot as Device-nGnRnE).
fn ecam_at(base: u64, buses: core::ops::RangeInclusive<u8>) -> Result<Ecam, DiscoveryError> {
    let base = NonNull::new(base as *mut u8).ok_or(DiscoveryError::NoPciHost)?;
    // SAFETY: see the function comment: the window is mapped uncached for
    // the kernel's lifetime and used only through this Ecam.
    Ok(unsafe { Ecam::new(base, buses) })
}

static PLATFORM: spin::Once<Platform> = spin::Once::new();

/// Discovers the platform once; later calls return the same description.
pub fn discover_once(boot: &BootInfo) -> Result<&'static Platform, DiscoveryError> {
    if let Some(platform) = PLATFORM.get() {
        return Ok(platform);
    }
    let platform = discover(boot)?;
    Ok(PLATFORM.call_once(|| platform))
}

/// The platform, for code that runs after boot (syscalls, the iommufd core).
pub fn get() -> &'static Platform {
    PLATFORM
        .get()
        .expect("the platform is discovered before anything asks for it")
}

/// Whether `address` lies in the PCI configuration window; false before
/// the platform is known (exception handlers ask this).
#[cfg(target_arch = "aarch64")]
pub fn is_config_address(address: usize) -> bool {
    PLATFORM
        .get()
        .is_some_and(|platform| platform.pci.ecam.contains(address))
}

pub fn discover(boot: &BootInfo) -> Result<Platform, DiscoveryError> {
    match boot.firmware {
        #[cfg(target_arch = "x86_64")]
        FirmwareTables::Acpi { rsdp } => discover_acpi(rsdp),
        #[cfg(target_arch = "aarch64")]
        FirmwareTables::DeviceTree { dtb } => discover_device_tree(dtb),
    }
}

#[cfg(target_arch = "aarch64")]
fn discover_device_tree(dtb: &[u8]) -> Result<Platform, DiscoveryError> {
    use firmware::devicetree::PciSpace;

    let tree = firmware::devicetree::Platform::parse(dtb)?;
    let host = tree.pcie_host().ok_or(DiscoveryError::NoPciHost)?;
    let ecam = ecam_at(host.ecam_base, host.bus_start..=host.bus_end)?;
    let bar_window = host.window(PciSpace::Mem32).map(|range| MemoryWindow {
        pci_base: range.pci_addr,
        cpu_base: range.cpu_addr,
        size: range.size,
    });
    Ok(Platform {
        pci: PciHost { ecam, bar_window },
        firmware: Firmware::DeviceTree(tree),
    })
}

#[cfg(target_arch = "x86_64")]
fn discover_acpi(rsdp: u64) -> Result<Platform, DiscoveryError> {
    /// The boot map identity-maps the low 4 GiB, where firmware puts its tables.
    const IDENTITY_MAPPED_LIMIT: u64 = 4 << 30;
    // SAFETY: physical memory below 4 GiB is identity-mapped; discover only
    // reads the ACPI tables, which live in RAM/ROM (no side effects).
    let memory = unsafe { firmware::acpi::IdentityMapped::new(0, IDENTITY_MAPPED_LIMIT) };
    let info = firmware::acpi::discover(rsdp, &memory)?;
    let region = info.ecam.first().ok_or(DiscoveryError::NoPciHost)?;
    // MCFG gives the address of bus 0 even when decoding starts at a later bus.
    let first_bus = region.base + (u64::from(region.bus_start) << 20);
    let ecam = ecam_at(first_bus, region.bus_start..=region.bus_end)?;
    if let Some(fadt) = info.fadt {
        crate::arch::set_acpi_ports(fadt.pm1a_control_port, fadt.pm_timer_port);
    }
    Ok(Platform {
        pci: PciHost {
            ecam,
            bar_window: None,
        },
        firmware: Firmware::Acpi(info),
    })
}

/// The CPUs the firmware lists, by the id the architecture starts them by:
/// x86 the MADT's enabled local APIC IDs, aarch64 the device tree's MPIDR
/// affinity values (`/cpus`). The kernel runs on one of them and starts the
/// others at boot (`arch::start_secondary_cpus`).
pub fn cpu_ids(platform: &Platform) -> alloc::vec::Vec<u64> {
    match &platform.firmware {
        #[cfg(target_arch = "x86_64")]
        Firmware::Acpi(info) => info
            .madt
            .as_ref()
            .map_or_else(alloc::vec::Vec::new, |madt| {
                madt.local_apics
                    .iter()
                    .filter(|apic| apic.enabled())
                    .map(|apic| u64::from(apic.apic_id))
                    .collect()
            }),
        #[cfg(target_arch = "aarch64")]
        Firmware::DeviceTree(tree) => tree.cpus.iter().map(|cpu| cpu.mpidr).collect(),
    }
}
