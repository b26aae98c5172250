//! The IOMMU unikernel.
//!
//! Boot order: the `boot` crate's entry code calls `arch::<arch>::kernel_entry`,
//! which brings up the console and exception vectors and hands a [`BootInfo`]
//! to [`kernel_main`]; that sets up memory, discovers the platform (ACPI or
//! device tree) and PCI, then runs the demo or the registered tests according
//! to the command line, and exits QEMU.
#![no_std]
#![no_main]

extern crate alloc;

#[macro_use]
mod console;
mod arch;
mod backtrace;
mod bench;
mod boot_info;
mod cmdline;
mod cpu_activity;
mod demo;
mod device_policy;
mod devices;
mod figures;
mod iommu;
mod iommufd_service;
mod irq;
mod memory;
mod panic;
mod platform;
mod scheduler;
mod syscall;
mod task;
#[macro_use]
mod testing;
mod tests;
mod time;

use boot_info::BootInfo;
use cmdline::Mode;

/// The architecture-independent start of the kernel.
fn kernel_main(boot: BootInfo) -> ! {
    let cmdline = cmdline::Cmdline::parse(boot.cmdline());
    memory::init(&boot);
    arch::user_memory_protection();
    let platform = match platform::discover_once(&boot) {
        Ok(platform) => platform,
        Err(err) => panic!("platform discovery failed: {err}"),
    };
    irq::init(platform);
    // After the interrupt controller: each CPU brings up its own part of it.
    match arch::start_secondary_cpus(platform) {
        Ok(online) if online > 1 => println!(
            "{online} CPUs online, each knows its index by {}, interrupts through the {}",
            arch::cpu_identity_source(),
            arch::interrupt_controller()
        ),
        Ok(_) => {}
        Err(why) => println!("secondary CPUs not started: {why}"),
    }
    devices::init(platform);
    iommufd_service::allow_unsafe_interrupts(cmdline.allow_unsafe_interrupts);
    let defaults = iommufd::Limits::DEFAULT;
    iommufd_service::set_limits(iommufd::Limits {
        objects: cmdline.objects_per_task.unwrap_or(defaults.objects),
        areas: cmdline.areas_per_task.unwrap_or(defaults.areas),
        domains: cmdline.domains_per_task.unwrap_or(defaults.domains),
    });
    memory::dma::set_limit(
        cmdline
            .dma_pages_per_task
            .unwrap_or(memory::dma::DEFAULT_LIMIT_PAGES),
    );
    memory::heap_charges::set_quota(
        cmdline
            .heap_bytes_per_task
            .unwrap_or(memory::heap_charges::DEFAULT_QUOTA),
    );
    if let Some(crash) = cmdline.crash {
        crash_on_purpose(crash);
    }

    let failed = match cmdline.mode {
        Mode::Demo => {
            demo::run(platform)
                + crate::scheduler::demo(cmdline.tasks.unwrap_or(demo::default_tasks(platform)))
        }
        Mode::Test => testing::run_all(tests::ALL, &cmdline, platform),
        Mode::Bench => bench::run_all(platform, cmdline.filter),
        Mode::List => testing::list_all(tests::ALL, &cmdline),
    };
    arch::exit(if failed == 0 {
        arch::ExitCode::Success
    } else {
        arch::ExitCode::Failure
    })
}

/// An address no page table maps on either architecture: above the 4 GiB
/// identity map and below the user region.
const UNMAPPED_ADDRESS: usize = 0x10_0000_0000;

fn crash_on_purpose(crash: cmdline::Crash) -> ! {
    match crash {
        cmdline::Crash::Panic => panic!("deliberate panic requested on the command line"),
        cmdline::Crash::Fault => {
            // SAFETY: not sound, on purpose: the load faults and the exception
            // handler reports it and ends the run.
            let value = unsafe { core::ptr::read_volatile(UNMAPPED_ADDRESS as *const u64) };
            panic!(
                "a load from unmapped {UNMAPPED_ADDRESS:#x} returned {value:#x} instead of faulting"
            )
        }
        cmdline::Crash::UserRead | cmdline::Crash::UserExecute => {
            let mut victim =
                task::Task::spawn("hello", task::kernel_root()).expect("the hello program spawns");
            let data = victim.allocate(1).expect("one page of task memory");
            let code = victim.context.resume_address();
            // SAFETY: the task's root copies the kernel entries of the boot
            // tables, so the kernel keeps running with it installed.
            unsafe { arch::user::switch_root(victim.space.root()) };
            println!("touching user page {data:#x} / code {code:#x} from the kernel");
            if crash == cmdline::Crash::UserRead {
                // SAFETY: not sound, on purpose: the page is mapped for the
                // task, and SMAP / PAN must fault a kernel load from it.
                let value = unsafe { core::ptr::read_volatile(data as *const u64) };
                panic!("a kernel load from user page {data:#x} returned {value:#x}");
            }
            // SAFETY: not sound, on purpose: SMEP / PXN must fault the fetch
            // before any user instruction runs at kernel privilege.
            let jump: extern "C" fn() = unsafe { core::mem::transmute(code as usize) };
            jump();
            panic!("the kernel executed user code at {code:#x}");
        }
    }
}
