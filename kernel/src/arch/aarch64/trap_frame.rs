//! The trap frame the exception vectors save: kept apart from the entry
//! path (`exceptions`) and from user-mode switching (`user`), which both
//! use it.

/// The state the vectors save, lowest address first. It is also a task's
/// saved user state (see `super::user`), so it holds everything EL0 can see:
/// the general registers, SP_EL0 and the FP/SIMD registers.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TrapFrame {
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
    pub esr: u64,
    pub far: u64,
    /// Which of the 16 vectors was taken (ARM ARM Table D1-5 order).
    pub kind: u64,
    pub sp_el0: u64,
    _pad: u64,
    /// V0-V31 (ARM ARM B1.2.1): the kernel's own code uses them too, so an
    /// exception must not leak its values into the code it interrupted.
    pub q: [u128; 32],
    pub fpcr: u64,
    pub fpsr: u64,
}
pub const TRAP_FRAME_SIZE: usize = 832;
const _: () = assert!(core::mem::size_of::<TrapFrame>() == TRAP_FRAME_SIZE);
const _: () = assert!(core::mem::offset_of!(TrapFrame, sp_el0) == 288);
const _: () = assert!(core::mem::offset_of!(TrapFrame, q) == 304);
const _: () = assert!(core::mem::offset_of!(TrapFrame, fpcr) == 816);

impl TrapFrame {
    pub const fn zeroed() -> Self {
        TrapFrame {
            x: [0; 31],
            elr: 0,
            spsr: 0,
            esr: 0,
            far: 0,
            kind: 0,
            sp_el0: 0,
            _pad: 0,
            q: [0; 32],
            fpcr: 0,
            fpsr: 0,
        }
    }
}
