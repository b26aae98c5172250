//! Kernel glue for Intel VT-d: finds the remapping units in the ACPI DMAR,
//! brings every one of them up with the kernel's services (a unit left as
//! firmware left it would let the DMA of the devices behind it go wherever
//! firmware pointed it), and routes their fault events to a kernel vector.
//! Policy (which device goes where) belongs to the callers.

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

/// The unit that translates `bdf` (the DRHD whose device scope names it, else
/// the segment's INCLUDE_PCI_ALL unit, VT-d 3.4 §8.3) and the name that unit
/// gives it; `None` when no unit's scope covers it, so its DMA is not
/// translated at all.
pub fn endpoint(platform: &Platform, bdf: pci::Bdf) -> Option<(UnitId, ::iommu::DeviceId)> {
    let requester = bdf.requester_id();
    let unit = discovery::unit_for(described(platform), 0, requester)?;
    Some((
        UnitId(u32::try_from(unit).ok()?),
        ::iommu::DeviceId(u32::from(requester)),
    ))
}

/// The name the first unit gives `bdf`, or `None` when the DMAR puts it
/// behind another unit or behind none (the unit-level tests drive unit 0).
pub fn device_id(platform: &Platform, bdf: pci::Bdf) -> Option<::iommu::DeviceId> {
    endpoint(platform, bdf)
        .filter(|&(unit, _)| unit == UnitId(0))
        .map(|(_, id)| id)
}

/// The DMAR's units, parsed once: the table does not change.
fn described(platform: &Platform) -> &'static [UnitDescription] {
    static UNITS: spin::Once<alloc::vec::Vec<UnitDescription>> = spin::Once::new();
    UNITS.call_once(|| descriptions(platform).unwrap_or_default())
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

/// The platform's units, one per DRHD in DMAR order (`UnitId` = index),
/// owned here like every vendor's: brought up on first use, reached by the
/// iommufd core and the tests alike through [`with_unit_at`]. Empty: not up
/// (yet), or no DRHD.
/// Written to change a unit (or bring them up), read by the CPUs that map,
/// unmap and flush at once.
static UNITS: spin::RwLock<alloc::vec::Vec<Unit>> = spin::RwLock::new(alloc::vec::Vec::new());

/// Runs `f` on unit `index`, bringing every unit up first (translation on,
/// every device blocked, queued invalidation and interrupt remapping when
/// offered) if nothing did yet. `Err` when the machine has no such unit or
/// bring-up failed.
pub fn with_unit_at<R>(
    platform: &Platform,
    index: usize,
    f: impl FnOnce(&mut Unit) -> R,
) -> Result<R, String> {
    let mut units = UNITS.write();
    if units.is_empty() {
        *units = bring_up_all(platform, Options::default(), &crate::memory::dma::DMA)?;
    }
    let unit = units
        .get_mut(index)
        .ok_or_else(|| format!("no VT-d unit {index} in the DMAR"))?;
    Ok(f(unit))
}

/// Runs `f` on unit `index` through a shared reference, beside other CPUs'
/// shared calls; `None` when the units are not up (or there is no such).
pub fn with_unit_shared_at<R>(index: usize, f: impl FnOnce(&Unit) -> R) -> Option<R> {
    Some(f(UNITS.read().get(index)?))
}

/// [`with_unit_at`] the first unit, which the unit-level tests drive.
pub fn with_unit<R>(platform: &Platform, f: impl FnOnce(&mut Unit) -> R) -> Result<R, String> {
    with_unit_at(platform, 0, f)
}

/// How many units are up (0 before the first use).
pub fn units_up() -> usize {
    UNITS.read().len()
}

/// Replaces the units with ones brought up with `options`, their table pages
/// from `dma` (tests: register-based invalidation, memory that runs dry).
/// The old instances are shut down first. `false` when the machine has no
/// VT-d. Only while the iommufd core holds nothing on the units.
pub fn bring_up_again(
    platform: &Platform,
    options: Options,
    dma: &'static (dyn os_services::DmaMemory + Sync),
) -> Result<bool, String> {
    let mut units = UNITS.write();
    units.clear();
    *units = bring_up_all(platform, options, dma)?;
    Ok(!units.is_empty())
}

/// Shuts the units down (parked: translation stays on with nothing present,
/// so DMA is blocked; every structure freed); the next [`with_unit_at`]
/// brings the default ones up again.
pub fn shut_down() {
    UNITS.write().clear();
}

/// Brings up every DRHD with `options`, in DMAR order (`Vtd::bring_up_all`:
/// all or nothing), their fault events on one kernel vector, every table page
/// from `dma`. Empty when the machine has no VT-d.
fn bring_up_all(
    platform: &Platform,
    options: Options,
    dma: &'static (dyn os_services::DmaMemory + Sync),
) -> Result<alloc::vec::Vec<Unit>, String> {
    let mut units = alloc::vec::Vec::new();
    for description in descriptions(platform)? {
        let base = NonNull::new(description.register_base as *mut u8).ok_or("DRHD base 0")?;
        // SAFETY: the DRHD register page is identity-mapped uncached (the low
        // 4 GiB above 0xB000_0000 are) and this unit is its only user.
        let mmio = unsafe { Mmio::new(base, description.register_size as usize) };
        units.push((UnitRegisters(mmio), description));
    }
    let mut units = Vtd::bring_up_all(units, environment(dma), options)
        .map_err(|(index, err)| format!("VT-d bring-up of DRHD {index}: {err:?}"))?;
    if let Some(vector) = *FAULT_VECTOR.call_once(|| crate::irq::alloc_vector(note_fault_event)) {
        let (address, data) = crate::irq::msi_message(vector);
        for unit in &mut units {
            unit.hardware.enable_fault_interrupt(address, data);
        }
    }
    Ok(units)
}
