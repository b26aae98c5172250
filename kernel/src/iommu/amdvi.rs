//! AMD-Vi on this machine: finds the IOMMU in the ACPI IVRS, brings it up once (every
//! requester blocked) and hands it out behind a lock. Policy only; the hardware
//! access lives in the `amdvi` crate.

use alloc::format;
use alloc::string::String;
use core::ptr::NonNull;

use ::iommu::{DeviceId, DomainKind, Gather, IommuUnit, UnitId};
use amdvi::regs::{self, CapabilityHeader};
use amdvi::{AmdVi, DiscoveryError, UnitError};
use os_services::mmio::Mmio;
use pci::{Bdf, ConfigSpace};

use crate::platform::{Firmware, Platform};

/// Why this machine has no usable AMD-Vi unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Absent {
    /// No IVRS: not an AMD-Vi machine (e.g. the VT-d configurations).
    NoIvrs,
    /// The IVRS is there but unusable.
    Discovery(DiscoveryError),
    /// The IOMMU's PCI function does not carry the IOMMU capability (§3.2.1).
    NoCapability,
    /// Bring-up failed.
    BringUp(UnitError),
}

static UNIT: spin::Once<Result<spin::Mutex<AmdVi>, Absent>> = spin::Once::new();

/// The machine's first AMD-Vi unit, brought up on first use.
pub fn unit(platform: &Platform) -> Result<&'static spin::Mutex<AmdVi>, Absent> {
    UNIT.call_once(|| bring_up(platform).map(spin::Mutex::new))
        .as_ref()
        .map_err(|absent| *absent)
}

fn bring_up(platform: &Platform) -> Result<AmdVi, Absent> {
    let Firmware::Acpi(info) = &platform.firmware;
    let ivrs = info.ivrs.as_ref().ok_or(Absent::NoIvrs)?;
    let description = amdvi::discovery::describe(ivrs)
        .map_err(Absent::Discovery)?
        .swap_remove(0);
    let config = &platform.pci.ecam;
    let bdf = Bdf::from_requester_id(description.iommu_device_id);
    let capability = CapabilityHeader(config.read32(bdf, description.capability_offset));
    if capability.cap_id() != CapabilityHeader::CAP_ID
        || capability.cap_type() != CapabilityHeader::CAP_TYPE_IOMMU
    {
        return Err(Absent::NoCapability);
    }
    let base = NonNull::new(description.mmio_base as *mut u8)
        .ok_or(Absent::Discovery(DiscoveryError::BadBase(0)))?;
    // SAFETY: the IVHD names this 16 KiB block as the IOMMU's registers; the x86
    // boot page tables map it uncached (identity, above 0xB000_0000), and only this
    // unit touches it.
    let regs = unsafe { Mmio::new(base, regs::MMIO_SIZE) };
    AmdVi::new(
        UnitId(0),
        description,
        regs,
        capability,
        &crate::memory::dma::DMA,
        &crate::time::CLOCK,
    )
    .map_err(Absent::BringUp)
}

/// The AMD-Vi DeviceID of a PCI function (segment 0).
pub fn device_id(bdf: Bdf) -> DeviceId {
    DeviceId(u32::from(bdf.requester_id()))
}

/// Prints what the unit is and what its operations cost in commands.
#[allow(dead_code, reason = "the demo calls it once wired in")]
pub fn demo(platform: &Platform) {
    match demo_lines(platform) {
        Ok(lines) => print!("{lines}"),
        Err(why) => println!("amd-vi: {why}"),
    }
}

#[allow(dead_code, reason = "used by `demo`")]
fn demo_lines(platform: &Platform) -> Result<String, String> {
    let unit = unit(platform).map_err(|absent| format!("no unit: {absent:?}"))?;
    let mut unit = unit.lock();
    let mut out = String::new();
    let description = unit.description().clone();
    out += &format!(
        "amd-vi: registers at {:#x}, IOMMU function {}, {} requesters, EFR {:#x}, NpCache {}\n",
        description.mmio_base,
        Bdf::from_requester_id(description.iommu_device_id),
        description.requesters.len(),
        unit.extended_features().0,
        unit.np_cache()
    );
    let event_log = unit
        .probe_event_log()
        .map_err(|err| format!("event-log probe: {err:?}"))?;
    out += &format!(
        "amd-vi: event log {} (probed with an illegal command)\n",
        if event_log {
            "records events"
        } else {
            "never written (QEMU 10.0.2)"
        }
    );
    let edu = crate::devices::edus().next().ok_or("no edu")?;
    let device = device_id(edu.function.bdf);
    let domain = unit
        .alloc_domain(DomainKind::Blocked)
        .map_err(|err| format!("{err:?}"))?;
    let before = unit.counters();
    unit.attach(device, domain)
        .map_err(|err| format!("{err:?}"))?;
    let attach = unit.counters().since(&before);
    let mut gather = Gather::default();
    for page in 0..16u64 {
        gather.add_leaf(0x10_0000 + page * 4096, 4096);
    }
    let before = unit.counters();
    unit.flush(domain, &gather)
        .map_err(|err| format!("{err:?}"))?;
    let flush = unit.counters().since(&before);
    let before = unit.counters();
    unit.detach(device);
    let detach = unit.counters().since(&before);
    unit.free_domain(domain).map_err(|err| format!("{err:?}"))?;
    out += &format!(
        "amd-vi: attach: {} INVALIDATE_DEVTAB_ENTRY + {} COMPLETION_WAIT, {} tail write\n",
        attach.invalidate_devtab_entry, attach.completion_waits, attach.tail_writes
    );
    out += &format!(
        "amd-vi: unmap of 16 aligned pages: {} INVALIDATE_IOMMU_PAGES (S=1) + {} COMPLETION_WAIT, {} tail write, {} MMIO write\n",
        flush.invalidate_iommu_pages, flush.completion_waits, flush.tail_writes, flush.mmio_writes
    );
    out += &format!(
        "amd-vi: detach: {} INVALIDATE_DEVTAB_ENTRY + {} INVALIDATE_IOMMU_PAGES + {} COMPLETION_WAIT, {} tail write\n",
        detach.invalidate_devtab_entry,
        detach.invalidate_iommu_pages,
        detach.completion_waits,
        detach.tail_writes
    );
    Ok(out)
}
