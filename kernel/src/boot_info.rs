//! What the architecture's entry code learnt from the firmware hand-off.

/// A range of physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub base: u64,
    pub size: u64,
}

impl MemoryRegion {
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

/// Where the firmware tables are.
#[derive(Clone, Copy, Debug)]
pub enum FirmwareTables {
    /// x86_64: the ACPI RSDP's physical address.
    #[cfg(target_arch = "x86_64")]
    Acpi { rsdp: u64 },
    /// aarch64: the device-tree blob, which stays where the loader put it (reserved).
    #[cfg(target_arch = "aarch64")]
    DeviceTree { dtb: &'static [u8] },
}

/// Capacity of the fixed arrays: the boot info exists before the heap does.
pub const MAX_REGIONS: usize = 32;

/// Boot information in fixed-size storage (no allocation).
pub struct BootInfo {
    /// Usable RAM.
    pub ram: heapless::Vec<MemoryRegion, MAX_REGIONS>,
    /// RAM that must not be handed out (firmware data, the DTB, ...). The
    /// kernel image is excluded separately.
    pub reserved: heapless::Vec<MemoryRegion, MAX_REGIONS>,
    pub cmdline: &'static str,
    pub firmware: FirmwareTables,
}

impl BootInfo {
    pub fn cmdline(&self) -> &'static str {
        self.cmdline
    }
}
