//! A task that owns its device's stage-1 translation (SMMUv3 nesting,
//! SMMUv3 §3.3.2 and §5.4): it builds an ARM VMSAv8-64 stage-1 table and
//! the Context Descriptor that points to it in its own memory, maps that
//! memory into a NEST_PARENT HWPT's IOAS (the kernel's stage 2, which
//! translates the stage-1 output: IPA = IOVA of the parent), installs the
//! table with `hwpt_alloc` (vendor data: the guest STE words) and DMAs
//! through both stages; then moves a stage-1 mapping, invalidates it with
//! `hwpt_invalidate` and shows the device follows, and reads the stage-1
//! fault of an address it never mapped.
//!
//! Before nesting, on every IOMMU: an explicit paging HWPT (`hwpt_alloc`),
//! `device_attach` to it, `destroy` refused while attached, `device_replace`
//! back to the IOAS, `device_detach` (DMA blocked again), and the vendor-data
//! errors of a nested `hwpt_alloc`.
//!
//! The task's argument picks the edu. Exit codes: 0 = all held, 77 = no edu
//! behind an IOMMU, 78 = the generic part held and the unit offers no SMMUv3
//! nesting, otherwise the number of the failed step.
#![no_std]
#![no_main]

use io_page_table::{ArmConfig, ArmLpae, Coherence, Granule, PageTable, Prot, Stage};
use user_programs::abi::{Errno, FaultRecord, HwptAllocFlags, HwptArmSmmuV3, HwptDataType};
use user_programs::edu::{self, Edu};
use user_programs::iommu::{
    all_bytes_are, destroy, device_attach, device_detach, device_replace, fault_read, hwpt_alloc,
    invalidate_arm_smmuv3, ioas_alloc, ioas_map,
};
use user_programs::stage1::{PAGE, Pool, PoolTables, write_cd};
use user_programs::{Steps, argument, entry, println};

entry!(main);

const STEPS: Steps = Steps("nested");

const NO_DEVICE: i32 = user_programs::abi::NO_DEVICE_EXIT_CODE;
const NO_NESTING: i32 = 78;
/// Stage-1 input addresses the task gives its device.
const S1_IOVA: u64 = 0x7000_0000;
const S1_UNMAPPED: u64 = 0x7100_0000;
/// The address space id of the task's stage 1 (its own choice: the
/// kernel's stage 2 confines it to the nested domain's VMID).
const ASID: u16 = 1;
/// Pages of task memory the nested part uses: two data pages, the CD, and
/// stage-1 table pages.
const POOL_PAGES: usize = 12;
const DATA_A: usize = 0;
const DATA_B: usize = 1;
const CD_PAGE: usize = 2;
const FIRST_TABLE_PAGE: usize = 3;
/// Bytes the device's DMA must carry through.
const PATTERN: u8 = 0xA7;
const UNTOUCHED: u8 = 0xEE;

fn expect(number: i32, what: &str, result: Result<(), Errno>, expected: Errno) -> Result<(), i32> {
    if result == Err(expected) {
        println!("nested: {what}: {expected:?} as expected");
        Ok(())
    } else {
        println!("nested: {what}: expected {expected:?}, got {result:?}");
        Err(number)
    }
}

fn main() -> i32 {
    match run() {
        Ok(()) => 0,
        Err(code) => code,
    }
}

fn run() -> Result<(), i32> {
    let Some(address) = STEPS.check(1, "device_list", edu::find_translated(argument() as usize))?
    else {
        println!("nested: no edu behind an IOMMU here");
        return Err(NO_DEVICE);
    };
    let edu = STEPS.check(2, "device_open", Edu::open(address))?;
    let ioas = STEPS.check(3, "ioas_alloc", ioas_alloc())?;
    paging_hwpt_lifecycle(&edu, ioas)?;
    nested_stage1(&edu, ioas)
}

/// An explicit paging HWPT from the IOAS carries DMA, cannot be destroyed
/// while the device is attached, gives way to the IOAS's own HWPT through
/// `device_replace`, and after `device_detach` the device is blocked.
fn paging_hwpt_lifecycle(edu: &Edu, ioas: u32) -> Result<(), i32> {
    let data = STEPS.check(4, "mem_alloc", Pool::alloc(1))?;
    let data_page = data.page(0);
    data_page.fill(PATTERN);
    let iova = STEPS.check(5, "ioas_map", ioas_map(ioas, data.address(), PAGE, None))?;
    let paging = STEPS.check(
        6,
        "hwpt_alloc (paging)",
        hwpt_alloc(HwptAllocFlags::empty(), edu.id, ioas, None),
    )?;
    let attached = STEPS.check(7, "device_attach", device_attach(edu.id, paging))?;
    if attached != paging {
        println!("nested: attached to HWPT {attached}, not {paging}");
        return Err(7);
    }
    STEPS.check(8, "DMA", edu.dma(iova, false))?;
    expect(9, "destroy an attached HWPT", destroy(paging), Errno::EBUSY)?;
    let automatic = STEPS.check(10, "device_replace", device_replace(edu.id, ioas))?;
    if automatic == paging {
        println!("nested: replace left the device in HWPT {paging}");
        return Err(10);
    }
    STEPS.check(11, "destroy the detached HWPT", destroy(paging))?;
    // The device buffer holds PATTERN now; a blocked DMA must not write it.
    data_page.fill(UNTOUCHED);
    STEPS.check(12, "device_detach", device_detach(edu.id))?;
    // Blocked, the device's completion MSI would be dropped too: poll.
    STEPS.check(13, "DMA", edu.dma_polled(iova, true))?;
    if !all_bytes_are(data_page, UNTOUCHED) {
        println!("nested: a detached device's DMA reached memory");
        return Err(13);
    }
    println!(
        "nested: paging HWPT {paging} carried DMA, EBUSY while attached, replaced by HWPT {automatic}, destroyed; detached: DMA blocked"
    );
    Ok(())
}

fn nested_stage1(edu: &Edu, ioas: u32) -> Result<(), i32> {
    // The kernel's stage 2: a NEST_PARENT HWPT over the IOAS.
    let parent = match hwpt_alloc(HwptAllocFlags::NEST_PARENT, edu.id, ioas, None) {
        Ok(parent) => parent,
        Err(Errno::EOPNOTSUPP) => {
            println!("nested: the unit offers no nesting parent: EOPNOTSUPP");
            return Err(NO_NESTING);
        }
        Err(errno) => return STEPS.check(20, "hwpt_alloc (NEST_PARENT)", Err(errno)),
    };
    let pool = STEPS.check(21, "mem_alloc (pool)", Pool::alloc(POOL_PAGES))?;
    let ipa = STEPS.check(
        22,
        "ioas_map (pool)",
        ioas_map(ioas, pool.address(), POOL_PAGES as u64 * PAGE, None),
    )?;
    pool.page(DATA_A).fill(PATTERN);
    pool.page(DATA_B).fill(UNTOUCHED);

    // The task's stage 1, in its own memory, addressed by IPA.
    let format = ArmLpae::new(ArmConfig {
        stage: Stage::Stage1,
        granule: Granule::K4,
        input_bits: 48,
        output_bits: 44,
        contiguous: false,
    })
    .map_err(|_| 23)?;
    let tables = PoolTables::new(&pool, ipa, FIRST_TABLE_PAGE..POOL_PAGES);
    let mut table = PageTable::new(format, tables, Coherence::Coherent).map_err(|_| 23)?;
    let rw = Prot::READ | Prot::WRITE | Prot::CACHE;
    let ipa_of = |index: usize| ipa + index as u64 * PAGE;
    table
        .map(S1_IOVA, ipa_of(DATA_A), PAGE, rw)
        .map_err(|_| 24)?;
    write_cd(&pool, CD_PAGE, &table, ASID).map_err(|_| 25)?;
    let ste = smmuv3::Ste::guest_stage1(ipa_of(CD_PAGE)).map_err(|_| 25)?;
    let vendor = HwptArmSmmuV3 { ste };
    let vendor_bytes = user_programs::abi::as_bytes(&vendor);
    let arm = HwptDataType::ArmSmmuV3 as u32;

    // Vendor data the kernel must refuse before it builds anything.
    expect(
        26,
        "nested hwpt_alloc with short vendor data",
        hwpt_alloc(
            HwptAllocFlags::empty(),
            edu.id,
            parent,
            Some((arm, &vendor_bytes[..8])),
        )
        .map(|_| ()),
        Errno::EINVAL,
    )?;
    expect(
        27,
        "nested hwpt_alloc with an unknown data type",
        hwpt_alloc(
            HwptAllocFlags::empty(),
            edu.id,
            parent,
            Some((99, vendor_bytes)),
        )
        .map(|_| ()),
        Errno::EOPNOTSUPP,
    )?;
    let nested = match hwpt_alloc(
        HwptAllocFlags::empty(),
        edu.id,
        parent,
        Some((arm, vendor_bytes)),
    ) {
        Ok(nested) => nested,
        Err(Errno::EOPNOTSUPP) => {
            println!("nested: the unit does not take an SMMUv3 stage 1: EOPNOTSUPP");
            return Err(NO_NESTING);
        }
        Err(errno) => return STEPS.check(28, "hwpt_alloc (nested)", Err(errno)),
    };
    STEPS.check(29, "device_attach (nested)", device_attach(edu.id, nested))?;

    // IOVA -> (task's stage 1) -> IPA of page A -> (kernel's stage 2) -> PA.
    STEPS.check(30, "DMA", edu.dma_polled(S1_IOVA, false))?;
    // The task moves its mapping to page B and invalidates its own ASID.
    let unmapped = table.unmap(S1_IOVA, PAGE).map_err(|_| 31)?;
    table
        .map(S1_IOVA, ipa_of(DATA_B), PAGE, rw)
        .map_err(|_| 31)?;
    let command = smmuv3::Command::TlbiNhVa {
        vmid: 0,
        asid: ASID,
        addr: S1_IOVA,
        leaf: true,
        range: None,
    }
    .encode();
    let (processed, result) = invalidate_arm_smmuv3(nested, &[command.0]);
    STEPS.check(32, "hwpt_invalidate", result)?;
    if processed != 1 {
        println!("nested: hwpt_invalidate processed {processed} entries");
        return Err(32);
    }
    table.release(unmapped.freed);
    STEPS.check(33, "DMA", edu.dma_polled(S1_IOVA, true))?;
    if !all_bytes_are(pool.page(DATA_B), PATTERN) || !all_bytes_are(pool.page(DATA_A), PATTERN) {
        println!("nested: after the stage-1 move the data did not land in page B only");
        return Err(33);
    }
    println!(
        "nested: stage 1 in task memory (CD at IPA {:#x}, root at IPA {:#x}) over stage-2 HWPT {parent}: DMA at IOVA {S1_IOVA:#x} read page A, and after the move and hwpt_invalidate wrote page B",
        ipa_of(CD_PAGE),
        table.root_phys()
    );

    // An IOVA the task never mapped faults at stage 1, in the nested HWPT.
    STEPS.check(34, "DMA", edu.dma_polled(S1_UNMAPPED, true))?;
    let mut records = [FaultRecord::default(); 4];
    let read = STEPS.check(35, "fault_read", fault_read(nested, &mut records))?;
    match records[..read].first() {
        Some(record) if record.iova == S1_UNMAPPED => println!(
            "nested: fault at stage-1 IOVA {:#x} reported to the nested HWPT",
            record.iova
        ),
        other => {
            println!("nested: expected a fault at {S1_UNMAPPED:#x}, read {other:?}");
            return Err(35);
        }
    }
    println!("nested: done");
    Ok(())
}
