//! AMD-Vi: what attach, map, unmap and detach cost in commands, tail writes
//! and MMIO writes.

use alloc::format;
use alloc::string::String;

use ::iommu::{DeviceId, DomainKind, IommuUnit, Prot};
use amdvi::{AmdVi, Counters};
use pci::Bdf;

use crate::iommu::amdvi::{device_id, unit};
use crate::platform::Platform;

/// Prints what the unit is and what its operations cost in commands.
pub fn demo(platform: &Platform) {
    match demo_lines(platform) {
        Ok(lines) => {
            for line in lines.lines() {
                println!("{line}");
            }
        }
        Err(why) => println!("amd-vi: {why}"),
    }
}

/// Attach, map and unmap of 16 aligned pages (no DMA), with what each cost.
pub fn command_figures(
    unit: &mut AmdVi,
    device: DeviceId,
    domain: ::iommu::DomainHandle,
) -> Result<alloc::vec::Vec<(&'static str, Counters)>, String> {
    const IOVA: u64 = 0x10_0000;
    const LEN: u64 = 16 * 4096;
    // Backed by nothing the device will touch: no DMA happens here.
    const PHYS: u64 = 0x100_0000;
    let mut figures = alloc::vec::Vec::new();
    let before = unit.hardware.counters();
    unit.attach(device, domain)
        .map_err(|err| format!("attach: {}", crate::figures::error_words(err)))?;
    figures.push(("attach", unit.hardware.counters().since(&before)));
    let before = unit.hardware.counters();
    let gather = unit
        .map(
            domain,
            IOVA,
            PHYS,
            LEN,
            Prot {
                read: true,
                write: true,
            },
        )
        .map_err(|err| format!("map: {}", crate::figures::error_words(err)))?;
    unit.flush(domain, &gather)
        .map_err(|err| format!("flush: {}", crate::figures::error_words(err)))?;
    figures.push((
        if unit.hardware.np_cache() {
            "map of 16 aligned pages (NpCache: flushed)"
        } else {
            "map of 16 aligned pages (no NpCache: nothing owed)"
        },
        unit.hardware.counters().since(&before),
    ));
    let before = unit.hardware.counters();
    let gather = unit
        .unmap(domain, IOVA, LEN)
        .map_err(|err| format!("unmap: {}", crate::figures::error_words(err)))?;
    unit.flush(domain, &gather)
        .map_err(|err| format!("flush: {}", crate::figures::error_words(err)))?;
    figures.push((
        "unmap of 16 aligned pages",
        unit.hardware.counters().since(&before),
    ));
    let before = unit.hardware.counters();
    unit.detach(device);
    figures.push(("detach", unit.hardware.counters().since(&before)));
    Ok(figures)
}

/// The lines `demo` prints.
pub fn demo_lines(platform: &Platform) -> Result<String, String> {
    let unit = unit(platform).map_err(|_| String::from("no AMD-Vi unit was brought up"))?;
    let mut unit = unit.write();
    let mut out = String::new();
    let description = unit.hardware.description().clone();
    out += &format!(
        "  the unit: registers at {:#x}, its own PCI function {}, {} requesters in the IVHD, EFR {:#x}, NpCache {}\n",
        description.mmio_base,
        Bdf::from_requester_id(description.iommu_device_id),
        description.requesters.len(),
        unit.hardware.extended_features().0,
        if unit.hardware.np_cache() {
            "on (not-present entries may be cached: maps are invalidated too)"
        } else {
            "off"
        }
    );
    let event_log = unit
        .hardware
        .probe_event_log()
        .map_err(|err| format!("event-log probe: {err:?}"))?;
    out += &format!(
        "  the event log: {} (probed with an illegal command)\n",
        if event_log {
            "records events"
        } else {
            "never written (QEMU 10.0.2)"
        }
    );
    out += &crate::figures::walk::lesson(&mut *unit, |unit, domain, iova, visit| {
        unit.walk_mapping(domain, iova, visit)
    })?;
    out += "  what attach, map, unmap and detach cost in commands:\n";
    let edu = crate::devices::edus().next().ok_or("no edu")?;
    let device = device_id(platform, edu.function.bdf).ok_or("the IVRS leaves the edu out")?;
    let domain = unit
        .alloc_domain(DomainKind::Paging)
        .map_err(|err| String::from(crate::figures::error_words(err)))?;
    let figures = command_figures(&mut unit, device, domain);
    unit.detach(device);
    let freed = unit.free_domain(domain);
    let figures = figures?;
    freed.map_err(|err| format!("free_domain: {}", crate::figures::error_words(err)))?;
    for (what, cost) in figures {
        out += &format!(
            "    {what}: {} INVALIDATE_DEVTAB_ENTRY + {} INVALIDATE_IOMMU_PAGES + {} COMPLETION_WAIT = {} commands, {} tail write(s), {} MMIO write(s)\n",
            cost.invalidate_devtab_entry,
            cost.invalidate_iommu_pages,
            cost.completion_waits,
            cost.commands,
            cost.tail_writes,
            cost.mmio_writes
        );
    }
    Ok(out)
}
