//! A task that drives a virtual SMMUv3 as a guest driver would (Linux
//! `IOMMU_VIOMMU_ALLOC`, `IOMMU_VDEVICE_ALLOC`): a vIOMMU over its NEST_PARENT
//! HWPT, both edus bound to virtual StreamIDs, a nested HWPT (stage 1 in its
//! own memory) per edu over the vIOMMU, and invalidations through the vIOMMU
//! with SMMUv3 commands that name virtual StreamIDs.
//!
//! What it shows by DMA: a change of edu A's Context Descriptor takes effect
//! only when the task's own CFGI_CD names A's virtual StreamID (not with a
//! CFGI_CD for B's, and a command naming a virtual StreamID it never bound is
//! refused with EIO); edu B keeps its translation throughout. Then a vEVENTQ
//! (Linux `IOMMU_VEVENTQ_ALLOC`) two events deep: three stage-1 faults of
//! edu A arrive as SMMUv3 event records naming A's virtual StreamID, in
//! order, with sequence numbers, and a LOST_EVENTS mark where the third was
//! dropped; the next one's sequence shows the loss.
//!
//! Exit codes: 0 = all held, 77 = fewer than two edus behind an IOMMU, 78 =
//! the unit offers no SMMUv3 vIOMMU, otherwise the number of the failed step.
#![no_std]
#![no_main]

use io_page_table::{ArmConfig, ArmLpae, Coherence, Granule, PageTable, Prot, Stage};
use user_programs::abi::{
    Errno, HwptAllocFlags, HwptArmSmmuV3, HwptDataType, VeventFlags, VeventqType, ViommuType,
};
use user_programs::edu::{self, Edu};
use user_programs::iommu::{
    all_bytes_are, destroy, device_attach, device_detach, hwpt_alloc, invalidate_arm_smmuv3,
    ioas_alloc, ioas_map, vdevice_alloc, veventq_alloc, veventq_read, viommu_alloc,
};
use user_programs::stage1::{PAGE, Pool, PoolTables, write_cd};
use user_programs::{Steps, entry, println};

entry!(main);

const STEPS: Steps = Steps("viommu");

const NO_DEVICE: i32 = user_programs::abi::NO_DEVICE_EXIT_CODE;
const NO_VIOMMU: i32 = 78;
/// The virtual StreamIDs the task gives its edus (its own numbering).
const VSID_A: u64 = 0x41;
const VSID_B: u64 = 0x42;
/// A virtual StreamID the task never binds.
const VSID_UNBOUND: u64 = 0x43;
/// Stage-1 addresses: the page DMA reads from, the page it writes to.
const S1_SOURCE: u64 = 0x7000_0000;
const S1_TARGET: u64 = 0x7000_1000;
/// Task memory: source, two targets, two CDs, then stage-1 table pages
/// (the first table's pages, then the second's).
const POOL_PAGES: usize = 16;
const SOURCE: usize = 0;
const TARGET_1: usize = 1;
const TARGET_2: usize = 2;
const CD_A: usize = 3;
const CD_B: usize = 4;
const FIRST_TABLES: core::ops::Range<usize> = 5..10;
const SECOND_TABLES: core::ops::Range<usize> = 10..16;
/// Stage-1 addresses the task never maps: each DMA there faults once.
const S1_UNMAPPED: u64 = 0x7100_0000;
/// SMMUv3 §7.3.3 F_TRANSLATION.
const F_TRANSLATION: u64 = 0x10;
const PATTERN: u8 = 0x3C;
const UNTOUCHED: u8 = 0xEE;

fn main() -> i32 {
    match run() {
        Ok(()) => 0,
        Err(code) => code,
    }
}

/// A stage-1 table that maps the source page and `target` at the stage-1
/// addresses; returns it (its root is an IPA).
fn stage1(
    pool: &Pool,
    ipa: u64,
    pages: core::ops::Range<usize>,
    target: usize,
) -> Result<PageTable<ArmLpae, PoolTables>, i32> {
    let format = ArmLpae::new(ArmConfig {
        stage: Stage::Stage1,
        granule: Granule::K4,
        input_bits: 48,
        output_bits: 44,
        contiguous: false,
    })
    .map_err(|_| 20)?;
    let tables = PoolTables::new(pool, ipa, pages);
    let mut table = PageTable::new(format, tables, Coherence::Coherent).map_err(|_| 20)?;
    let rw = Prot::READ | Prot::WRITE | Prot::CACHE;
    let ipa_of = |index: usize| ipa + index as u64 * PAGE;
    table
        .map(S1_SOURCE, ipa_of(SOURCE), PAGE, rw)
        .map_err(|_| 20)?;
    table
        .map(S1_TARGET, ipa_of(target), PAGE, rw)
        .map_err(|_| 20)?;
    Ok(table)
}

/// The device copies the source page to the target address; which target
/// page got it (1 or 2), or 0 for neither.
fn landed(edu: &Edu, pool: &Pool, step: i32) -> Result<usize, i32> {
    pool.page(TARGET_1).fill(UNTOUCHED);
    pool.page(TARGET_2).fill(UNTOUCHED);
    STEPS.check(step, "DMA", edu.dma_polled(S1_SOURCE, false))?;
    STEPS.check(step, "DMA", edu.dma_polled(S1_TARGET, true))?;
    Ok(
        match (
            all_bytes_are(pool.page(TARGET_1), PATTERN),
            all_bytes_are(pool.page(TARGET_2), PATTERN),
        ) {
            (true, false) => 1,
            (false, true) => 2,
            _ => 0,
        },
    )
}

fn expect_landing(edu: &Edu, pool: &Pool, step: i32, what: &str, want: usize) -> Result<(), i32> {
    let got = landed(edu, pool, step)?;
    if got != want {
        println!("viommu: {what}: the DMA landed in target {got}, not {want}");
        return Err(step);
    }
    println!("viommu: {what}: the DMA landed in target {want}");
    Ok(())
}

fn run() -> Result<(), i32> {
    let (Some(address_a), Some(address_b)) = (
        STEPS.check(1, "device_list", edu::find_translated(0))?,
        STEPS.check(1, "device_list", edu::find_translated(1))?,
    ) else {
        println!("viommu: fewer than two edus behind an IOMMU here");
        return Err(NO_DEVICE);
    };
    let edu_a = STEPS.check(2, "device_open", Edu::open(address_a))?;
    let edu_b = STEPS.check(2, "device_open", Edu::open(address_b))?;
    let ioas = STEPS.check(3, "ioas_alloc", ioas_alloc())?;
    let parent = match hwpt_alloc(HwptAllocFlags::NEST_PARENT, edu_a.id, ioas, None) {
        Ok(parent) => parent,
        Err(Errno::EOPNOTSUPP) => {
            println!("viommu: the unit offers no nesting parent: EOPNOTSUPP");
            return Err(NO_VIOMMU);
        }
        Err(errno) => return STEPS.check(4, "hwpt_alloc (NEST_PARENT)", Err(errno)),
    };
    let viommu = match viommu_alloc(edu_a.id, parent, ViommuType::ArmSmmuV3 as u32) {
        Ok(viommu) => viommu,
        Err(Errno::EOPNOTSUPP) => {
            println!("viommu: the unit offers no SMMUv3 vIOMMU: EOPNOTSUPP");
            return Err(NO_VIOMMU);
        }
        Err(errno) => return STEPS.check(5, "viommu_alloc", Err(errno)),
    };
    STEPS.check(6, "vdevice_alloc", vdevice_alloc(viommu, edu_a.id, VSID_A))?;
    if vdevice_alloc(viommu, edu_b.id, VSID_A) != Err(Errno::EEXIST) {
        println!("viommu: a second binding of one virtual StreamID was not EEXIST");
        return Err(6);
    }
    STEPS.check(6, "vdevice_alloc", vdevice_alloc(viommu, edu_b.id, VSID_B))?;
    println!(
        "viommu: vIOMMU {viommu} over HWPT {parent}; edus bound to virtual StreamIDs {VSID_A:#x} and {VSID_B:#x}; a second binding of {VSID_A:#x}: EEXIST"
    );

    let pool = STEPS.check(7, "mem_alloc", Pool::alloc(POOL_PAGES))?;
    let ipa = STEPS.check(
        8,
        "ioas_map",
        ioas_map(ioas, pool.address(), POOL_PAGES as u64 * PAGE, None),
    )?;
    pool.page(SOURCE).fill(PATTERN);
    let first = stage1(&pool, ipa, FIRST_TABLES, TARGET_1)?;
    let second = stage1(&pool, ipa, SECOND_TABLES, TARGET_2)?;
    write_cd(&pool, CD_A, &first, 1).map_err(|_| 21)?;
    write_cd(&pool, CD_B, &first, 2).map_err(|_| 21)?;
    let arm = HwptDataType::ArmSmmuV3 as u32;
    let mut nested = [0u32; 2];
    for (slot, (edu, cd)) in nested.iter_mut().zip([(&edu_a, CD_A), (&edu_b, CD_B)]) {
        let ste = smmuv3::Ste::guest_stage1(ipa + cd as u64 * PAGE).map_err(|_| 9)?;
        let vendor = HwptArmSmmuV3 { ste };
        *slot = STEPS.check(
            9,
            "hwpt_alloc (nested over the vIOMMU)",
            hwpt_alloc(
                HwptAllocFlags::empty(),
                edu.id,
                viommu,
                Some((arm, user_programs::abi::as_bytes(&vendor))),
            ),
        )?;
        STEPS.check(10, "device_attach", device_attach(edu.id, *slot))?;
    }
    expect_landing(&edu_a, &pool, 11, "edu A through its stage 1", 1)?;
    expect_landing(&edu_b, &pool, 11, "edu B through its stage 1", 1)?;

    // A's CD now names the second table (and a fresh ASID): nothing changes
    // until the task invalidates A's CD through its vIOMMU.
    write_cd(&pool, CD_A, &second, 3).map_err(|_| 21)?;
    expect_landing(&edu_a, &pool, 12, "A's CD changed, not invalidated", 1)?;
    let cfgi_cd = |vsid: u64| {
        smmuv3::Command::CfgiCd {
            sid: vsid as u32,
            ssid: 0,
            leaf: true,
        }
        .encode()
        .0
    };
    let refused = invalidate_arm_smmuv3(viommu, &[cfgi_cd(VSID_UNBOUND)]);
    if refused != (0, Err(Errno::EIO)) {
        println!("viommu: CFGI_CD of an unbound virtual StreamID said {refused:?}");
        return Err(13);
    }
    println!("viommu: CFGI_CD naming virtual StreamID {VSID_UNBOUND:#x}, never bound: EIO");
    let other = invalidate_arm_smmuv3(viommu, &[cfgi_cd(VSID_B)]);
    if other != (1, Ok(())) {
        println!("viommu: CFGI_CD of B's virtual StreamID said {other:?}");
        return Err(14);
    }
    expect_landing(
        &edu_a,
        &pool,
        14,
        "after CFGI_CD of B's virtual StreamID",
        1,
    )?;
    let own = invalidate_arm_smmuv3(viommu, &[cfgi_cd(VSID_A)]);
    if own != (1, Ok(())) {
        println!("viommu: CFGI_CD of A's virtual StreamID said {own:?}");
        return Err(15);
    }
    expect_landing(
        &edu_a,
        &pool,
        15,
        "after CFGI_CD of A's virtual StreamID",
        2,
    )?;
    expect_landing(&edu_b, &pool, 16, "edu B, untouched", 1)?;

    event_queue(&edu_a, viommu)?;

    // The objects hold each other: the vIOMMU goes after its HWPTs and
    // vDEVICEs (the task's exit takes down the rest).
    if destroy(viommu) != Err(Errno::EBUSY) {
        println!("viommu: destroying a vIOMMU in use was not EBUSY");
        return Err(17);
    }
    for (edu, hwpt) in [(&edu_a, nested[0]), (&edu_b, nested[1])] {
        STEPS.check(18, "device_detach", device_detach(edu.id))?;
        STEPS.check(18, "destroy (nested HWPT)", destroy(hwpt))?;
    }
    println!("viommu: done");
    Ok(())
}

/// One event as read: (flags, sequence, the record unless LOST_EVENTS).
type Read = (u32, u32, Option<[u64; 4]>);

/// Splits what `veventq_read` wrote into events.
fn parse(bytes: &[u8], out: &mut [Read]) -> usize {
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    let (mut at, mut count) = (0, 0);
    while at + 8 <= bytes.len() && count < out.len() {
        let header = word(at);
        let (flags, sequence) = (header as u32, (header >> 32) as u32);
        at += 8;
        let record = if flags & VeventFlags::LOST_EVENTS.bits() == 0 && at + 32 <= bytes.len() {
            let evt = [word(at), word(at + 8), word(at + 16), word(at + 24)];
            at += 32;
            Some(evt)
        } else {
            None
        };
        out[count] = (flags, sequence, record);
        count += 1;
    }
    count
}

/// Faults of A's stage 1 through a vEVENTQ two events deep.
fn event_queue(edu_a: &Edu, viommu: u32) -> Result<(), i32> {
    let smmuv3 = VeventqType::ArmSmmuV3 as u32;
    let queue = STEPS.check(19, "veventq_alloc", veventq_alloc(viommu, smmuv3, 2))?;
    if veventq_alloc(viommu, smmuv3, 2) != Err(Errno::EEXIST) {
        println!("viommu: a second vEVENTQ of the vIOMMU was not EEXIST");
        return Err(19);
    }
    // Four bytes each: one event per DMA (QEMU reports every 4-byte chunk).
    for page in 0..3 {
        STEPS.check(
            20,
            "faulting DMA",
            edu_a.send_polled(0, S1_UNMAPPED + page * PAGE, 4),
        )?;
    }
    let mut buffer = [0u8; 256];
    let written = STEPS.check(21, "veventq_read", veventq_read(queue, &mut buffer))?;
    let mut events = [(0, 0, None); 4];
    let count = parse(&buffer[..written], &mut events);
    let expected_record = |evt: Option<[u64; 4]>, page: u64| {
        evt.is_some_and(|evt| {
            evt[0] & 0xFF == F_TRANSLATION
                && evt[0] >> 32 == VSID_A
                && evt[2] == S1_UNMAPPED + page * PAGE
        })
    };
    let as_expected = count == 3
        && events[0].0 == 0
        && events[0].1 == 0
        && expected_record(events[0].2, 0)
        && events[1].0 == 0
        && events[1].1 == 1
        && expected_record(events[1].2, 1)
        && events[2] == (VeventFlags::LOST_EVENTS.bits(), 2, None);
    if !as_expected {
        println!(
            "viommu: vEVENTQ read {count} events: {:x?}",
            &events[..count]
        );
        return Err(21);
    }
    println!(
        "viommu: vEVENTQ: F_TRANSLATION at {S1_UNMAPPED:#x} and {:#x} with virtual StreamID {VSID_A:#x}, sequences 0 and 1, then LOST_EVENTS at sequence 2",
        S1_UNMAPPED + PAGE
    );
    STEPS.check(
        22,
        "faulting DMA",
        edu_a.send_polled(0, S1_UNMAPPED + 3 * PAGE, 4),
    )?;
    let written = STEPS.check(22, "veventq_read", veventq_read(queue, &mut buffer))?;
    let count = parse(&buffer[..written], &mut events);
    if count != 1 || events[0].1 != 3 || !expected_record(events[0].2, 3) {
        println!(
            "viommu: after the loss, vEVENTQ read {:x?}",
            &events[..count]
        );
        return Err(22);
    }
    println!("viommu: the next fault arrived with sequence 3: one event lost, none silently");
    Ok(())
}
