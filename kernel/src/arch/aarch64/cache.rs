//! Data-cache maintenance by virtual address (ARM ARM D7.5.9, C5.3): what
//! memory shared with a device that does not snoop needs. Memory is
//! identity-mapped, so the addresses are the kernel's and the device's.

/// The smallest data-cache line in bytes: CTR_EL0.DminLine (bits 19:16), log2
/// of the line in 4-byte words.
pub fn data_line() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    4u64 << ((ctr >> 16) & 0xF)
}

/// Runs `op` on every line of `[start, start + len)`, then waits for all of
/// them to complete (`dsb sy`: the device is outside the inner shareable
/// domain).
fn for_each_line(start: *const u8, len: usize, op: fn(u64)) {
    let line = data_line();
    let end = start as u64 + len as u64;
    let mut address = start as u64 & !(line - 1);
    while address < end {
        op(address);
        address += line;
    }
    // SAFETY: a barrier only.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Writes dirty lines back to the point of coherency (`dc cvac`), so that a
/// device reading memory sees what the CPU wrote.
pub fn clean_to_poc(start: *const u8, len: usize) {
    // SAFETY: cache maintenance on mapped RAM the caller owns; it changes
    // no data.
    for_each_line(start, len, |address| unsafe {
        core::arch::asm!("dc cvac, {}", in(reg) address, options(nostack, preserves_flags))
    });
}

/// Writes dirty lines back and drops them (`dc civac`), so that the CPU's next
/// read fetches what a device wrote, and no stale line can be written over it.
pub fn clean_invalidate_to_poc(start: *const u8, len: usize) {
    // SAFETY: as for `clean_to_poc`: the data stays what it is in memory.
    for_each_line(start, len, |address| unsafe {
        core::arch::asm!("dc civac, {}", in(reg) address, options(nostack, preserves_flags))
    });
}
