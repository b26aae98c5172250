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

// SAFETY: only the CPU uses this memory, as the double-fault stack.
unsafe impl Sync for Stack {}

static DOUBLE_FAULT_STACK: Stack = Stack(UnsafeCell::new([0; DOUBLE_FAULT_STACK_SIZE]));

/// The TSS. The CPU reads RSP0 from memory on each trap from ring 3, and
/// [`super::user`] rewrites RSP0 before each entry to user mode.
#[repr(transparent)]
pub struct Tss(UnsafeCell<TaskStateSegment>);

// SAFETY: one CPU; RSP0 is written only with interrupts disabled just before
// entering user mode, and otherwise only the CPU reads the TSS.
unsafe impl Sync for Tss {}

pub static TSS: Tss = Tss(UnsafeCell::new(TaskStateSegment::new()));

struct Selectors {
    tss: SegmentSelector,
    user_code: SegmentSelector,
    user_data: SegmentSelector,
}

static GDT: spin::Once<(GlobalDescriptorTable, Selectors)> = spin::Once::new();

/// Builds and loads the GDT and the TSS. Called once, early, before the IDT.
pub fn init() {
    let stack_top = DOUBLE_FAULT_STACK.0.get() as u64 + DOUBLE_FAULT_STACK_SIZE as u64;
    // SAFETY: the TSS is not loaded yet, nothing else refers to it.
    unsafe {
        (*TSS.0.get()).interrupt_stack_table[usize::from(DOUBLE_FAULT_IST_INDEX)] =
            VirtAddr::new(stack_top);
    }
    let (gdt, selectors) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let kernel_code = gdt.append(Descriptor::kernel_code_segment());
        let kernel_data = gdt.append(Descriptor::kernel_data_segment());
        // SAFETY: the TSS is a static; the descriptor only records its
        // address and size, and later writes go through the UnsafeCell.
        let tss = gdt.append(Descriptor::tss_segment(unsafe { &*TSS.0.get() }));
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

fn selectors() -> &'static Selectors {
    &GDT.get().expect("gdt::init not called").1
}

/// The ring-3 code selector (RPL 3).
pub fn user_code_selector() -> u64 {
    u64::from(selectors().user_code.0)
}

/// The ring-3 stack/data selector (RPL 3).
pub fn user_data_selector() -> u64 {
    u64::from(selectors().user_data.0)
}
