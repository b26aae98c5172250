//! Tests of the foundation: exceptions, memory, PCI and edu DMA without an IOMMU.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::arch;
use crate::memory::frames;
use crate::platform::Platform;
use crate::testing::{Outcome, Test, TestResult};

pub static TESTS: &[Test] = &[
    Test { name: "exceptions::breakpoint_is_caught_and_resumed", run: breakpoint_is_caught_and_resumed },
    Test { name: "exceptions::undefined_instruction_is_caught_and_resumed", run: undefined_instruction_is_caught_and_resumed },
    Test { name: "memory::frames_allocate_aligned_zeroed_and_return", run: frames_allocate_aligned_zeroed_and_return },
    Test { name: "memory::heap_allocates_and_frees", run: heap_allocates_and_frees },
    Test { name: "time::clock_advances", run: clock_advances },
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
    ensure_eq!(arch::undefined_instructions_seen(), before + 1, "undefined instructions seen");
    Ok(Outcome::Passed)
}

fn frames_allocate_aligned_zeroed_and_return(_: &Platform) -> TestResult {
    let free_before = frames::free_count();
    let align = 64 * 1024;
    let run = frames::alloc_contiguous(16, align).ok_or("no 16 contiguous frames")?;
    ensure!(run.phys % align as u64 == 0, "run at {:#x} not 64 KiB aligned", run.phys);
    ensure_eq!(frames::free_count(), free_before - 16, "free frames after alloc");
    // SAFETY: the run was just allocated to this test and is identity-mapped.
    let bytes = unsafe { core::slice::from_raw_parts_mut(run.as_mut_ptr(), run.len()) };
    ensure!(bytes.iter().all(|&b| b == 0), "allocated frames are not zeroed");
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
    ensure!(crate::memory::heap_used() > used_before, "heap usage did not grow");
    drop(numbers);
    drop(boxed);
    ensure_eq!(crate::memory::heap_used(), used_before, "heap bytes in use after drop");
    Ok(Outcome::Passed)
}

fn clock_advances(_: &Platform) -> TestResult {
    let start = arch::now_ns();
    let mut spins = 0u64;
    while arch::now_ns() - start < 1_000_000 && spins < 1_000_000_000 {
        spins += 1;
    }
    ensure!(arch::now_ns() - start >= 1_000_000, "clock did not advance 1 ms in {spins} reads");
    Ok(Outcome::Passed)
}
