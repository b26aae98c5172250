//! The demo `cargo xtask run` shows, as a lesson in four steps: what the
//! kernel found; a DMA without an IOMMU; the IOMMU itself (what it is, a
//! mapping as its walk sees it, what map and unmap cost); then a user task
//! driving an edu through the iommufd calls (the scheduler runs it).

use crate::memory::frames;
use crate::platform::Platform;

/// Runs the demo; returns the number of steps that failed.
pub fn run(platform: &Platform) -> usize {
    println!("== IOMMU unikernel on {} ==", crate::arch::ARCH_NAME);
    println!("1. What the kernel found");
    println!("platform: {}", platform.summary());
    let protection = crate::arch::user_memory_protection();
    let on_off = |on: bool| if on { "on" } else { "OFF (CPU lacks it)" };
    println!(
        "kernel cannot execute user pages: {}; cannot access them: {}",
        on_off(protection.no_execute),
        on_off(protection.no_access)
    );
    println!(
        "free memory: {} MiB",
        (frames::free_count() * frames::FRAME_SIZE) >> 20
    );
    println!("PCI functions:");
    for device in crate::devices::all() {
        let function = &device.function;
        println!(
            "  {}  {:04x}:{:04x}  class {:06x}  {} BAR(s)",
            function.bdf,
            function.vendor_id,
            function.device_id,
            function.class,
            device.bars.len()
        );
    }
    println!(
        "2. Without an IOMMU: each edu device copies 4 KiB from RAM into itself and back, at physical addresses"
    );
    let mut failed = 0;
    for device in crate::devices::edus() {
        match edu_round_trip(platform, device) {
            Ok(()) => println!(
                "edu {}: 4096 bytes RAM -> device -> RAM at physical addresses: identical",
                device.function.bdf
            ),
            Err(why) => {
                failed += 1;
                println!("edu {}: DMA round trip FAILED: {why}", device.function.bdf);
            }
        }
    }
    // Last: bringing an IOMMU up blocks every device that is not attached,
    // so the physical-address round trips above must come first.
    iommu_demos(platform);
    if !default_tasks(platform).is_empty() {
        println!(
            "4. A user task drives an edu through the iommufd calls: it opens the device, maps its own memory into an IOAS, DMAs through IOVAs, unmaps, and reads the fault a DMA to the old IOVA raised (its own lines follow, after the kernel's)"
        );
    }
    println!("== demo done ==");
    failed
}

fn edu_round_trip(
    platform: &Platform,
    device: &crate::devices::PciDevice,
) -> Result<(), alloc::string::String> {
    let edu = crate::devices::open_edu(platform, device).map_err(|err| alloc::format!("{err}"))?;
    let source = frames::alloc().ok_or("out of frames")?;
    let destination = frames::alloc().ok_or("out of frames")?;
    // SAFETY: both frames belong to this function and are identity-mapped.
    let (src, dst) = unsafe {
        (
            core::slice::from_raw_parts_mut(source.as_mut_ptr(), edu::BUFFER_SIZE),
            core::slice::from_raw_parts_mut(destination.as_mut_ptr(), edu::BUFFER_SIZE),
        )
    };
    for (index, byte) in src.iter_mut().enumerate() {
        *byte = (index % 251) as u8;
    }
    let result = edu
        .dma(edu::Direction::ToDevice, source.phys, 0, edu::BUFFER_SIZE)
        .and_then(|()| edu.dma(edu::Direction::ToRam, destination.phys, 0, edu::BUFFER_SIZE))
        .map_err(|err| alloc::format!("{err}"))
        // SAFETY: volatile reads of memory the device wrote.
        .and_then(|()| {
            let same = (0..edu::BUFFER_SIZE)
                .all(|i| unsafe { core::ptr::read_volatile(&dst[i]) } == src[i]);
            if same {
                Ok(())
            } else {
                Err("bytes differ".into())
            }
        });
    frames::free(source);
    frames::free(destination);
    result
}

/// Each IOMMU driver's demo: what the unit is and what map and unmap cost.
fn iommu_demos(platform: &Platform) {
    match &platform.firmware {
        #[cfg(target_arch = "x86_64")]
        crate::platform::Firmware::Acpi(info) => {
            if info.dmar.is_some() {
                println!("3. The IOMMU: Intel VT-d");
                crate::figures::vtd::demo(platform);
            }
            if info.ivrs.is_some() {
                println!("3. The IOMMU: AMD-Vi");
                crate::figures::amdvi::demo(platform);
            }
        }
        #[cfg(target_arch = "aarch64")]
        crate::platform::Firmware::DeviceTree(tree) => {
            if !tree.smmus.is_empty() {
                println!("3. The IOMMU: ARM SMMUv3");
                crate::figures::smmuv3::demo(platform);
            }
        }
    }
}

/// The user programs the demo runs when the command line names none: the
/// user-space edu driver wherever an IOMMU can translate for it.
pub fn default_tasks(platform: &Platform) -> &'static str {
    let has_iommu = match &platform.firmware {
        #[cfg(target_arch = "x86_64")]
        crate::platform::Firmware::Acpi(info) => info.dmar.is_some() || info.ivrs.is_some(),
        #[cfg(target_arch = "aarch64")]
        crate::platform::Firmware::DeviceTree(tree) => !tree.smmus.is_empty(),
    };
    if has_iommu { "edu-dma" } else { "" }
}
