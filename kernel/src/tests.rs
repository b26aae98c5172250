//! The registry of in-kernel tests, one group per subsystem. A group that
//! does not apply to this machine returns `NotApplicable` from its tests
//! (e.g. the VT-d tests on a machine without VT-d), never "ok".

#[cfg(target_arch = "x86_64")]
mod amdvi;
mod contract;
mod dma_matrix;
mod foundation;
mod iommufd_devices;
mod iommufd_syscalls;
mod isolation;
mod ownership;
#[cfg(target_arch = "x86_64")]
mod robust_amdvi;
#[cfg(target_arch = "aarch64")]
mod robust_smmuv3;
mod robust_syscalls;
#[cfg(target_arch = "x86_64")]
mod robust_vtd;
mod robustness;
#[cfg(target_arch = "aarch64")]
mod smmuv3;
mod survival;
mod tasks;
mod unit_probe;
#[cfg(target_arch = "x86_64")]
mod vtd;

use alloc::string::String;
use alloc::vec::Vec;

use crate::task::{self, Output, Run, Task};
use crate::testing::Test;

/// Loads program `name` with `argument` in its first-argument register.
fn spawn_program(name: &str, argument: u64) -> Result<Task, String> {
    let mut program = Task::spawn(name, task::kernel_root())
        .map_err(|err| alloc::format!("spawn {name}: {err:?}"))?;
    program.set_argument(argument);
    Ok(program)
}

/// Loads the `hostile` program with `attack` aimed at the `index`-th edu an
/// IOMMU translates (its argument: attack in bits 63:56, index in 55:48).
fn spawn_hostile(attack: u64, index: u64) -> Result<Task, String> {
    spawn_program("hostile", attack << 56 | index << 48)
}

/// Runs spawned tasks together to the end with the default limits, their
/// output captured for the test to check.
fn run_captured(tasks: Vec<Task>) -> Run {
    run_captured_with(tasks, crate::scheduler::Limits::DEFAULT)
}

/// Runs spawned tasks together on this CPU alone, in spawn order: for tests
/// whose tasks must take their first turns in that order (a holder before
/// its contender), which several CPUs would not keep.
fn run_captured_on_one_cpu(tasks: Vec<Task>) -> Run {
    run_captured_with(
        tasks,
        crate::scheduler::Limits {
            cpus: 1,
            ..crate::scheduler::Limits::DEFAULT
        },
    )
}

/// Runs spawned tasks together to the end with `limits`, their output
/// captured for the test to check.
fn run_captured_with(tasks: Vec<Task>, limits: crate::scheduler::Limits) -> Run {
    crate::scheduler::run_tasks(
        tasks.into_iter().map(Some).collect(),
        Output::Capture,
        task::kernel_root(),
        limits,
    )
}

/// The exit code of the user programs that drive an edu (`edu-dma`,
/// `hostile`, `isolation`) when no edu sits behind an IOMMU.
const NO_DEVICE: i32 = abi::NO_DEVICE_EXIT_CODE;

/// Most heap bytes a gone task's account may still hold (see
/// `memory::heap_charges::reparent`).
const MAX_HEAP_LEFT_PER_TASK: usize = 4096;

/// What every test checks after its tasks are gone.
struct Baseline {
    frames: usize,
    reparented: usize,
    pinned: u64,
    handlers: usize,
}

impl Baseline {
    fn now() -> Self {
        // The scheduler's timer takes its interrupt on first use, for good.
        crate::scheduler::preemption_available();
        Baseline {
            frames: free_frames(),
            reparented: crate::memory::heap_charges::reparented(),
            pinned: crate::iommufd_service::pinned_bytes(),
            handlers: crate::irq::handlers_in_use(),
        }
    }

    fn check(&self, owners: &[u64]) -> Result<(), String> {
        for &owner in owners {
            ensure_eq!(
                crate::iommufd_service::object_count(owner),
                0,
                "objects left"
            );
            ensure_eq!(
                crate::iommufd_service::open_devices(owner),
                0,
                "open devices left"
            );
            ensure_eq!(
                crate::memory::heap_charges::charged(owner),
                0,
                "heap bytes still charged"
            );
            ensure_eq!(
                crate::memory::dma::charged_pages(owner),
                0,
                "IO page-table and device-structure pages still charged"
            );
        }
        // What a task's calls leave in kernel structures after its objects
        // went is a few nodes' room, not something per object.
        let reparented = crate::memory::heap_charges::reparented() - self.reparented;
        ensure!(
            reparented <= owners.len() * MAX_HEAP_LEFT_PER_TASK,
            "{reparented} heap bytes left charged by {} tasks",
            owners.len()
        );
        ensure_eq!(
            crate::iommufd_service::pinned_bytes(),
            self.pinned,
            "pinned bytes"
        );
        ensure_eq!(crate::irq::handlers_in_use(), self.handlers, "handlers");
        ensure_eq!(free_frames(), self.frames, "free frames");
        Ok(())
    }
}

/// Free frames, counting those of the heap's grown arenas as free: the heap
/// may grow during a test and keep an arena that a long-lived kernel
/// allocation landed in; the heap's own leak checks are the charges.
fn free_frames() -> usize {
    crate::memory::frames::free_count() + crate::memory::heap_charges::grown_frames()
}

/// Checks that `device` is blocked, not in bypass: its DMA to a kernel page
/// (IOVA = the page's physical address) changes nothing. The page is freed
/// again whatever happens.
fn dma_to_a_kernel_page_is_blocked(
    platform: &crate::platform::Platform,
    device: &crate::devices::PciDevice,
) -> Result<(), String> {
    const FILL: u8 = 0x3C;
    let page = crate::memory::frames::alloc().ok_or("no frame")?;
    let result = (|| -> Result<(), String> {
        // SAFETY: a fresh frame owned by this check, identity-mapped.
        unsafe { core::ptr::write_bytes(page.as_mut_ptr(), FILL, page.len()) };
        let edu = crate::devices::open_edu(platform, device)
            .map_err(|err| alloc::format!("open edu: {err:?}"))?;
        edu.dma(edu::Direction::ToRam, page.phys, 0, page.len())
            .map_err(|err| alloc::format!("edu DMA: {err:?}"))?;
        // SAFETY: as above; the device may have written it.
        let bytes = unsafe { core::slice::from_raw_parts(page.as_mut_ptr(), page.len()) };
        ensure!(
            bytes.iter().all(|&b| b == FILL),
            "{}, which should be blocked, wrote kernel memory",
            device.function.bdf
        );
        Ok(())
    })();
    crate::memory::frames::free(page);
    result
}

/// Every test group, in the order they run. `#[used]` keeps the registry
/// (and its symbol) in the ELF even where the optimizer folds its uses, so
/// that the host can list the tests without booting
/// (`qemu_tests::static_tests`).
#[used]
pub static ALL: &[&[Test]] = &[
    foundation::TESTS,
    #[cfg(target_arch = "aarch64")]
    smmuv3::TESTS,
    #[cfg(target_arch = "aarch64")]
    robust_smmuv3::TESTS,
    #[cfg(target_arch = "x86_64")]
    vtd::TESTS,
    #[cfg(target_arch = "x86_64")]
    vtd::PAGING_TESTS,
    #[cfg(target_arch = "x86_64")]
    robust_vtd::TESTS,
    #[cfg(target_arch = "x86_64")]
    amdvi::TESTS,
    #[cfg(target_arch = "x86_64")]
    robust_amdvi::TESTS,
    contract::TESTS,
    dma_matrix::TESTS,
    robustness::TESTS,
    tasks::TESTS,
    robust_syscalls::TESTS,
    iommufd_syscalls::TESTS,
    iommufd_devices::TESTS,
    isolation::TESTS,
    ownership::TESTS,
    survival::TESTS,
];
