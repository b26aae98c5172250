//! The kernel's GDT and TSS, replacing the boot GDT (which has only a 64-bit
//! code and a data segment): user code and data segments for ring 3, and a TSS
//! whose RSP0 is the stack the CPU switches to on a trap from ring 3 and whose
//! IST1 is a known-good stack for double faults (Intel SDM Vol. 3A §3.4.5
//! segment descriptors, §7.7 the 64-bit TSS, §6.14.5 interrupt stack table).
//!
//! The kernel selectors keep the boot GDT's values (code 0x08, data 0x10).

use core::cell::UnsafeCell;

use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot (0-based, as the `x86_64` crate counts) of the double-fault stack.
pub const DOUBLE_FAULT_IST_INDEX: u16 = 0;
const DOUBLE_FAULT_STACK_SIZE: usize = 16 * 1024;
/// Offset of RSP0 in the 64-bit TSS (SDM Vol. 3A Figure 7-11).
pub const TSS_RSP0_OFFSET: usize = 4;
/// The boot GDT's selectors (boot/src/x86_64.rs), kept so that nothing loaded
/// before this GDT goes stale.
const KERNEL_CODE: SegmentSelector = SegmentSelector(0x08);
const KERNEL_DATA: SegmentSelector = SegmentSelector(0x10);

#[repr(C, align(16))]
struct Stack(UnsafeCell<[u8; DOUBLE_FAULT_STACK_SIZE]>);

/// The TSS. The CPU reads RSP0 from memory on each trap from ring 3, and
/// [`super::user`] rewrites RSP0 before each entry to user mode.
#[repr(transparent)]
pub struct Tss(UnsafeCell<TaskStateSegment>);

/// One CPU's descriptor tables: each CPU needs a TSS of its own (RSP0 is its
/// own kernel stack, and `ltr` marks the descriptor busy, so two CPUs cannot
/// load one), hence a GDT of its own too, with the same layout everywhere so
/// that the selectors are the same on every CPU.
pub struct CpuTables {
    tss: Tss,
    gdt: spin::Once<(GlobalDescriptorTable, Selectors)>,
    double_fault_stack: Stack,
}

// SAFETY: each CPU's tables are used by that CPU only: RSP0 is written by
// its own CPU with interrupts disabled just before entering user mode, the
// stack is its double-fault stack, and otherwise only the CPU reads them.
unsafe impl Sync for CpuTables {}

impl CpuTables {
    pub const fn new() -> Self {
        CpuTables {
            tss: Tss(UnsafeCell::new(TaskStateSegment::new())),
            gdt: spin::Once::new(),
            double_fault_stack: Stack(UnsafeCell::new([0; DOUBLE_FAULT_STACK_SIZE])),
        }
    }

    /// Where this CPU's TSS keeps RSP0.
    pub fn rsp0_slot(&self) -> *mut u64 {
        self.tss
            .0
            .get()
            .cast::<u8>()
            .wrapping_add(TSS_RSP0_OFFSET)
            .cast()
    }
}

/// The boot CPU's tables (a static: they are loaded before the heap exists).
pub static BOOT_CPU_TABLES: CpuTables = CpuTables::new();

#[derive(Clone, Copy)]
struct Selectors {
    tss: SegmentSelector,
    user_code: SegmentSelector,
    user_data: SegmentSelector,
}

/// Builds and loads `tables` on the running CPU: called once per CPU, early,
/// before its IDT.
pub fn init(tables: &'static CpuTables) {
    let stack_top = tables.double_fault_stack.0.get() as u64 + DOUBLE_FAULT_STACK_SIZE as u64;
    // SAFETY: the TSS is not loaded yet, nothing else refers to it.
    unsafe {
        (*tables.tss.0.get()).interrupt_stack_table[usize::from(DOUBLE_FAULT_IST_INDEX)] =
            VirtAddr::new(stack_top);
    }
    let (gdt, selectors) = tables.gdt.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let kernel_code = gdt.append(Descriptor::kernel_code_segment());
        let kernel_data = gdt.append(Descriptor::kernel_data_segment());
        // SAFETY: the TSS lives as long as the tables (for good); the
        // descriptor only records its address and size, and later writes go
        // through the UnsafeCell.
        let tss = gdt.append(Descriptor::tss_segment(unsafe { &*tables.tss.0.get() }));
        let user_data = gdt.append(Descriptor::user_data_segment());
        let user_code = gdt.append(Descriptor::user_code_segment());
        assert_eq!(kernel_code, KERNEL_CODE, "kernel code selector moved");
        assert_eq!(kernel_data, KERNEL_DATA, "kernel data selector moved");
        (
            gdt,
            Selectors {
                tss,
                user_code,
                user_data,
            },
        )
    });
    gdt.load();
    // SAFETY: the selectors name the descriptors of the GDT just loaded, with
    // the same values the boot GDT used, and the TSS descriptor.
    unsafe {
        CS::set_reg(KERNEL_CODE);
        SS::set_reg(KERNEL_DATA);
        DS::set_reg(KERNEL_DATA);
        ES::set_reg(KERNEL_DATA);
        load_tss(selectors.tss);
    }
}

/// The selectors, the same in every CPU's GDT.
fn selectors() -> &'static Selectors {
    &BOOT_CPU_TABLES.gdt.get().expect("gdt::init not called").1
}

/// The ring-3 code selector (RPL 3).
pub fn user_code_selector() -> u64 {
    u64::from(selectors().user_code.0)
}

/// The ring-3 stack/data selector (RPL 3).
pub fn user_data_selector() -> u64 {
    u64::from(selectors().user_data.0)
}
