//! Tests of the foundation: exceptions, memory, PCI and edu DMA without an IOMMU.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::arch;
use crate::memory::frames;
use crate::platform::Platform;
use crate::testing::{Outcome, Test, TestResult};

pub static TESTS: &[Test] = &[
    Test {
        name: "platform::firmware_lists_the_cpu_we_boot_on",
        run: firmware_lists_the_cpu_we_boot_on,
    },
    Test {
        name: "smp::every_listed_cpu_comes_online",
        run: every_listed_cpu_comes_online,
    },
    Test {
        name: "smp::a_tlb_shootdown_is_answered_by_every_other_cpu",
        run: a_tlb_shootdown_is_answered_by_every_other_cpu,
    },
    Test {
        name: "exceptions::breakpoint_is_caught_and_resumed",
        run: breakpoint_is_caught_and_resumed,
    },
    Test {
        name: "exceptions::undefined_instruction_is_caught_and_resumed",
        run: undefined_instruction_is_caught_and_resumed,
    },
    Test {
        name: "memory::frames_allocate_aligned_zeroed_and_return",
        run: frames_allocate_aligned_zeroed_and_return,
    },
    Test {
        name: "memory::heap_allocates_and_frees",
        run: heap_allocates_and_frees,
    },
    Test {
        name: "memory::every_free_frame_is_reachable_through_the_identity_map",
        run: every_free_frame_is_reachable_through_the_identity_map,
    },
    Test {
        name: "memory::dma_regions_are_aligned_zeroed_and_returned",
        run: dma_regions_are_aligned_zeroed_and_returned,
    },
    Test {
        name: "time::clock_advances",
        run: clock_advances,
    },
    Test {
        name: "pci::enumeration_finds_both_edu_devices",
        run: pci_enumeration_finds_both_edu_devices,
    },
    Test {
        name: "edu::responds_through_its_bar",
        run: edu_responds_through_its_bar,
    },
    Test {
        name: "edu::dma_moves_bytes_both_ways_at_physical_addresses",
        run: edu_dma_moves_bytes_both_ways_at_physical_addresses,
    },
    Test {
        name: "edu::refuses_transfers_larger_than_its_buffer",
        run: edu_refuses_transfers_larger_than_its_buffer,
    },
    Test {
        name: "irq::edu_msi_is_delivered",
        run: edu_msi_is_delivered,
    },
];

fn breakpoint_is_caught_and_resumed(_: &Platform) -> TestResult {
    let before = arch::breakpoints_seen();
    arch::breakpoint();
    ensure_eq!(arch::breakpoints_seen(), before + 1, "breakpoints seen");
    Ok(Outcome::Passed)
}

fn undefined_instruction_is_caught_and_resumed(_: &Platform) -> TestResult {
    let before = arch::undefined_instructions_seen();
    arch::undefined_instruction();
    ensure_eq!(
        arch::undefined_instructions_seen(),
        before + 1,
        "undefined instructions seen"
    );
    Ok(Outcome::Passed)
}

fn frames_allocate_aligned_zeroed_and_return(_: &Platform) -> TestResult {
    let free_before = frames::free_count();
    let align = 64 * 1024;
    let run = frames::alloc_contiguous(16, align).ok_or("no 16 contiguous frames")?;
    ensure!(
        run.phys % align as u64 == 0,
        "run at {:#x} not 64 KiB aligned",
        run.phys
    );
    ensure_eq!(
        frames::free_count(),
        free_before - 16,
        "free frames after alloc"
    );
    // SAFETY: the run was just allocated to this test and is identity-mapped.
    let bytes = unsafe { core::slice::from_raw_parts_mut(run.as_mut_ptr(), run.len()) };
    ensure!(
        bytes.iter().all(|&b| b == 0),
        "allocated frames are not zeroed"
    );
    bytes.fill(0xA5);
    let other = frames::alloc().ok_or("no single frame")?;
    ensure!(
        other.phys + 4096 <= run.phys || other.phys >= run.phys + run.len() as u64,
        "frame {:#x} overlaps the run",
        other.phys
    );
    frames::free(other);
    frames::free(run);
    ensure_eq!(frames::free_count(), free_before, "free frames after free");
    Ok(Outcome::Passed)
}

fn heap_allocates_and_frees(_: &Platform) -> TestResult {
    let used_before = crate::memory::heap_used();
    let numbers: Vec<u64> = (0..10_000).collect();
    let boxed = Box::new([7u8; 4096]);
    ensure_eq!(numbers.iter().sum::<u64>(), 49_995_000, "sum of 0..10000");
    ensure!(boxed.iter().all(|&b| b == 7), "boxed array corrupted");
    ensure!(
        crate::memory::heap_used() > used_before,
        "heap usage did not grow"
    );
    drop(numbers);
    drop(boxed);
    ensure_eq!(
        crate::memory::heap_used(),
        used_before,
        "heap bytes in use after drop"
    );
    Ok(Outcome::Passed)
}

fn dma_regions_are_aligned_zeroed_and_returned(_: &Platform) -> TestResult {
    use os_services::DmaMemory;
    let dma = &crate::memory::dma::DMA;
    let free_before = frames::free_count();
    let region = dma.alloc(3 * 4096 + 1, 16 * 1024).ok_or("no DMA memory")?;
    ensure_eq!(region.len, 4 * 4096, "length rounded up to whole frames");
    ensure!(
        region.phys % (16 * 1024) == 0,
        "region at {:#x} not 16 KiB aligned",
        region.phys
    );
    ensure_eq!(
        dma.phys_to_virt(region.phys),
        region.virt,
        "phys_to_virt of the region"
    );
    // SAFETY: the region was just allocated to this test.
    let bytes = unsafe { core::slice::from_raw_parts(region.virt, region.len) };
    ensure!(bytes.iter().all(|&b| b == 0), "DMA region not zeroed");
    ensure_eq!(frames::free_count(), free_before - 4, "frames taken");
    dma.free(region);
    ensure_eq!(frames::free_count(), free_before, "frames after free");
    Ok(Outcome::Passed)
}

fn every_free_frame_is_reachable_through_the_identity_map(_: &Platform) -> TestResult {
    let highest = frames::highest_free().ok_or("no free frame at all")?;
    ensure!(
        highest + frames::FRAME_SIZE as u64 <= frames::MANAGED_LIMIT,
        "free frame at {highest:#x} lies beyond the identity map ({:#x})",
        frames::MANAGED_LIMIT
    );
    // Reading it proves the map covers it (a fault would end the run).
    // SAFETY: a volatile read of free RAM inside the identity map has no effect.
    let _ = unsafe { core::ptr::read_volatile(highest as *const u64) };
    Ok(Outcome::Passed)
}

fn clock_advances(_: &Platform) -> TestResult {
    let start = arch::now_ns();
    let mut spins = 0u64;
    while arch::now_ns() - start < 1_000_000 && spins < 1_000_000_000 {
        spins += 1;
    }
    ensure!(
        arch::now_ns() - start >= 1_000_000,
        "clock did not advance 1 ms in {spins} reads"
    );
    Ok(Outcome::Passed)
}

/// Bytes moved per DMA test: a whole device buffer.
const DMA_LEN: usize = edu::BUFFER_SIZE;

fn pattern(seed: u8) -> impl Iterator<Item = u8> {
    (0..DMA_LEN).map(move |i| (i as u8).wrapping_mul(31).wrapping_add(seed))
}

/// Every configuration puts two edus on bus 0 (the bridge configurations
/// two more behind a bridge); each has its 1 MiB BAR0.
fn pci_enumeration_finds_both_edu_devices(_: &Platform) -> TestResult {
    let all: Vec<_> = crate::devices::edus().collect();
    let edus: Vec<_> = all.iter().filter(|edu| edu.function.bdf.bus == 0).collect();
    ensure_eq!(edus.len(), 2, "edu functions found on bus 0");
    for device in &all {
        ensure!(
            device.bars.iter().any(|bar| bar.index() == 0
                && matches!(bar, pci::Bar::Memory { size, .. } if *size == edu::BAR0_SIZE as u64)),
            "edu {} has no 1 MiB BAR0: {:?}",
            device.function.bdf,
            device.bars
        );
    }
    ensure!(
        edus[0].function.bdf != edus[1].function.bdf,
        "the same function was listed twice"
    );
    Ok(Outcome::Passed)
}

fn edu_responds_through_its_bar(platform: &Platform) -> TestResult {
    for device in crate::devices::edus() {
        let edu =
            crate::devices::open_edu(platform, device).map_err(|err| alloc::format!("{err}"))?;
        ensure!(
            edu.is_alive(0x1234_5678),
            "edu {} liveness register does not invert",
            device.function.bdf
        );
    }
    Ok(Outcome::Passed)
}

/// RAM -> edu buffer -> other RAM at physical addresses, on every edu.
fn edu_dma_moves_bytes_both_ways_at_physical_addresses(platform: &Platform) -> TestResult {
    let free_before = frames::free_count();
    for (index, device) in crate::devices::edus().enumerate() {
        let edu =
            crate::devices::open_edu(platform, device).map_err(|err| alloc::format!("{err}"))?;
        let source = frames::alloc().ok_or("no frame")?;
        let destination = frames::alloc().ok_or("no frame")?;
        // SAFETY: both frames are owned by this test and identity-mapped.
        let (src, dst) = unsafe {
            (
                core::slice::from_raw_parts_mut(source.as_mut_ptr(), DMA_LEN),
                core::slice::from_raw_parts_mut(destination.as_mut_ptr(), DMA_LEN),
            )
        };
        for (byte, value) in src.iter_mut().zip(pattern(index as u8)) {
            *byte = value;
        }
        edu.dma(edu::Direction::ToDevice, source.phys, 0, DMA_LEN)
            .map_err(|err| alloc::format!("to device: {err:?}"))?;
        edu.dma(edu::Direction::ToRam, destination.phys, 0, DMA_LEN)
            .map_err(|err| alloc::format!("to RAM: {err:?}"))?;
        // SAFETY: a volatile read: the device wrote this memory behind the compiler's back.
        let landed = (0..DMA_LEN)
            .all(|i| unsafe { core::ptr::read_volatile(dst.as_ptr().add(i)) } == src[i]);
        frames::free(source);
        frames::free(destination);
        ensure!(
            landed,
            "edu {}: bytes read back differ from bytes written",
            device.function.bdf
        );
    }
    ensure_eq!(
        frames::free_count(),
        free_before,
        "free frames after the test"
    );
    Ok(Outcome::Passed)
}

fn edu_refuses_transfers_larger_than_its_buffer(platform: &Platform) -> TestResult {
    let device = crate::devices::edus().next().ok_or("no edu")?;
    let edu = crate::devices::open_edu(platform, device).map_err(|err| alloc::format!("{err}"))?;
    let frame = frames::alloc().ok_or("no frame")?;
    let result = edu.dma(edu::Direction::ToRam, frame.phys, 0, edu::BUFFER_SIZE + 1);
    frames::free(frame);
    ensure_eq!(
        result,
        Err(edu::EduError::OutsideBuffer {
            offset: 0,
            len: edu::BUFFER_SIZE + 1
        }),
        "oversized transfer"
    );
    ensure!(!edu.is_busy(), "the refused transfer started the engine");
    Ok(Outcome::Passed)
}

fn note_interrupt() {}

/// An MSI from an edu device reaches the kernel's handler (no IOMMU in the
/// interrupt path yet: compatibility format on x86, GICv2m or the ITS on
/// aarch64).
fn edu_msi_is_delivered(platform: &Platform) -> TestResult {
    let device = crate::devices::edus().next().ok_or("no edu")?;
    let edu = crate::devices::open_edu(platform, device).map_err(|err| alloc::format!("{err}"))?;
    let config = &platform.pci.ecam;
    let msi = pci::Msi::find(config, device.function.bdf).ok_or("edu has no MSI capability")?;

    #[cfg(target_arch = "x86_64")]
    let (irq, (address, data)) = {
        let vector = crate::irq::alloc_vector(note_interrupt).ok_or("no free vector")?;
        (u32::from(vector), crate::irq::msi_message(vector))
    };
    #[cfg(target_arch = "aarch64")]
    let (irq, (address, data)) = {
        let Some((intid, message)) =
            crate::irq::alloc_device_msi(note_interrupt, device.function.bdf.requester_id())
        else {
            return Ok(Outcome::NotApplicable(
                "no GICv2m MSI frame or ITS to signal through",
            ));
        };
        (intid, (message.address, message.data))
    };

    let seen = crate::irq::count(irq);
    msi.enable(config, address, data as u16);
    edu.raise_interrupt(1);
    let delivered = crate::irq::wait_for(irq, seen, core::time::Duration::from_secs(1));
    edu.acknowledge_interrupt(1);
    msi.disable(config);
    crate::irq::free(irq);
    ensure!(
        delivered,
        "no MSI on irq {irq} (message {address:#x}/{data:#x})"
    );
    ensure_eq!(crate::irq::count(irq), seen + 1, "deliveries");
    Ok(Outcome::Passed)
}

/// Issue 20's first step, finding the CPUs: the firmware's CPU list (x86:
/// the MADT's enabled local APICs; aarch64: the device tree's `/cpus`) is not
/// empty and holds the CPU the kernel runs on (x86: the initial APIC ID of
/// CPUID leaf 1; aarch64: MPIDR_EL1's affinity fields).
/// Every CPU the firmware lists was started at boot and runs kernel code
/// (aarch64: PSCI CPU_ON; x86: INIT-SIPI-SIPI through the real-mode
/// trampoline; each CPU then online with its own stack, vectors and
/// per-CPU index).
fn every_listed_cpu_comes_online(platform: &Platform) -> TestResult {
    let ids = crate::platform::cpu_ids(platform);
    println!("    smp: the firmware lists CPUs {ids:?}");
    let listed = ids.len().min(crate::arch::MAX_CPUS);
    ensure!(
        crate::arch::current_cpu_index() == 0,
        "the tests run on CPU {}, not the boot CPU 0",
        crate::arch::current_cpu_index()
    );
    let online = crate::arch::online_cpus();
    ensure!(
        online == listed,
        "{online} of the {listed} listed CPUs are online"
    );
    Ok(Outcome::Passed)
}

/// x86 TLBs are per CPU: a shootdown interrupts every other CPU, each of
/// which flushes and answers before `flush_tlb_all_cpus` returns (aarch64
/// broadcasts the invalidation in hardware and the DSB waits for it: no
/// answer to count there).
fn a_tlb_shootdown_is_answered_by_every_other_cpu(_: &Platform) -> TestResult {
    #[cfg(target_arch = "x86_64")]
    {
        let online = arch::online_cpus();
        if online < 2 {
            return Ok(Outcome::NotApplicable("one CPU online"));
        }
        let before: Vec<u64> = (0..online).map(arch::shootdowns_done).collect();
        if let Err(cpu) = arch::flush_tlb_all_cpus() {
            return Err(alloc::format!("CPU {cpu} did not answer the shootdown"));
        }
        for (cpu, &done) in before.iter().enumerate().skip(1) {
            ensure!(
                arch::shootdowns_done(cpu) > done,
                "CPU {cpu} did not flush (done {done} before and after)"
            );
        }
        ensure_eq!(
            arch::shootdowns_done(0),
            before[0],
            "the requesting CPU interrupted itself"
        );
        Ok(Outcome::Passed)
    }
    #[cfg(target_arch = "aarch64")]
    {
        ensure!(
            arch::flush_tlb_all_cpus().is_ok(),
            "the broadcast TLBI reported a failure"
        );
        Ok(Outcome::NotApplicable(
            "aarch64 broadcasts TLB invalidation in hardware (TLBI VMALLE1IS): no IPI to answer",
        ))
    }
}

fn firmware_lists_the_cpu_we_boot_on(platform: &Platform) -> TestResult {
    let listed = crate::platform::cpu_ids(platform);
    ensure!(!listed.is_empty(), "the firmware lists no CPU");
    let own = crate::arch::boot_cpu_id();
    ensure!(
        listed.contains(&own),
        "the boot CPU {own:#x} is not among the firmware's {listed:x?}"
    );
    Ok(Outcome::Passed)
}
