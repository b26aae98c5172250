//! AArch64 entry for QEMU's bare-metal ELF boot on `-machine virt`.
//!
//! QEMU starts the image at EL1 (EL2 with `virtualization=on`) with the MMU
//! and caches off and every register 0 (docs/QEMU.md §5). The code below drops
//! to EL1 when entered at EL2, enables FP/SIMD (the Rust target uses NEON),
//! turns the MMU on with a boot identity map of 1 GiB blocks and calls
//! `kernel_entry(dtb)`. The MMU must be on before any Rust runs: with it off,
//! every data access is Device memory and unaligned accesses fault.

use core::arch::global_asm;
use core::mem::offset_of;
use core::sync::atomic::AtomicU64;

use crate::BOOT_STACK_SIZE;

/// What a secondary CPU needs to join the boot CPU, read by [`ap_start`]
/// with its MMU still off: the boot CPU's translation registers, a stack,
/// and a word the CPU sets once it runs Rust. Its address is PSCI CPU_ON's
/// context id (PSCI 1.1 §5.6: it arrives in `x0`). The boot CPU cleans it
/// to the point of coherency first: with the MMU off, the secondary CPU's
/// loads go to memory, not to the boot CPU's caches.
#[repr(C)]
#[derive(Debug)]
pub struct ApStart {
    /// MAIR_EL1, TCR_EL1, TTBR0_EL1 and SCTLR_EL1 as the boot CPU runs with them.
    pub mair: u64,
    pub tcr: u64,
    pub ttbr0: u64,
    pub sctlr: u64,
    /// The top of this CPU's stack (16-byte aligned).
    pub stack_top: u64,
    /// The kernel's index of this CPU.
    pub cpu_index: u64,
    /// Set (to 1) by the CPU in Rust, with release ordering.
    pub online: AtomicU64,
}
const _: () = assert!(core::mem::size_of::<ApStart>() == 56);

unsafe extern "C" {
    /// Where PSCI CPU_ON starts a secondary CPU: at EL1 (or EL2, dropped
    /// from as `_start` does), MMU and caches off, `x0` = its [`ApStart`].
    #[link_name = "_ap_start"]
    pub fn ap_start();
}

/// Stage-1 block descriptor bits (ARM ARM D8.3.1, VMSAv8-64 descriptor formats).
const DESC_BLOCK: u64 = 0b01;
const DESC_TABLE: u64 = 0b11;
/// `AttrIndx[4:2]` selects a MAIR_EL1 attribute.
const ATTR_INDEX_SHIFT: u64 = 2;
/// `SH[9:8]` = 0b11, inner shareable.
const SH_INNER: u64 = 0b11 << 8;
/// AF, the access flag: set so that the first access does not fault.
const AF: u64 = 1 << 10;
/// PXN and UXN: never execute from device memory.
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;

/// MAIR_EL1 attribute indices (ARM ARM D19.2.97 MAIR_EL1).
pub const MAIR_DEVICE_NGNRNE: u64 = 0;
pub const MAIR_NORMAL_WB: u64 = 1;
pub const MAIR_NORMAL_NC: u64 = 2;
const MAIR_VALUE: u64 = (0x00 << (8 * MAIR_DEVICE_NGNRNE))
    | (0xFF << (8 * MAIR_NORMAL_WB))
    | (0x44 << (8 * MAIR_NORMAL_NC));

const DEVICE_BLOCK: u64 = DESC_BLOCK | (MAIR_DEVICE_NGNRNE << ATTR_INDEX_SHIFT) | AF | PXN | UXN;
/// Kernel RAM: `AP[2:1]` = 00 gives EL0 no data access, and UXN keeps EL0 from
/// executing it (AP does not govern EL0 instruction fetch).
const NORMAL_BLOCK: u64 = DESC_BLOCK | (MAIR_NORMAL_WB << ATTR_INDEX_SHIFT) | SH_INNER | AF | UXN;
const GIB: u64 = 1 << 30;
/// The L1 slot of the PCIe high ECAM window at 0x40_1000_0000 (256 GiB + 256 MiB).
const HIGH_ECAM_L1_INDEX: u64 = 0x40_0000_0000 / GIB;

/// TCR_EL1 (ARM ARM D19.2.139): T0SZ=16 (48-bit VA), IRGN0/ORGN0 write-back
/// write-allocate, SH0 inner shareable, TG0 4 KiB, EPD1 (no TTBR1 walks).
/// IPS is filled in from ID_AA64MMFR0_EL1.PARange at run time.
const TCR_T0SZ_48BIT: u64 = 16;
const TCR_IRGN0_WBWA: u64 = 1 << 8;
const TCR_ORGN0_WBWA: u64 = 1 << 10;
const TCR_SH0_INNER: u64 = 0b11 << 12;
const TCR_EPD1: u64 = 1 << 23;
const TCR_IPS_SHIFT: u64 = 32;
const TCR_VALUE: u64 = TCR_T0SZ_48BIT | TCR_IRGN0_WBWA | TCR_ORGN0_WBWA | TCR_SH0_INNER | TCR_EPD1;

/// HCR_EL2.RW: EL1 is AArch64.
const HCR_EL2_RW: u64 = 1 << 31;
/// SPSR for the eret to EL1: EL1h with D, A, I, F masked.
const SPSR_EL1H_MASKED: u64 = 0x3C5;
/// CNTHCTL_EL2.EL1PCTEN | EL1PCEN: EL1 may use the physical counter and timer.
const CNTHCTL_EL1_ACCESS: u64 = 0b11;
/// CPACR_EL1.FPEN = 0b11: no FP/SIMD traps at EL1 or EL0.
const CPACR_FPEN: u64 = 0b11 << 20;

global_asm!(
    r#"
    // Entered at EL2: make EL1 AArch64, give it the timer, and return to
    // the label `at` at EL1 with every exception masked.
    .macro drop_to_el1 at
    mrs x1, CurrentEL
    lsr x1, x1, #2
    cmp x1, #2
    b.ne \at
    ldr x1, ={hcr_rw}
    msr hcr_el2, x1
    mov x1, #{cnthctl}
    msr cnthctl_el2, x1
    msr cntvoff_el2, xzr
    ldr x1, ={spsr}
    msr spsr_el2, x1
    adr x1, \at
    msr elr_el2, x1
    eret
    .endm

    .section .text.boot, "ax"
    .global _start
_start:
    mov x19, x0
    drop_to_el1 1f
1:
    ldr x1, ={cpacr}
    msr cpacr_el1, x1
    isb

    adrp x1, boot_l0
    adrp x2, boot_l1
    orr x3, x2, #{table}
    str x3, [x1]
    ldr x3, ={device_block}
    str x3, [x2]
    ldr x3, ={normal_block}
    ldr x4, ={gib}
    mov x5, #1
2:
    mul x7, x4, x5
    orr x6, x3, x7
    str x6, [x2, x5, lsl #3]
    add x5, x5, #1
    cmp x5, #4
    b.ne 2b
    ldr x3, ={device_block}
    ldr x4, ={high_ecam_block}
    orr x3, x3, x4
    ldr x5, ={high_ecam_index}
    str x3, [x2, x5, lsl #3]

    ldr x1, ={mair}
    msr mair_el1, x1
    mrs x2, id_aa64mmfr0_el1
    and x2, x2, #0x7
    ldr x1, ={tcr}
    orr x1, x1, x2, lsl #{ips_shift}
    msr tcr_el1, x1
    adrp x1, boot_l0
    msr ttbr0_el1, x1
    isb
    tlbi vmalle1
    dsb ish
    isb
    mrs x1, sctlr_el1
    orr x1, x1, #(1 << 0)
    orr x1, x1, #(1 << 2)
    orr x1, x1, #(1 << 12)
    bic x1, x1, #(1 << 1)
    msr sctlr_el1, x1
    isb

    adrp x1, boot_stack_top
    add x1, x1, :lo12:boot_stack_top
    mov sp, x1
    mov x0, x19
    bl kernel_entry
3:
    wfe
    b 3b

    // A secondary CPU (PSCI CPU_ON): x0 = its ApStart, read with the MMU
    // off. Same registers as the boot CPU, then its own stack.
    .global _ap_start
_ap_start:
    mov x19, x0
    drop_to_el1 4f
4:
    ldr x1, ={cpacr}
    msr cpacr_el1, x1
    isb
    ldr x1, [x19, #{ap_mair}]
    msr mair_el1, x1
    ldr x1, [x19, #{ap_tcr}]
    msr tcr_el1, x1
    ldr x1, [x19, #{ap_ttbr0}]
    msr ttbr0_el1, x1
    isb
    tlbi vmalle1
    dsb ish
    isb
    ldr x1, [x19, #{ap_sctlr}]
    msr sctlr_el1, x1
    isb
    ldr x1, [x19, #{ap_stack_top}]
    mov sp, x1
    mov x0, x19
    bl secondary_entry
5:
    wfe
    b 5b

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_l0:
    .space 4096
boot_l1:
    .space 4096
    .balign 16
boot_stack:
    .space {stack_size}
    .global boot_stack_top
boot_stack_top:
"#,
    hcr_rw = const HCR_EL2_RW,
    cnthctl = const CNTHCTL_EL1_ACCESS,
    spsr = const SPSR_EL1H_MASKED,
    cpacr = const CPACR_FPEN,
    table = const DESC_TABLE,
    device_block = const DEVICE_BLOCK,
    normal_block = const NORMAL_BLOCK,
    gib = const GIB,
    high_ecam_block = const HIGH_ECAM_L1_INDEX * GIB,
    high_ecam_index = const HIGH_ECAM_L1_INDEX,
    mair = const MAIR_VALUE,
    tcr = const TCR_VALUE,
    ips_shift = const TCR_IPS_SHIFT,
    stack_size = const BOOT_STACK_SIZE,
    ap_mair = const offset_of!(ApStart, mair),
    ap_tcr = const offset_of!(ApStart, tcr),
    ap_ttbr0 = const offset_of!(ApStart, ttbr0),
    ap_sctlr = const offset_of!(ApStart, sctlr),
    ap_stack_top = const offset_of!(ApStart, stack_top),
);
