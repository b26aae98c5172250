//! Kernel glue for Intel VT-d: finds the remapping units in the ACPI DMAR,
//! brings one up with the kernel's services, and routes its fault event to
//! a kernel vector. Policy (which device goes where) belongs to the callers.

use alloc::format;
use alloc::string::String;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use ::iommu::UnitId;
use os_services::mmio::Mmio;
use vtd::discovery::{self, UnitDescription};
use vtd::{Environment, Options, Registers, Vtd};

use crate::platform::{Firmware, Platform};

/// The unit's register block, owned by exactly one [`Unit`].
pub struct UnitRegisters(Mmio);

// SAFETY: the MMIO window is identity-mapped for the kernel's lifetime and
// only the owning `Unit` (kept behind a lock by its users) touches it.
unsafe impl Send for UnitRegisters {}

impl Registers for UnitRegisters {
    fn read32(&self, reg: os_services::mmio::Reg32) -> u32 {
        self.0.read32(reg)
    }
    fn write32(&self, reg: os_services::mmio::Reg32, value: u32) {
        self.0.write32(reg, value)
    }
    fn read64(&self, reg: os_services::mmio::Reg64) -> u64 {
        self.0.read64(reg)
    }
    fn write64(&self, reg: os_services::mmio::Reg64, value: u64) {
        self.0.write64(reg, value)
    }
}

/// A brought-up VT-d unit.
pub type Unit = Vtd<'static, UnitRegisters>;

/// Writes back the cache lines of a table update: VT-d walks that do not
/// snoop (ECAP.C = 0) read memory, not the CPU caches.
fn flush_cache(start: *const u8, len: usize) {
    const LINE: usize = 64;
    let mut line = start as usize & !(LINE - 1);
    while line < start as usize + len {
        // SAFETY: clflush only writes back/evicts a line of mapped memory the
        // driver just wrote; it has no other effect.
        unsafe { core::arch::x86_64::_mm_clflush(line as *const u8) };
        line += LINE;
    }
    // SAFETY: a store fence orders the flushes before the following MMIO write.
    unsafe { core::arch::x86_64::_mm_sfence() };
}

fn environment(dma: &'static (dyn os_services::DmaMemory + Sync)) -> Environment<'static> {
    Environment {
        dma,
        clock: &crate::time::CLOCK,
        flush_cache,
        // Paging domains get io-page-table tables in DMA frames.
        new_table: None,
        parking_page: parking_page(),
    }
}

/// The zeroed page a dropped unit parks on (`Environment::parking_page`):
/// part of the kernel image, never written and never freed.
fn parking_page() -> Option<u64> {
    #[repr(C, align(4096))]
    struct Page([u8; 4096]);
    static PARKING: Page = Page([0; 4096]);
    // The kernel image is identity-mapped (linker/x86_64.ld, the boot page
    // tables): the address of a static is its physical address.
    Some(core::ptr::addr_of!(PARKING) as u64)
}

/// The remapping units the DMAR describes (empty without a DMAR).
pub fn descriptions(platform: &Platform) -> Result<alloc::vec::Vec<UnitDescription>, String> {
    let Firmware::Acpi(acpi) = &platform.firmware;
    match &acpi.dmar {
        None => Ok(alloc::vec::Vec::new()),
        Some(dmar) => {
            let mut units = discovery::units(dmar).map_err(|err| format!("DMAR: {err:?}"))?;
            // Sub-hierarchy scopes name bridges; the buses below them come
            // from the PCI topology.
            for unit in &mut units {
                unit.resolve_bridges(crate::devices::buses_below);
            }
            Ok(units)
        }
    }
}

/// The name the brought-up unit (the first DRHD) gives `bdf`, or `None` when
/// the DMAR puts the function behind another unit or behind none, so its DMA
/// is not this unit's to translate.
pub fn device_id(platform: &Platform, bdf: pci::Bdf) -> Option<::iommu::DeviceId> {
    // The DMAR does not change: parse it once, not for every function asked.
    static UNITS: spin::Once<alloc::vec::Vec<UnitDescription>> = spin::Once::new();
    let units = UNITS.call_once(|| descriptions(platform).unwrap_or_default());
    let requester = bdf.requester_id();
    (discovery::unit_for(units, 0, requester) == Some(0))
        .then_some(::iommu::DeviceId(u32::from(requester)))
}

/// Fault events delivered to the kernel since boot.
static FAULT_EVENTS: AtomicUsize = AtomicUsize::new(0);

fn note_fault_event() {
    FAULT_EVENTS.fetch_add(1, Ordering::SeqCst);
}

pub fn fault_events() -> usize {
    FAULT_EVENTS.load(Ordering::SeqCst)
}

/// The vector the fault event is routed to (allocated once).
static FAULT_VECTOR: spin::Once<Option<u8>> = spin::Once::new();

/// The platform's unit (the first DRHD), owned here like every vendor's:
/// brought up on first use, reached by the iommufd core and the tests alike
/// through [`with_unit`].
static UNIT: spin::Mutex<Option<Unit>> = spin::Mutex::new(None);

/// Runs `f` on the unit, bringing it up first (translation on, every device
/// blocked, queued invalidation and interrupt remapping when offered) if
/// nothing did yet. `Err` when the machine has no VT-d or bring-up failed.
pub fn with_unit<R>(platform: &Platform, f: impl FnOnce(&mut Unit) -> R) -> Result<R, String> {
    let mut unit = UNIT.lock();
    if unit.is_none() {
        *unit = bring_up_in(platform, Options::default(), &crate::memory::dma::DMA)?;
    }
    let unit = unit.as_mut().ok_or("no VT-d unit in the DMAR")?;
    Ok(f(unit))
}

/// Replaces the unit with one brought up with `options`, its table pages
/// from `dma` (tests: register-based invalidation, memory that runs dry).
/// The old instance is shut down first. `false` when the machine has no
/// VT-d. Only while the iommufd core holds nothing on the unit.
pub fn bring_up_again(
    platform: &Platform,
    options: Options,
    dma: &'static (dyn os_services::DmaMemory + Sync),
) -> Result<bool, String> {
    let mut unit = UNIT.lock();
    drop(unit.take());
    *unit = bring_up_in(platform, options, dma)?;
    Ok(unit.is_some())
}

/// Shuts the unit down (parked: translation stays on with nothing present,
/// so DMA is blocked; every structure freed); the next [`with_unit`] brings
/// the default one up again.
pub fn shut_down() {
    drop(UNIT.lock().take());
}

/// Brings up the first unit with `options`, its fault event on a kernel
/// vector, every table page from `dma`. `None` when the machine has no VT-d.
fn bring_up_in(
    platform: &Platform,
    options: Options,
    dma: &'static (dyn os_services::DmaMemory + Sync),
) -> Result<Option<Unit>, String> {
    let Some(description) = descriptions(platform)?.into_iter().next() else {
        return Ok(None);
    };
    let base = NonNull::new(description.register_base as *mut u8).ok_or("DRHD base 0")?;
    // SAFETY: the DRHD register page is identity-mapped uncached (the low
    // 4 GiB above 0xB000_0000 are) and this unit is its only user.
    let mmio = unsafe { Mmio::new(base, description.register_size as usize) };
    let mut unit = Vtd::new(
        UnitId(0),
        UnitRegisters(mmio),
        environment(dma),
        description,
        options,
    )
    .map_err(|err| format!("VT-d bring-up: {err:?}"))?;
    if let Some(vector) = *FAULT_VECTOR.call_once(|| crate::irq::alloc_vector(note_fault_event)) {
        let (address, data) = crate::irq::msi_message(vector);
        unit.hardware.enable_fault_interrupt(address, data);
    }
    Ok(Some(unit))
}
