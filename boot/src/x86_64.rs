//! x86_64 entry through the PVH boot protocol.
//!
//! QEMU's `-kernel` loads an ELF64 with a `XEN_ELFNOTE_PHYS32_ENTRY` note and
//! jumps to that entry in 32-bit protected mode, paging off, with `ebx`
//! holding the physical address of `hvm_start_info` (docs/QEMU.md §5). The code
//! below builds an identity map of the low 4 GiB with 2 MiB pages, enters long
//! mode and calls `kernel_entry(start_info)` on the boot stack.
//!
//! The note must sit in a PT_NOTE segment with 4-byte alignment: QEMU locates
//! the descriptor using the segment's `p_align`.

use core::arch::global_asm;
use core::mem::offset_of;
use core::sync::atomic::AtomicU64;

use crate::BOOT_STACK_SIZE;
use crate::pvh::ELFNOTE_PHYS32_ENTRY;

/// Page-table entry bits (Intel SDM Vol. 3A §4.5, Table 4-15/4-17).
const PTE_PRESENT: u32 = 1 << 0;
const PTE_WRITABLE: u32 = 1 << 1;
const PTE_WRITE_THROUGH: u32 = 1 << 3;
const PTE_CACHE_DISABLE: u32 = 1 << 4;
const PTE_HUGE: u32 = 1 << 7;
/// First 2 MiB page mapped uncached: q35 puts the PCI hole (ECAM at
/// 0xB000_0000, IOMMU and APIC registers near 4 GiB) above here. The MTRRs
/// SeaBIOS programs agree; the PTE bits make it true without relying on them.
const FIRST_UNCACHED_2M_PAGE: u32 = 0xB000_0000 >> 21;
/// Number of 2 MiB pages in the identity map (4 GiB).
const IDENTITY_2M_PAGES: u32 = 2048;

const CR0_PE: u32 = 1 << 0;
const CR0_WP: u32 = 1 << 16;
const CR0_PG: u32 = 1 << 31;
const CR4_PAE: u32 = 1 << 5;
const MSR_EFER: u32 = 0xC000_0080;
const EFER_LME: u32 = 1 << 8;
const EFER_NXE: u32 = 1 << 11;
const BOOT_CODE_SELECTOR: u32 = 0x08;
const BOOT_DATA_SELECTOR: u32 = 0x10;

/// Where the kernel copies the secondary CPUs' start code: a page below
/// 1 MiB (a Startup IPI names the page a CPU starts at in real mode, Intel
/// SDM Vol. 3A §8.4.4.1) that the kernel never hands out (it keeps the
/// whole first MiB) and that holds no firmware data it still reads.
pub const AP_TRAMPOLINE_BASE: u64 = 0x8000;
/// The trampoline's own GDT: 32-bit code, flat data, 64-bit code. The data
/// selector matches the kernel's, which the CPU keeps until it loads its
/// own GDT in Rust.
const AP_CODE32_SELECTOR: u32 = 0x08;
const AP_DATA_SELECTOR: u32 = 0x10;
const AP_CODE64_SELECTOR: u32 = 0x18;
/// `jmp ptr16:32` (SDM Vol. 2A, JMP, opcode EA) written as bytes: the far
/// jumps between the trampoline's modes, with an operand-size prefix in
/// 16-bit code.
const FAR_JUMP_OPCODE: u32 = 0xEA;
const OPERAND_SIZE_PREFIX: u32 = 0x66;
/// Fixed offsets in the trampoline (placed with `.org`, so the assembler
/// refuses code that grows into them): its GDT, the GDT pointer, and the
/// [`ApStart`] block. Constants, because a memory operand may not name the
/// distance between two labels.
const AP_GDT_OFFSET: usize = 0x100;
const AP_GDT_POINTER_OFFSET: usize = 0x120;
const AP_START_OFFSET: usize = 0x130;

/// What a secondary CPU needs to join the boot CPU, in the trampoline page
/// at `ap_trampoline_params`: the boot CPU's page-table root (below 4 GiB:
/// loaded in 32-bit mode), a stack, and the kernel's index for the CPU.
/// The CPU passes its address to `secondary_entry(start: &ApStart)`, which
/// sets `online` once it runs Rust; the boot CPU starts one CPU at a time
/// and rewrites the block only after that.
#[repr(C)]
#[derive(Debug)]
pub struct ApStart {
    pub cr3: u64,
    /// The top of this CPU's stack (16-byte aligned).
    pub stack_top: u64,
    /// The kernel's index of this CPU.
    pub cpu_index: u64,
    /// Set (to 1) by the CPU in Rust, with release ordering.
    pub online: AtomicU64,
}
const _: () = assert!(core::mem::size_of::<ApStart>() == 32);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// The secondary CPUs' start code as linked into the image, to be copied
/// to [`AP_TRAMPOLINE_BASE`], and the offset of its [`ApStart`] in it.
pub fn ap_trampoline() -> (&'static [u8], usize) {
    let start = &raw const ap_trampoline_start;
    // SAFETY: the two symbols delimit the trampoline's bytes in `.rodata`,
    // which is never written.
    unsafe {
        let len = (&raw const ap_trampoline_end).offset_from(start) as usize;
        (core::slice::from_raw_parts(start, len), AP_START_OFFSET)
    }
}

global_asm!(
    r#"
    // enter_long_mode: from 32-bit protected mode with EDX = the PML4's
    // physical address: PAE, the tables, EFER.LME (and NXE), then paging
    // with write protection (SDM Vol. 3A §9.8.5 "Initializing IA-32e
    // Mode"). The caller's far jump into a 64-bit segment follows.
    .macro enter_long_mode
    mov eax, cr4
    or eax, {cr4_pae}
    mov cr4, eax
    mov cr3, edx
    mov ecx, {msr_efer}
    rdmsr
    or eax, {efer_lme} | {efer_nxe}
    wrmsr
    mov eax, cr0
    or eax, {cr0_pg} | {cr0_wp} | {cr0_pe}
    mov cr0, eax
    .endm

    .section .note.Xen, "a"
    .balign 4
    .long 4
    .long 8
    .long {note_type}
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .boot.text, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov esi, ebx
    mov esp, offset boot_stack_top

    mov eax, offset boot_pdpt
    or eax, {present} | {writable}
    mov dword ptr [boot_pml4], eax

    mov eax, offset boot_pd
    or eax, {present} | {writable}
    xor ecx, ecx
2:
    mov dword ptr [boot_pdpt + ecx * 8], eax
    add eax, 4096
    inc ecx
    cmp ecx, 4
    jne 2b

    xor ecx, ecx
3:
    mov eax, ecx
    shl eax, 21
    or eax, {present} | {writable} | {huge}
    cmp ecx, {first_uncached}
    jb 4f
    or eax, {pcd} | {pwt}
4:
    mov dword ptr [boot_pd + ecx * 8], eax
    inc ecx
    cmp ecx, {identity_pages}
    jne 3b

    mov edx, offset boot_pml4
    enter_long_mode

    lgdt [boot_gdt_pointer]
    push {code_sel}
    mov eax, offset pvh_start64
    push eax
    retf

    .code64
pvh_start64:
    mov ax, {data_sel}
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, offset boot_stack_top
    mov edi, esi
    xor ebp, ebp
    call kernel_entry
5:
    hlt
    jmp 5b

    // The secondary CPUs' trampoline: copied to {ap_base}, started there in
    // real mode by a Startup IPI with CS = {ap_base} >> 4 and IP = 0. It
    // goes through protected mode into long mode with the boot CPU's
    // tables (the same steps as pvh_start32) and calls secondary_entry.
    // Code here is position dependent: addresses are {ap_base} plus the
    // label's offset from the start (the section's start: `.org` counts
    // from there).
    .section .rodata.ap_trampoline, "a"
    .balign 16
    .global ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    mov ax, cs
    mov ds, ax
    lgdt [{gdt_pointer_at}]
    mov eax, cr0
    or eax, {cr0_pe}
    mov cr0, eax
    .byte {operand_size}, {far_jump}
    .long {ap_base} + (ap_protected - ap_trampoline_start)
    .word {ap_code32}

    .code32
ap_protected:
    mov ax, {ap_data}
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov edx, dword ptr [{ap_base} + {start_at} + {cr3_at}]
    enter_long_mode
    .byte {far_jump}
    .long {ap_base} + (ap_long - ap_trampoline_start)
    .word {ap_code64}

    .code64
ap_long:
    mov edi, {ap_base} + {start_at}
    mov rsp, qword ptr [rdi + {stack_at}]
    xor ebp, ebp
    movabs rax, offset secondary_entry
    call rax
6:
    hlt
    jmp 6b

    .org {gdt_at}
ap_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .quad 0x00AF9A000000FFFF
ap_gdt_end:
    .org {gdt_pointer_at}
    .word ap_gdt_end - ap_gdt - 1
    .long {ap_base} + {gdt_at}
    .org {start_at}
    .space {ap_start_size}
    .global ap_trampoline_end
ap_trampoline_end:

    .section .rodata.boot, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
boot_gdt_end:
boot_gdt_pointer:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .space 4096
boot_pdpt:
    .space 4096
boot_pd:
    .space 4096 * 4
    .balign 16
boot_stack:
    .space {stack_size}
    .global boot_stack_top
boot_stack_top:
"#,
    note_type = const ELFNOTE_PHYS32_ENTRY,
    present = const PTE_PRESENT,
    writable = const PTE_WRITABLE,
    huge = const PTE_HUGE,
    pcd = const PTE_CACHE_DISABLE,
    pwt = const PTE_WRITE_THROUGH,
    first_uncached = const FIRST_UNCACHED_2M_PAGE,
    identity_pages = const IDENTITY_2M_PAGES,
    cr4_pae = const CR4_PAE,
    msr_efer = const MSR_EFER,
    efer_lme = const EFER_LME,
    efer_nxe = const EFER_NXE,
    cr0_pg = const CR0_PG,
    cr0_wp = const CR0_WP,
    cr0_pe = const CR0_PE,
    code_sel = const BOOT_CODE_SELECTOR,
    data_sel = const BOOT_DATA_SELECTOR,
    stack_size = const BOOT_STACK_SIZE,
    ap_base = const AP_TRAMPOLINE_BASE,
    ap_code32 = const AP_CODE32_SELECTOR,
    ap_data = const AP_DATA_SELECTOR,
    ap_code64 = const AP_CODE64_SELECTOR,
    far_jump = const FAR_JUMP_OPCODE,
    operand_size = const OPERAND_SIZE_PREFIX,
    cr3_at = const offset_of!(ApStart, cr3),
    stack_at = const offset_of!(ApStart, stack_top),
    ap_start_size = const core::mem::size_of::<ApStart>(),
    gdt_at = const AP_GDT_OFFSET,
    gdt_pointer_at = const AP_GDT_POINTER_OFFSET,
    start_at = const AP_START_OFFSET,
);
