//! Supervisor-mode protections against user memory (Intel SDM Vol. 3A
//! §4.6.1): SMEP (CR4 bit 20) faults an instruction fetch from a user page
//! in ring 0, SMAP (CR4 bit 21) a data access to one while EFLAGS.AC is clear
//! (the kernel never sets it: it has no user-access window).

use x86_64::registers::control::{Cr4, Cr4Flags};

use crate::arch::UserMemoryProtection;

/// CPUID.(EAX=07H, ECX=0):EBX feature bits (SDM Vol. 2A, CPUID).
const CPUID_EBX_SMEP: u32 = 1 << 7;
const CPUID_EBX_SMAP: u32 = 1 << 20;

/// Turns on SMEP and SMAP where the CPU has them.
pub fn protect_user_memory() -> UserMemoryProtection {
    let features = super::cpuid(super::CPUID_STRUCTURED_FEATURES, 0).map_or(0, |leaf| leaf.ebx);
    let mut wanted = Cr4Flags::empty();
    if features & CPUID_EBX_SMEP != 0 {
        wanted |= Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION;
    }
    if features & CPUID_EBX_SMAP != 0 {
        wanted |= Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION;
    }
    // SAFETY: only bits CPUID reports are set; the kernel never executes or
    // touches user pages through user addresses, so nothing it does faults.
    unsafe { Cr4::update(|flags| flags.insert(wanted)) };
    let now = Cr4::read();
    UserMemoryProtection {
        no_execute: now.contains(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION),
        no_access: now.contains(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION),
    }
}
