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

global_asm!(
    r#"
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

    mov eax, cr4
    or eax, {cr4_pae}
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, {msr_efer}
    rdmsr
    or eax, {efer_lme} | {efer_nxe}
    wrmsr
    mov eax, cr0
    or eax, {cr0_pg} | {cr0_wp} | {cr0_pe}
    mov cr0, eax

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
);
