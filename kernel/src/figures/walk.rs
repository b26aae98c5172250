//! A mapping as the hardware sees it: one page mapped in a scratch paging
//! domain, then the walk the IOMMU does for an address in it, level by
//! level, with every entry's bits decoded. The demo's lesson on page
//! tables, the same on every IOMMU (each driver's `walk_mapping`).

use alloc::string::String;
use core::fmt::Write;

use io_page_table::{StepKind, WalkStep};

/// The IOVA the demo maps, chosen so that every level's index differs from
/// zero somewhere: 1 GiB + 2 MiB + 4 KiB + a byte offset.
pub const DEMO_IOVA: u64 = 0x4020_1000;
/// The byte of the page the demo asks about.
pub const DEMO_OFFSET: u64 = 0x234;

/// `walk` (a driver's `walk_mapping` for the demo domain) printed as lines:
/// for each level the table read, the entry's index and raw value, the bits
/// set by name, and where it leads; then the translation it ends in.
pub fn describe(walk: impl FnOnce(&mut dyn FnMut(&WalkStep)) -> bool) -> String {
    let iova = DEMO_IOVA + DEMO_OFFSET;
    let mut out = String::new();
    let mut end = None;
    let shown = walk(&mut |step| {
        let set: alloc::vec::Vec<&str> = step
            .bits
            .iter()
            .filter(|(_, mask)| step.entry & mask != 0)
            .map(|(name, _)| *name)
            .collect();
        let leads = match step.kind {
            StepKind::Table { next } => alloc::format!("-> the next table, at {next:#x}"),
            StepKind::Leaf { phys, size } => {
                end = Some(phys + (iova & (size - 1)));
                alloc::format!("-> a {} page at {phys:#x}", size_words(size))
            }
            StepKind::Empty => {
                alloc::string::String::from("-> nothing: the device's access faults")
            }
        };
        let _ = writeln!(
            out,
            "    level {}: table {:#x}, entry {:>3} = {:#018x}  [{}]  {leads}",
            step.level,
            step.table,
            step.index,
            step.entry,
            set.join(" ")
        );
    });
    if !shown {
        out.push_str("    (this domain has no table to walk)\n");
    }
    match end {
        Some(phys) => {
            let _ = writeln!(
                out,
                "    so a device's IOVA {iova:#x} reaches physical {phys:#x}"
            );
        }
        None => {
            let _ = writeln!(out, "    so a device's IOVA {iova:#x} reaches nothing");
        }
    }
    out
}

fn size_words(size: u64) -> String {
    match size {
        s if s >= 1 << 30 => alloc::format!("{} GiB", s >> 30),
        s if s >= 1 << 20 => alloc::format!("{} MiB", s >> 20),
        s => alloc::format!("{} KiB", s >> 10),
    }
}

/// Maps one page of RAM at [`DEMO_IOVA`] in a scratch paging domain of
/// `unit`, describes the hardware's walk to it (`walk`: the driver's
/// `walk_mapping`), and takes everything down again (unmap, flush, free).
pub fn lesson<U: iommu::IommuUnit>(
    unit: &mut U,
    walk: impl Fn(&U, iommu::DomainHandle, u64, &mut dyn FnMut(&WalkStep)) -> bool,
) -> Result<String, String> {
    let domain = unit
        .alloc_domain(iommu::DomainKind::Paging)
        .map_err(|err| alloc::format!("no paging domain: {}", crate::figures::error_words(err)))?;
    let frame = crate::memory::frames::alloc().ok_or("no free page")?;
    let prot = iommu::Prot {
        read: true,
        write: true,
    };
    let described = unit
        .map(domain, DEMO_IOVA, frame.phys, 4096, prot)
        .and_then(|gather| unit.flush(domain, &gather))
        .map(|()| describe(|visit| walk(unit, domain, DEMO_IOVA + DEMO_OFFSET, visit)));
    let taken_down = unit
        .unmap(domain, DEMO_IOVA, 4096)
        .and_then(|gather| unit.flush(domain, &gather));
    let freed = unit.free_domain(domain);
    // The page goes back only once no IOTLB can hold it.
    if taken_down.is_ok() && freed.is_ok() {
        crate::memory::frames::free(frame);
    }
    let text =
        described.map_err(|err| alloc::format!("map: {}", crate::figures::error_words(err)))?;
    taken_down.map_err(|err| alloc::format!("unmap: {}", crate::figures::error_words(err)))?;
    freed.map_err(|err| alloc::format!("free: {}", crate::figures::error_words(err)))?;
    Ok(alloc::format!(
        "  a mapping as the hardware sees it: one 4 KiB page of RAM at IOVA {DEMO_IOVA:#x}, and the walk the IOMMU does for a byte in it:\n{text}"
    ))
}

/// What a test of the lesson checks: a walk of at least two levels, each
/// line a table read, ending in the 4 KiB page at the byte asked about.
pub fn check(text: &str) -> Result<(), String> {
    let levels = text
        .lines()
        .filter(|line| line.trim_start().starts_with("level "))
        .count();
    let reached = alloc::format!("IOVA {:#x} reaches physical 0x", DEMO_IOVA + DEMO_OFFSET);
    let ends_in_the_page = text.contains("-> a 4 KiB page at")
        && text
            .lines()
            .find(|line| line.contains(&reached))
            .is_some_and(|line| {
                line.trim_end()
                    .ends_with(&alloc::format!("{DEMO_OFFSET:x}"))
            });
    if levels >= 2 && ends_in_the_page {
        Ok(())
    } else {
        Err(alloc::format!(
            "the walk does not end in the mapped page:\n{text}"
        ))
    }
}
