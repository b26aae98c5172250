//! Attacks on device ownership, each the way a hostile task would try it;
//! the kernel must make every one fail. The task argument says which attack
//! (bits 63:56) on which translated edu (bits 55:48).
//!
//! - STALE_BAR: opens its edu, destroys the device object, and reads the
//!   registers again through the old BAR window. The window must be gone:
//!   the read is a page fault that kills the task (exit 10 if it reads).
//! - LEAVE_DMA: opens its edu, loads a secret into the device's buffer by
//!   DMA, starts a transfer of the buffer to an IOVA and exits at once,
//!   leaving the transfer in flight and the secret in the device.
//! - HEIR: run after LEAVE_DMA, opens the same edu and maps its own zeroed
//!   pages at that IOVA. Neither the transfer in flight (exit 20) nor the
//!   device's buffer (exit 21) may bring it the secret.
//! - CYCLES: opens and destroys its edu many times, with a failed open (a
//!   read-only argument struct) first: every open must succeed and land in
//!   the same register window (the kernel reuses it, exit 31), and nothing
//!   may run out (interrupt numbers, exit 30).
//! - INJECT_FROM_USER / INJECT_FROM_KERNEL: aims its edu at the x86
//!   interrupt window (0xFEE0_0000) with messages of its choosing: the
//!   system-call vector, the spurious vector, exception vectors 3, 8, 13 and
//!   14 (the last three's stubs expect a CPU error code, which a message
//!   never pushes) and 16-31, vector 2 with fixed delivery and an NMI, each
//!   landing while the task polls in user mode or while the kernel
//!   idles in its `irq_wait`. The task must live on, unharmed (exit 0), and
//!   so must the kernel; the kernel counts what it dropped.
//! - OPEN_EVERYTHING: tries to open every function that is not an edu
//!   (host bridges, the LPC bridge and its AHCI and SMBus siblings, the
//!   AMD-Vi's own function): each open must fail, and `device_list` must
//!   call each one refused (exit 40/41), while the edus stay openable.
//! - OPEN_MSI_DEVICE: opens its edu (it signals MSIs) and reports whether
//!   the kernel refused it for unisolated interrupts (EPERM, and the
//!   UNSAFE_INTERRUPTS flag in `device_list`) or handed it out; the kernel
//!   test knows which the platform must do.
//! - GROUP_HOLDER / GROUP_CONTENDER / GROUP_HEIR (the bridge
//!   configurations: two edus behind one PCIe-to-PCI bridge share its
//!   requester id, so they are one isolation group): the holder opens the
//!   first and DMAs through the alias; the contender, running while the
//!   holder waits for its DMA, must find both functions taken (EBUSY, exit
//!   60/61); after both, the heir opens the second and DMAs through the alias.
//! - GROUP_WHOLE: one task owns a whole group: it opens both edus behind
//!   the bridge (the second open must work: exit 62), attaches the first; the
//!   second may join only the first's IOAS (EINVAL elsewhere: 63), then each
//!   DMAs and must get exactly its own completion interrupt although both
//!   signal with the bridge's requester id (64/65); opening a function twice
//!   is EBUSY (66).
//! - IRQ_VICTIM / IRQ_SPOOFER: the victim opens its edu and waits for its
//!   interrupt without ever starting its device; the spoofer aims its own edu
//!   at the interrupt doorbells with the numbers the victim's interrupt is
//!   likely to have (x86: the first vectors the kernel hands out; aarch64:
//!   the first GICv2m SPIs, and the first ITS EventIDs). Where interrupts
//!   are isolated, the victim's wait must time out (exit 70 if it did not).
//! - HOG_LIMITS: allocates IOASes until the kernel refuses, then maps one
//!   page at IOVAs 2 MiB apart until it refuses: both must end in ENOSPC
//!   (exit 80/81 on any other answer), with the kernel and the other tasks
//!   alive. Runs without a device (it needs none).
//! - HOG_SYSCALLS: makes cheap system calls in a loop, never yielding; a
//!   call must not grant a fresh time slice, so the other tasks still run.
//! - HOG_KERNEL_TIME: calls `ioas_iova_ranges` forever with a struct that
//!   claims a whole page of zero tail (the kernel reads and checks it all,
//!   then finds no IOAS): nearly all its time is the kernel's, and its CPU
//!   budget must still end it.
//! - FAIL_NTH: opens its edu, attaches it to an IOAS and maps four pages
//!   2 MiB apart, while the kernel lets it take only a few pages of IO page
//!   tables and device structures, or of kernel heap: every step either
//!   works or fails with ENOMEM (exit 90 on any other answer), and it says
//!   how far it got.
//! - HOG_HEAP: allocates IOASes until the kernel refuses, with a heap quota
//!   small enough to be reached before the object limit: ENOMEM (exit 86 on
//!   any other answer), the `limits` call must show the heap quota reached
//!   (87), `mem_alloc` must be refused as well (89), and after one
//!   `destroy` an `ioas_alloc` must work again (88).
//! - HOG_DOMAINS: opens its edu and allocates paging HWPTs over one IOAS
//!   until refused: ENOSPC (exit 91 on any other answer) at its domain
//!   limit, which `limits` must report reached (92), well before the unit's
//!   domain ids run out for the other tasks.
//! - HOG_TABLES: attaches its edu and maps one page at IOVAs 2 MiB apart,
//!   each needing a page-table page of its own, until refused: ENOMEM (exit
//!   84 on any other answer) once its page-table pages reach its limit.
//!
//! Exit codes: 0 = the attack failed as it must, 77 = no edu behind an IOMMU,
//! otherwise the number of the failed step.
#![no_std]
#![no_main]

use user_programs::abi::syscall as nr;
use user_programs::abi::{DeviceListEntry, DeviceListFlags, DeviceOpen, Errno, HwptAllocFlags};
use user_programs::edu::{self, Edu, PciAddress};
use user_programs::iommu::{
    all_bytes_are, destroy, device_attach, hwpt_alloc, ioas_alloc, ioas_map,
};
use user_programs::{Steps, argument, check, entry, irq_wait, limits, mem_alloc, println, syscall};

entry!(main);

const STEPS: Steps = Steps("hostile");

const STALE_BAR: u64 = 1;
const LEAVE_DMA: u64 = 2;
const HEIR: u64 = 3;
const CYCLES: u64 = 4;
const INJECT_FROM_USER: u64 = 5;
const INJECT_FROM_KERNEL: u64 = 6;
const OPEN_EVERYTHING: u64 = 7;
const OPEN_MSI_DEVICE: u64 = 8;
const GROUP_HOLDER: u64 = 9;
const GROUP_CONTENDER: u64 = 10;
const GROUP_HEIR: u64 = 11;
const PATTERN: u8 = 0xA7;
const IRQ_VICTIM: u64 = 12;
const IRQ_SPOOFER: u64 = 13;
/// Longer than the spoofer needs for all its messages.
const VICTIM_WAIT_NS: u64 = 3_000_000_000;
const HOG_LIMITS: u64 = 14;
const HOG_SYSCALLS: u64 = 15;
const HOG_TABLES: u64 = 16;
const HOG_KERNEL_TIME: u64 = 17;
const FAIL_NTH: u64 = 18;
const HOG_HEAP: u64 = 19;
const HOG_DOMAINS: u64 = 20;
const GROUP_WHOLE: u64 = 21;
/// The syscall hog's calls: far more than one time slice's worth.
const HOG_CALLS: u32 = 300_000;
const NO_DEVICE: i32 = user_programs::abi::NO_DEVICE_EXIT_CODE;
const PAGE: usize = 4096;
/// What LEAVE_DMA leaves behind.
const SECRET: u8 = 0x5E;
/// The IOVA both LEAVE_DMA and HEIR map their first page at.
const IOVA: u64 = 16 << 20;
/// Longer than one edu transfer (100 ms of virtual time).
const SETTLE_NS: u64 = 400_000_000;
/// More opens than the GICv2m frame has SPIs (64 on QEMU's `virt`).
const OPEN_CYCLES: u32 = 80;
/// The edu identification register's low byte.
const EDU_MAGIC: u32 = 0xED;

fn main() -> i32 {
    let arg = argument();
    let (attack, index) = (arg >> 56, ((arg >> 48) & 0xFF) as usize);
    // The hogs need no device.
    match attack {
        HOG_LIMITS => return hog_limits().map_or_else(|code| code, |()| 0),
        HOG_SYSCALLS => return hog_syscalls(),
        HOG_KERNEL_TIME => return hog_kernel_time(),
        HOG_HEAP => return hog_heap().map_or_else(|code| code, |()| 0),
        _ => {}
    }
    let Ok(Some(address)) = edu::find_translated(index) else {
        println!("hostile: no edu behind an IOMMU here");
        return NO_DEVICE;
    };
    let result = match attack {
        STALE_BAR => stale_bar(address),
        LEAVE_DMA => leave_dma(address),
        HEIR => heir(address),
        CYCLES => cycles(address),
        INJECT_FROM_USER => inject(address, false),
        INJECT_FROM_KERNEL => inject(address, true),
        OPEN_EVERYTHING => open_everything(),
        OPEN_MSI_DEVICE => open_msi_device(address),
        GROUP_HOLDER | GROUP_HEIR => round_trip(address),
        GROUP_CONTENDER => contend(address, index),
        GROUP_WHOLE => whole_group(address, index),
        IRQ_VICTIM => victim(address),
        IRQ_SPOOFER => spoof(address),
        HOG_TABLES => hog_tables(address),
        HOG_DOMAINS => hog_domains(address),
        FAIL_NTH => fail_nth(address),
        _ => {
            println!("hostile: unknown attack {attack}");
            Err(99)
        }
    };
    match result {
        Ok(()) => 0,
        Err(code) => code,
    }
}

fn page(va: *mut u8) -> &'static mut [u8] {
    // SAFETY: `va` is a page of this task's memory from mem_alloc.
    unsafe { core::slice::from_raw_parts_mut(va, PAGE) }
}

fn stale_bar(address: PciAddress) -> Result<(), i32> {
    let edu = STEPS.check(1, "device_open", Edu::open(address))?;
    let id = edu.identification();
    if id & 0xFF != EDU_MAGIC {
        println!("hostile: the open edu reads id {id:#x}");
        return Err(2);
    }
    STEPS.check(3, "destroy", destroy(edu.id))?;
    println!(
        "hostile: device destroyed; reading its registers at {:#x}",
        edu.registers() as u64
    );
    let stale = edu.identification();
    println!("hostile: the destroyed device's registers still answer: id {stale:#x}");
    Err(10)
}

/// An opened edu attached to a fresh IOAS that maps `pages` zeroed pages
/// from [`IOVA`] on; returns the edu and the first page.
fn attached(address: PciAddress, pages: usize) -> Result<(Edu, *mut u8), i32> {
    let edu = STEPS.check(1, "device_open", Edu::open(address))?;
    let ioas = STEPS.check(2, "ioas_alloc", ioas_alloc())?;
    let va = STEPS.check(3, "mem_alloc", mem_alloc(pages))?;
    STEPS.check(
        4,
        "ioas_map",
        ioas_map(ioas, va as u64, (pages * PAGE) as u64, Some(IOVA)),
    )?;
    STEPS.check(5, "device_attach", device_attach(edu.id, ioas))?;
    Ok((edu, va))
}

fn leave_dma(address: PciAddress) -> Result<(), i32> {
    let (edu, va) = attached(address, 1)?;
    page(va).fill(SECRET);
    STEPS.check(6, "DMA of the secret to the device", edu.dma(IOVA, false))?;
    page(va).fill(0);
    edu.start_polled(IOVA, true);
    println!("hostile: secret in the device, a transfer in flight; exiting");
    Ok(())
}

fn heir(address: PciAddress) -> Result<(), i32> {
    let (edu, va) = attached(address, 2)?;
    let second = va.wrapping_add(PAGE);
    // Let anything the previous owner left running finish.
    match irq_wait(edu.id, SETTLE_NS) {
        Err(Errno::ETIMEDOUT) => {}
        other => println!("hostile: heir: an interrupt it never asked for: {other:?}"),
    }
    if !all_bytes_are(page(va), 0) {
        println!("hostile: heir: the previous owner's transfer in flight landed here");
        return Err(20);
    }
    STEPS.check(7, "DMA from the device", edu.dma(IOVA + PAGE as u64, true))?;
    if page(second).contains(&SECRET) {
        println!("hostile: heir: the device still holds the previous owner's data");
        return Err(21);
    }
    println!("hostile: heir: nothing of the previous owner reached this task");
    Ok(())
}

fn cycles(address: PciAddress) -> Result<(), i32> {
    if let Some(open) = edu::read_only_open(address) {
        let result = check(syscall(
            nr::DEVICE_OPEN,
            [open as *const DeviceOpen as u64, 0, 0, 0, 0, 0],
        ));
        if result != Err(Errno::EFAULT) {
            println!("hostile: device_open with a read-only struct: {result:?}");
            return Err(29);
        }
    }
    let mut window = None;
    for cycle in 0..OPEN_CYCLES {
        let edu = match Edu::open(address) {
            Ok(edu) => edu,
            Err(errno) => {
                println!("hostile: open {cycle} failed: {errno:?}");
                return Err(30);
            }
        };
        let at = edu.registers() as u64;
        if *window.get_or_insert(at) != at {
            println!("hostile: open {cycle} mapped the registers at {at:#x}, not {window:#x?}");
            return Err(31);
        }
        if edu.identification() & 0xFF != EDU_MAGIC {
            println!("hostile: open {cycle} reads a wrong id");
            return Err(32);
        }
        STEPS.check(33, "destroy", destroy(edu.id))?;
    }
    println!("hostile: {OPEN_CYCLES} opens and destroys, all in one register window");
    Ok(())
}

/// The x86 interrupt window: an MSI is a 4-byte write here (Intel SDM Vol.
/// 3A §11.11.1; destination APIC 0 in bits 19:12).
const MSI_WINDOW: u64 = 0xFEE0_0000;
/// MSI data: the vector in bits 7:0, the delivery mode in bits 10:8
/// (SDM Vol. 3A §11.11.2; 0b100 = NMI).
const DELIVERY_NMI: u32 = 0b100 << 8;
/// What the hostile device sends: exception vectors below 16 (whose stubs
/// expect a CPU error code, for 8, 13 and 14, which a message never pushes;
/// 2, the NMI vector, with fixed delivery), the system-call gate, the
/// spurious vector, the reserved vectors 16-31 and an NMI.
const MESSAGES: [u32; 15] = [
    3,
    8,
    13,
    14,
    2,
    0xF0,
    0xFF,
    16,
    17,
    18,
    21,
    29,
    30,
    31,
    DELIVERY_NMI | 2,
];

fn inject(address: PciAddress, wait_in_kernel: bool) -> Result<(), i32> {
    let (edu, va) = attached(address, 1)?;
    let words = va as *mut u32;
    for (index, message) in MESSAGES.iter().enumerate() {
        // SAFETY: the page is this task's and holds all the messages.
        unsafe { words.add(index).write_volatile(*message) };
    }
    STEPS.check(6, "DMA of the messages to the device", edu.dma(IOVA, false))?;
    for (index, message) in MESSAGES.iter().enumerate() {
        let offset = (index * 4) as u64;
        let sent = if wait_in_kernel {
            edu.start_send(offset, MSI_WINDOW, 4);
            // The message lands while the kernel idles for this task.
            let _ = irq_wait(edu.id, SETTLE_NS);
            edu.wait_polled()
        } else {
            edu.send_polled(offset, MSI_WINDOW, 4)
        };
        STEPS.check(7, "DMA of a message to the interrupt window", sent)?;
        println!("hostile: sent message {message:#x}; still running");
    }
    println!("hostile: every message sent; this task and the kernel live on");
    Ok(())
}

fn open_everything() -> Result<(), i32> {
    let mut entries = [DeviceListEntry::default(); 32];
    let list = STEPS.check(1, "device_list", edu::device_list(&mut entries))?;
    let mut refused = 0;
    for entry in list {
        let address = PciAddress(entry.pci_address);
        let flags = DeviceListFlags::from_bits_retain(entry.flags);
        let is_edu = entry.vendor_id == edu::VENDOR_ID && entry.device_id == edu::DEVICE_ID;
        if is_edu {
            if flags.contains(DeviceListFlags::REFUSED) {
                println!("hostile: the edu at {address} is refused: {flags:?}");
                return Err(42);
            }
            continue;
        }
        if let Ok(opened) = Edu::open(address) {
            println!(
                "hostile: opened {address} ({:04x}:{:04x}) as device {}",
                entry.vendor_id, entry.device_id, opened.id
            );
            return Err(40);
        }
        if !flags.contains(DeviceListFlags::REFUSED) {
            println!("hostile: {address} cannot be opened but is not listed as refused");
            return Err(41);
        }
        println!("hostile: {address} refused: {flags:?}");
        refused += 1;
    }
    println!("hostile: all {refused} functions that are not edus refused");
    Ok(())
}

fn open_msi_device(address: PciAddress) -> Result<(), i32> {
    let mut entries = [DeviceListEntry::default(); 32];
    let list = STEPS.check(1, "device_list", edu::device_list(&mut entries))?;
    let flags = list
        .iter()
        .find(|entry| entry.pci_address == address.0)
        .map(|entry| DeviceListFlags::from_bits_retain(entry.flags))
        .ok_or(2)?;
    let listed_unsafe =
        flags.contains(DeviceListFlags::REFUSED | DeviceListFlags::UNSAFE_INTERRUPTS);
    match Edu::open(address) {
        Err(Errno::EPERM) if listed_unsafe => {
            println!("hostile: {address}: refused for unisolated interrupts");
            Ok(())
        }
        Ok(edu) if !listed_unsafe => {
            println!("hostile: {address}: opened with isolated interrupts");
            STEPS.check(3, "destroy", destroy(edu.id))
        }
        other => {
            println!(
                "hostile: {address}: open {:?} but listed {flags:?}",
                other.map(|edu| edu.id)
            );
            Err(50)
        }
    }
}

/// Opens the edu at `address` and moves a page through it both ways.
fn round_trip(address: PciAddress) -> Result<(), i32> {
    let (edu, va) = attached(address, 1)?;
    page(va).fill(PATTERN);
    STEPS.check(6, "DMA to the device", edu.dma(IOVA, false))?;
    page(va).fill(0);
    STEPS.check(7, "DMA back", edu.dma(IOVA, true))?;
    if !all_bytes_are(page(va), PATTERN) {
        println!("hostile: the round trip through {address} lost data");
        return Err(8);
    }
    println!("hostile: {address}: DMA through its group's requester id works");
    Ok(())
}

/// Tries the edu at `address` and the one before it in the list (the other
/// function of the same group): both must be taken.
fn contend(address: PciAddress, index: usize) -> Result<(), i32> {
    let Ok(Some(sibling)) = edu::find_translated(index - 1) else {
        return Err(62);
    };
    for (number, function) in [(60, address), (61, sibling)] {
        match Edu::open(function) {
            Err(Errno::EBUSY) => println!("hostile: {function}: EBUSY, its group is held"),
            other => {
                println!("hostile: {function}: {:?}", other.map(|edu| edu.id));
                return Err(number);
            }
        }
    }
    Ok(())
}

fn victim(address: PciAddress) -> Result<(), i32> {
    let edu = STEPS.check(1, "device_open", Edu::open(address))?;
    match irq_wait(edu.id, VICTIM_WAIT_NS) {
        Err(Errno::ETIMEDOUT) => {
            println!("hostile: victim: no interrupt, as its device never ran");
            Ok(())
        }
        other => {
            println!("hostile: victim: interrupted although its device never ran: {other:?}");
            Err(70)
        }
    }
}

/// The (doorbell, data) pairs the spoofer's device writes.
#[cfg(target_arch = "x86_64")]
const SPOOFS: &[(u64, u32)] = &[
    (MSI_WINDOW, 0x30),
    (MSI_WINDOW, 0x31),
    (MSI_WINDOW, 0x32),
    (MSI_WINDOW, 0x33),
];
/// QEMU virt: the GICv2m frame's MSI_SETSPI_NS (SPIs from 80) and the ITS's
/// GITS_TRANSLATER (EventIDs).
#[cfg(target_arch = "aarch64")]
const SPOOFS: &[(u64, u32)] = &[
    (0x0802_0040, 80),
    (0x0802_0040, 81),
    (0x0802_0040, 82),
    (0x0802_0040, 83),
    (0x0809_0040, 0),
    (0x0809_0040, 1),
    (0x0809_0040, 2),
    (0x0809_0040, 3),
];

fn spoof(address: PciAddress) -> Result<(), i32> {
    let (edu, va) = attached(address, 1)?;
    let words = va as *mut u32;
    for (index, (_, data)) in SPOOFS.iter().enumerate() {
        // SAFETY: the page is this task's and holds every message.
        unsafe { words.add(index).write_volatile(*data) };
    }
    STEPS.check(6, "DMA of the messages to the device", edu.dma(IOVA, false))?;
    for (index, (doorbell, data)) in SPOOFS.iter().enumerate() {
        let sent = edu.send_polled((index * 4) as u64, *doorbell, 4);
        STEPS.check(7, "DMA of a message to a doorbell", sent)?;
        println!("hostile: spoofer: wrote {data:#x} to {doorbell:#x}");
    }
    Ok(())
}

/// The `n`-th of the IOVAs the hogs map one page at: 2 MiB apart from 1 GiB
/// up, so that each needs a last-level page table of its own.
fn sparse_iova(n: u64) -> u64 {
    (1 << 30) + n * (2 << 20)
}

fn hog_limits() -> Result<(), i32> {
    // The first IOAS takes the maps below.
    let first = STEPS.check(83, "ioas_alloc", ioas_alloc())?;
    let mut ioases = 1u32;
    loop {
        match ioas_alloc() {
            Ok(_) => ioases += 1,
            Err(Errno::ENOSPC) => break,
            Err(other) => {
                println!("hostile: hog: ioas_alloc {ioases}: {other:?}");
                return Err(80);
            }
        }
    }
    println!("hostile: hog: ENOSPC after {ioases} IOASes");
    let page = STEPS.check(82, "mem_alloc", mem_alloc(1))?;
    let mut areas = 0u64;
    loop {
        match ioas_map(first, page as u64, PAGE as u64, Some(sparse_iova(areas))) {
            Ok(_) => areas += 1,
            Err(Errno::ENOSPC) => break,
            Err(other) => {
                println!("hostile: hog: map {areas}: {other:?}");
                return Err(81);
            }
        }
    }
    println!("hostile: hog: ENOSPC after {areas} areas");
    Ok(())
}

fn hog_heap() -> Result<(), i32> {
    let mut last = None;
    let mut ioases = 0u32;
    loop {
        match ioas_alloc() {
            Ok(id) => {
                ioases += 1;
                last = Some(id);
            }
            Err(Errno::ENOMEM) => break,
            Err(other) => {
                println!("hostile: heap hog: ioas_alloc {ioases}: {other:?}");
                return Err(86);
            }
        }
    }
    let report = STEPS.check(87, "limits", limits())?;
    let heap = report.heap_bytes;
    println!(
        "hostile: heap hog: ENOMEM after {ioases} IOASes, heap {} of {} bytes, {} objects",
        heap.used, heap.limit, report.objects.used
    );
    if heap.used < heap.limit || report.objects.used != u64::from(ioases) {
        return Err(87);
    }
    // Every call that may leave the kernel holding more is refused.
    match mem_alloc(1) {
        Err(Errno::ENOMEM) => {}
        other => {
            println!("hostile: heap hog: mem_alloc at the quota: {other:?}");
            return Err(89);
        }
    }
    STEPS.check(88, "destroy", destroy(last.ok_or(88)?))?;
    STEPS.check(88, "ioas_alloc after a destroy", ioas_alloc())?;
    println!("hostile: heap hog: an IOAS again after one destroy");
    Ok(())
}

fn hog_domains(address: PciAddress) -> Result<(), i32> {
    let edu = STEPS.check(1, "device_open", Edu::open(address))?;
    let ioas = STEPS.check(2, "ioas_alloc", ioas_alloc())?;
    let mut domains = 0u32;
    loop {
        match hwpt_alloc(HwptAllocFlags::empty(), edu.id, ioas, None) {
            Ok(_) => domains += 1,
            Err(Errno::ENOSPC) => break,
            Err(other) => {
                println!("hostile: domain hog: hwpt_alloc {domains}: {other:?}");
                return Err(91);
            }
        }
    }
    let report = STEPS.check(92, "limits", limits())?;
    println!(
        "hostile: domain hog: ENOSPC after {domains} HWPTs, {} of {} domains",
        report.domains.used, report.domains.limit
    );
    if report.domains.used != u64::from(domains) || report.domains.used != report.domains.limit {
        return Err(92);
    }
    Ok(())
}

fn whole_group(address: PciAddress, index: usize) -> Result<(), i32> {
    let first = STEPS.check(1, "device_open", Edu::open(address))?;
    let ioas = STEPS.check(2, "ioas_alloc", ioas_alloc())?;
    let va = STEPS.check(3, "mem_alloc", mem_alloc(1))?;
    STEPS.check(
        4,
        "ioas_map",
        ioas_map(ioas, va as u64, PAGE as u64, Some(IOVA)),
    )?;
    let first_hwpt = STEPS.check(5, "device_attach", device_attach(first.id, ioas))?;
    let Ok(Some(mate_address)) = edu::find_translated(index + 1) else {
        println!("hostile: whole group: no second edu");
        return Err(62);
    };
    let mate = STEPS.check(
        62,
        "device_open of the group's second function",
        Edu::open(mate_address),
    )?;
    let elsewhere = STEPS.check(63, "ioas_alloc", ioas_alloc())?;
    match device_attach(mate.id, elsewhere) {
        Err(Errno::EINVAL) => {}
        other => {
            println!(
                "hostile: whole group: the second function attached apart from the first: {other:?}"
            );
            return Err(63);
        }
    }
    let joined = STEPS.check(
        63,
        "device_attach to the first's IOAS",
        device_attach(mate.id, ioas),
    )?;
    if joined != first_hwpt {
        return Err(63);
    }
    page(va).fill(PATTERN);
    STEPS.check(64, "DMA to the first", first.dma(IOVA, false))?;
    STEPS.check(64, "DMA to the second", mate.dma(IOVA, false))?;
    // Each completion interrupt reached its own function's waiter only.
    match irq_wait(first.id, 0) {
        Err(Errno::ETIMEDOUT) => {}
        other => {
            println!(
                "hostile: whole group: the first function saw the second's interrupt: {other:?}"
            );
            return Err(65);
        }
    }
    page(va).fill(0);
    STEPS.check(64, "DMA back from the second", mate.dma(IOVA, true))?;
    if !all_bytes_are(page(va), PATTERN) {
        return Err(64);
    }
    match Edu::open(address) {
        Err(Errno::EBUSY) => {}
        other => {
            println!(
                "hostile: whole group: a function opened twice: {:?}",
                other.map(|edu| edu.id)
            );
            return Err(66);
        }
    }
    println!("hostile: whole group: both functions DMA and signal through one requester id");
    Ok(())
}

fn hog_syscalls() -> i32 {
    for _ in 0..HOG_CALLS {
        // An irq_wait on a device id wider than 32 bits: EINVAL at once.
        let _ = syscall(nr::IRQ_WAIT, [1 << 40, 0, 0, 0, 0, 0]);
    }
    println!("hostile: syscall hog done");
    0
}

fn hog_tables(address: PciAddress) -> Result<(), i32> {
    let edu = STEPS.check(1, "device_open", Edu::open(address))?;
    let ioas = STEPS.check(2, "ioas_alloc", ioas_alloc())?;
    STEPS.check(3, "device_attach", device_attach(edu.id, ioas))?;
    let page = STEPS.check(4, "mem_alloc", mem_alloc(1))?;
    let mut maps = 0u64;
    loop {
        match ioas_map(ioas, page as u64, PAGE as u64, Some(sparse_iova(maps))) {
            Ok(_) => maps += 1,
            Err(Errno::ENOMEM) => break,
            Err(other) => {
                println!("hostile: table hog: map {maps}: {other:?}");
                return Err(84);
            }
        }
    }
    println!("hostile: table hog: ENOMEM after {maps} maps");
    Ok(())
}

fn hog_kernel_time() -> i32 {
    let Ok(page) = mem_alloc(1) else {
        return 85;
    };
    // SAFETY: the page is this task's, fresh and zeroed; the size field is
    // the struct's first word.
    unsafe { (page as *mut u32).write_volatile(user_programs::abi::MAX_SIZE) };
    loop {
        let _ = syscall(nr::IOAS_IOVA_RANGES, [page as u64, 0, 0, 0, 0, 0]);
    }
}

/// What `fail_nth` makes of one step's answer: go on, stop (ENOMEM), or
/// fail (anything else).
fn step_or_enomem<T>(what: &str, result: Result<T, Errno>) -> Result<Option<T>, i32> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(Errno::ENOMEM) => {
            println!("hostile: fail-nth: stopped at {what}");
            Ok(None)
        }
        Err(other) => {
            println!("hostile: fail-nth: {what}: {other:?}");
            Err(90)
        }
    }
}

fn fail_nth(address: PciAddress) -> Result<(), i32> {
    let Some(edu) = step_or_enomem("device_open", Edu::open(address))? else {
        return Ok(());
    };
    // A heap quota can stop any step; a page limit only those that take
    // IO page tables or device structures.
    let Some(ioas) = step_or_enomem("ioas_alloc", ioas_alloc())? else {
        return Ok(());
    };
    if step_or_enomem("device_attach", device_attach(edu.id, ioas))?.is_none() {
        return Ok(());
    }
    let Some(va) = step_or_enomem("mem_alloc", mem_alloc(4))? else {
        return Ok(());
    };
    for page in 0..4u64 {
        let mapped = ioas_map(
            ioas,
            va as u64 + page * PAGE as u64,
            PAGE as u64,
            Some(sparse_iova(page)),
        );
        if step_or_enomem("ioas_map", mapped)?.is_none() {
            return Ok(());
        }
    }
    println!("hostile: fail-nth: every step done");
    Ok(())
}
