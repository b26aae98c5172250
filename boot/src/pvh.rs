//! The PVH boot protocol's hand-off structures (Xen `arch/x86/include/public/hvm/start_info.h`,
//! as implemented by QEMU's `pvh.bin` option ROM for `-kernel` ELF images).

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;

/// Xen start_info.h `struct hvm_start_info` (version 1).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    /// Version 1: physical address of an array of [`MemmapEntry`].
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}
const _: () = assert!(core::mem::size_of::<StartInfo>() == 56);

/// Xen start_info.h `struct hvm_memmap_table_entry` (E820 semantics).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}
const _: () = assert!(core::mem::size_of::<MemmapEntry>() == 24);

/// E820 type of usable RAM (`XEN_HVM_MEMMAP_TYPE_RAM`).
pub const MEMMAP_TYPE_RAM: u32 = 1;

/// Xen `XEN_ELFNOTE_PHYS32_ENTRY`: the ELF note type that carries the 32-bit
/// physical entry point.
pub const ELFNOTE_PHYS32_ENTRY: u32 = 18;
