//! Privileged Access Never (ARM ARM D8.4.2 / FEAT_PAN): with PSTATE.PAN set,
//! an EL1 data access to a page EL0 can access is a permission fault. Every
//! user mapping also carries PXN (see `user`), so the kernel cannot execute
//! user pages either.

use core::arch::asm;

use aarch64_cpu::registers::{ID_AA64MMFR1_EL1, Readable};

use crate::arch::UserMemoryProtection;

/// PSTATE.PAN as the `PAN` special register holds it (ARM ARM C5.2.12).
const PAN_BIT: u64 = 1 << 22;
/// SCTLR_EL1.SPAN (ARM ARM D19.2.118): while 0, taking an exception to EL1
/// sets PSTATE.PAN, so PAN is on again after every trap from a task (whose
/// SPSR the kernel builds with PAN clear).
const SCTLR_SPAN: u64 = 1 << 23;

/// Turns on PAN where the CPU has it (ID_AA64MMFR1_EL1.PAN != 0).
pub fn protect_user_memory() -> UserMemoryProtection {
    let pan = ID_AA64MMFR1_EL1.read(ID_AA64MMFR1_EL1::PAN) != 0;
    if pan {
        // SAFETY: SPAN and PAN only restrict EL1 accesses to EL0-accessible
        // pages, which the kernel never makes (it reaches task memory through
        // the identity map of the task's frames). The PAN register is named by
        // its encoding (S3_0_C4_C2_3) so no assembler feature flag is needed.
        unsafe {
            asm!(
                "mrs {tmp}, sctlr_el1",
                "bic {tmp}, {tmp}, {span}",
                "msr sctlr_el1, {tmp}",
                "msr s3_0_c4_c2_3, {pan}",
                "isb",
                tmp = out(reg) _,
                span = in(reg) SCTLR_SPAN,
                pan = in(reg) PAN_BIT,
                options(nostack, preserves_flags),
            )
        };
    }
    let mut now: u64;
    // SAFETY: reading PSTATE.PAN has no side effect.
    unsafe { asm!("mrs {}, s3_0_c4_c2_3", out(reg) now, options(nomem, nostack, preserves_flags)) };
    UserMemoryProtection {
        no_execute: true,
        no_access: now & PAN_BIT != 0,
    }
}
