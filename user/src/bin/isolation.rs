//! Two tasks, two edus, one kernel: neither task can reach the other's
//! memory, device or objects, and killing one leaves the other working.
//! The task argument says who this task is: role (bits 63:56), edu index
//! (bits 55:48) and an address (bits 47:0) whose meaning depends on the role.
//!
//! - OWNER: keeps a buffer (at the address: memory the kernel allocated for
//!   it before it started) mapped for its edu, plus some extra IOASes; waits
//!   until the other task's edu is free again (the PROBER exited), then
//!   checks that its buffer, objects and DMA path are intact.
//! - PROBER: aims its own edu at the OWNER's buffer (the address is its
//!   physical address; an IOVA its own IOAS leaves unmapped is tried too), in both
//!   directions, names ids that exist only in the OWNER's object table, and
//!   tries to open the OWNER's edu: every attempt must fail or be blocked.
//! - VICTIM: attaches its edu, maps a buffer, DMAs, then faults on purpose
//!   (it touches kernel memory) and is killed with its device attached.
//! - WORKER: waits until the VICTIM's edu is free (its teardown is over),
//!   then shows its own DMA still works.
//! - FAULTER: makes its edu fault once and never reads the record; stays
//!   alive until the other task has held its edu and let it go (the other
//!   task's own faults must still be recorded meanwhile).
//!
//! Exit codes: 0 = everything held, 77 = no edu behind an IOMMU, otherwise
//! the number of the failed step.
#![no_std]
#![no_main]

use user_programs::abi::{Command, Errno, FaultRecord, IoasIovaRanges};
use user_programs::edu::{self, Edu, PciAddress};
use user_programs::iommu::{
    all_bytes_are, arg_size, destroy, device_attach, fault_read, ioas_alloc, ioas_map,
};
use user_programs::{Steps, argument, entry, iommufd, mem_alloc, now_ns, println, yield_now};

entry!(main);

const STEPS: Steps = Steps("isolation");

const OWNER: u64 = 1;
const PROBER: u64 = 2;
const VICTIM: u64 = 3;
const WORKER: u64 = 4;
const FAULTER: u64 = 5;
const NO_DEVICE: i32 = user_programs::abi::NO_DEVICE_EXIT_CODE;
const PAGE: usize = 4096;
const PATTERN: u8 = 0xA1;
/// IOASes the OWNER makes beyond the one it uses, so that its object table
/// has ids the PROBER's does not.
const EXTRA_IOASES: u32 = 4;
/// Ids the PROBER names: all of the OWNER's and more.
const PROBED_IDS: u32 = 12;
/// How long a waiting task waits for the other one before giving up: far
/// longer than the other needs, even on a loaded machine.
const WAIT_NS: u64 = 60_000_000_000;
/// A kernel address (the kernel image) the VICTIM touches to get killed.
#[cfg(target_arch = "x86_64")]
const KERNEL_ADDRESS: u64 = 0x20_0000;
#[cfg(target_arch = "aarch64")]
const KERNEL_ADDRESS: u64 = 0x4020_0000;

fn main() -> i32 {
    let arg = argument();
    let (role, index, address) = (
        arg >> 56,
        ((arg >> 48) & 0xFF) as usize,
        arg & ((1 << 48) - 1),
    );
    match run(role, index, address) {
        Ok(()) => 0,
        Err(code) => code,
    }
}

/// An opened edu in a fresh IOAS of its own, attached.
struct Setup {
    edu: Edu,
    ioas: u32,
    hwpt: u32,
}

fn setup(index: usize) -> Result<Setup, i32> {
    let Some(address) = STEPS.check(1, "device_list", edu::find_translated(index))? else {
        println!("isolation: no edu behind an IOMMU here");
        return Err(NO_DEVICE);
    };
    let edu = STEPS.check(2, "device_open", Edu::open(address))?;
    let ioas = STEPS.check(3, "ioas_alloc", ioas_alloc())?;
    let hwpt = STEPS.check(4, "device_attach", device_attach(edu.id, ioas))?;
    Ok(Setup { edu, ioas, hwpt })
}

fn buffer(va: *mut u8) -> &'static mut [u8] {
    // SAFETY: `va` is a page of this task's memory (mem_alloc, or the page
    // the kernel allocated for it before it started).
    unsafe { core::slice::from_raw_parts_mut(va, PAGE) }
}

/// Yields until the other task has held the edu at `address` and let it go
/// (it exited or was torn down).
fn wait_for_other_task(address: PciAddress) -> Result<(), i32> {
    let deadline = now_ns().saturating_add(WAIT_NS);
    for wanted in ["claimed by another task", "free"] {
        while edu::holder(address) != wanted {
            if now_ns() > deadline {
                println!("isolation: {address} never became {wanted}");
                return Err(40);
            }
            yield_now();
        }
    }
    Ok(())
}

/// DMA both ways through `iova`: the page must come back as it went.
fn round_trip(setup: &Setup, va: *mut u8, iova: u64, number: i32) -> Result<(), i32> {
    STEPS.check(number, "DMA to the device", setup.edu.dma(iova, false))?;
    buffer(va).fill(0);
    STEPS.check(number, "DMA back", setup.edu.dma(iova, true))?;
    if !all_bytes_are(buffer(va), PATTERN) {
        println!("isolation: the round trip through IOVA {iova:#x} lost data");
        return Err(number);
    }
    Ok(())
}

fn run(role: u64, index: usize, address: u64) -> Result<(), i32> {
    match role {
        OWNER => owner(index, address as *mut u8),
        PROBER => prober(index, address),
        VICTIM => victim(index),
        WORKER => worker(index),
        FAULTER => faulter(index),
        _ => {
            println!("isolation: unknown role {role}");
            Err(99)
        }
    }
}

fn owner(index: usize, va: *mut u8) -> Result<(), i32> {
    let setup = setup(index)?;
    buffer(va).fill(PATTERN);
    let iova = STEPS.check(
        5,
        "ioas_map",
        ioas_map(setup.ioas, va as u64, PAGE as u64, None),
    )?;
    let mut extra = [0u32; EXTRA_IOASES as usize];
    for id in &mut extra {
        *id = STEPS.check(6, "ioas_alloc (extra)", ioas_alloc())?;
    }
    round_trip(&setup, va, iova, 7)?;
    println!(
        "isolation: owner's buffer at IOVA {iova:#x}, objects up to id {}",
        extra[extra.len() - 1]
    );
    // Let the prober do its worst; it holds the other edu until it exits.
    let Some(other) = STEPS.check(8, "device_list", edu::find_translated(1 - index.min(1)))? else {
        return Err(8);
    };
    wait_for_other_task(other)?;
    if !all_bytes_are(buffer(va), PATTERN) {
        println!("isolation: the owner's buffer changed while the prober ran");
        return Err(9);
    }
    round_trip(&setup, va, iova, 10)?;
    for id in extra {
        let mut ranges = IoasIovaRanges {
            size: arg_size::<IoasIovaRanges>(),
            ioas_id: id,
            ..Default::default()
        };
        // No room for ranges: EMSGSIZE says the IOAS is there.
        if iommufd(Command::IoasIovaRanges, &mut ranges) != Err(Errno::EMSGSIZE) {
            println!("isolation: the owner's IOAS {id} is gone");
            return Err(11);
        }
        STEPS.check(12, "destroy (extra)", destroy(id))?;
    }
    println!("isolation: owner: buffer, objects and DMA intact after the prober");
    Ok(())
}

fn prober(index: usize, owner_phys: u64) -> Result<(), i32> {
    let setup = setup(index)?;
    let own = STEPS.check(5, "mem_alloc", mem_alloc(1))?;
    buffer(own).fill(0x5B);
    let own_iova = STEPS.check(
        6,
        "ioas_map",
        ioas_map(setup.ioas, own as u64, PAGE as u64, None),
    )?;
    // The owner's edu is taken.
    let owner_edu = STEPS
        .check(7, "device_list", edu::find_translated(1 - index.min(1)))?
        .ok_or(7)?;
    match Edu::open(owner_edu) {
        Err(Errno::EBUSY) => println!("isolation: opening the owner's edu: EBUSY"),
        other => {
            println!(
                "isolation: opening the owner's edu: {:?}",
                other.map(|e| e.id)
            );
            return Err(7);
        }
    }
    // Ids that exist only in the owner's table name nothing here.
    let mut own_ids = 0;
    for id in 1..=PROBED_IDS {
        if id == setup.edu.id || id == setup.ioas || id == setup.hwpt {
            own_ids += 1;
            continue;
        }
        let mut ranges = IoasIovaRanges {
            size: arg_size::<IoasIovaRanges>(),
            ioas_id: id,
            ..Default::default()
        };
        let results = (iommufd(Command::IoasIovaRanges, &mut ranges), destroy(id));
        if results != (Err(Errno::ENOENT), Err(Errno::ENOENT)) {
            println!("isolation: id {id} named something: {results:?}");
            return Err(8);
        }
    }
    println!("isolation: prober: ids 1..={PROBED_IDS} besides its own {own_ids}: ENOENT");
    // Hostile DMA: the owner's buffer by physical address (as a device
    // without an IOMMU would reach it), both directions.
    let targets = [owner_phys, own_iova + 16 * PAGE as u64];
    for target in targets {
        // Write: the device buffer holds 0x5B... from the task's own page.
        STEPS.check(9, "DMA from its own page", setup.edu.dma(own_iova, false))?;
        STEPS.check(9, "hostile DMA to RAM", setup.edu.dma(target, true))?;
        // Read: what the device fetches from there comes back to its own page.
        STEPS.check(10, "hostile DMA from RAM", setup.edu.dma(target, false))?;
        buffer(own).fill(0xCC);
        STEPS.check(10, "DMA to its own page", setup.edu.dma(own_iova, true))?;
        if !all_bytes_are(buffer(own), 0) {
            println!("isolation: the device read something at {target:#x}");
            return Err(10);
        }
    }
    let mut records = [FaultRecord::default(); 8];
    let read = STEPS.check(11, "fault_read", fault_read(setup.hwpt, &mut records))?;
    let reported = records[..read]
        .iter()
        .any(|record| record.iova == owner_phys);
    println!(
        "isolation: prober: DMA at the owner's physical page {owner_phys:#x} blocked both ways; fault records: {}, one at that address: {reported}",
        read
    );
    Ok(())
}

fn victim(index: usize) -> Result<(), i32> {
    let setup = setup(index)?;
    let va = STEPS.check(5, "mem_alloc", mem_alloc(1))?;
    buffer(va).fill(PATTERN);
    let iova = STEPS.check(
        6,
        "ioas_map",
        ioas_map(setup.ioas, va as u64, PAGE as u64, None),
    )?;
    round_trip(&setup, va, iova, 7)?;
    println!("isolation: victim: attached, buffer at IOVA {iova:#x}; now faulting on purpose");
    // SAFETY: not sound, on purpose: the kernel is not mapped for the task,
    // so the load faults and the kernel kills this task.
    let value = unsafe { core::ptr::read_volatile(KERNEL_ADDRESS as *const u64) };
    println!("isolation: victim read kernel memory: {value:#x}");
    Err(20)
}

fn worker(index: usize) -> Result<(), i32> {
    let setup = setup(index)?;
    let va = STEPS.check(5, "mem_alloc", mem_alloc(1))?;
    buffer(va).fill(PATTERN);
    let iova = STEPS.check(
        6,
        "ioas_map",
        ioas_map(setup.ioas, va as u64, PAGE as u64, None),
    )?;
    let victim_edu = STEPS
        .check(7, "device_list", edu::find_translated(1 - index.min(1)))?
        .ok_or(7)?;
    wait_for_other_task(victim_edu)?;
    round_trip(&setup, va, iova, 8)?;
    println!("isolation: worker: DMA works after the victim was killed");
    Ok(())
}

fn faulter(index: usize) -> Result<(), i32> {
    let setup = setup(index)?;
    let va = STEPS.check(5, "mem_alloc", mem_alloc(1))?;
    let iova = STEPS.check(
        6,
        "ioas_map",
        ioas_map(setup.ioas, va as u64, PAGE as u64, None),
    )?;
    // An IOVA nothing maps: blocked, and a fault the task leaves unread.
    let unmapped = iova + 64 * PAGE as u64;
    STEPS.check(7, "DMA to an unmapped IOVA", setup.edu.dma(unmapped, true))?;
    println!("isolation: faulter: DMA to IOVA {unmapped:#x} faulted; not reading it");
    let other = STEPS
        .check(8, "device_list", edu::find_translated(1 - index.min(1)))?
        .ok_or(8)?;
    wait_for_other_task(other)?;
    Ok(())
}
