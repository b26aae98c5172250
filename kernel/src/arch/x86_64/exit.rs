//! Leaving QEMU with a meaningful status.
//!
//! Status 0 is only reachable through ACPI S5 (soft-off): writing SLP_TYP|SLP_EN
//! to PM1a_CNT. isa-debug-exit turns a written value v into status (v << 1) | 1,
//! which is always odd and non-zero: right for failures (docs/QEMU.md §5).

use core::sync::atomic::Ordering;

use x86_64::instructions::port::Port;

use super::PM1A_CONTROL_PORT;
use crate::arch::ExitCode;

/// The `isa-debug-exit` device's port (`-device isa-debug-exit,iobase=0xf4,iosize=4`).
const DEBUG_EXIT_PORT: u16 = 0xF4;
/// ACPI 6.5 §4.8.3.2.1 PM1 Control Registers: SLP_EN starts the sleep; SLP_TYP
/// for S5 is 0 in QEMU's DSDT `\_S5` package.
const PM1_CNT_SLP_EN: u16 = 1 << 13;
const SLP_TYP_S5: u16 = 0;
const SLP_TYP_SHIFT: u16 = 10;

pub fn exit(code: ExitCode) -> ! {
    // SAFETY: port writes to QEMU's power-management and debug-exit devices;
    // both only end the VM.
    unsafe {
        match code {
            ExitCode::Success => {
                Port::<u16>::new(PM1A_CONTROL_PORT.load(Ordering::Relaxed))
                    .write((SLP_TYP_S5 << SLP_TYP_SHIFT) | PM1_CNT_SLP_EN);
            }
            // Exit statuses 3 (failure) and 5 (panic).
            ExitCode::Failure => Port::<u32>::new(DEBUG_EXIT_PORT).write(1),
            ExitCode::Panic => Port::<u32>::new(DEBUG_EXIT_PORT).write(2),
        }
    }
    // Without the exit device the VM stays up; the host's timeout ends it.
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
