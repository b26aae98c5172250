//! The trap frame the entry stubs save, and what can be read from it alone:
//! kept apart from the entry path (`exceptions`) and from user-mode switching
//! (`user`), which both use it.

/// Vectors below this are exceptions; the rest are interrupts (SDM Vol. 3A §6.2).
pub const FIRST_INTERRUPT_VECTOR: usize = 32;

/// The state the stubs save, lowest address first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    // Pushed by the CPU (SDM Vol. 3A §6.14.1, 64-bit mode stack frame).
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}
const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);

/// True when the frame was pushed by a trap from ring 3.
pub fn from_user(frame: &TrapFrame) -> bool {
    frame.cs & 3 == 3
}

/// The name of exception `vector` (SDM Vol. 3A Table 6-1).
pub fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; 22] = [
        "divide error",
        "debug",
        "NMI",
        "breakpoint",
        "overflow",
        "bound range",
        "invalid opcode",
        "device not available",
        "double fault",
        "coprocessor overrun",
        "invalid TSS",
        "segment not present",
        "stack fault",
        "general protection",
        "page fault",
        "reserved",
        "x87 FP",
        "alignment check",
        "machine check",
        "SIMD FP",
        "virtualization",
        "control protection",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("reserved")
}
