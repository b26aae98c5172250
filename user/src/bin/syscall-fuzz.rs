//! A seeded stream of system calls with valid, boundary and garbage arguments,
//! each checked against a reference model of what the kernel must answer.
//! About half of them are iommufd calls on IOASes (alloc, destroy, map with a
//! fixed or automatic IOVA, unmap, iova_ranges, irq_wait, truncated, oversized
//! (up to and past the page cap) and misplaced argument structs, ids of no
//! object or of the task's device, and its device destroyed and opened again),
//! checked step by step against a model of the IOAS semantics written from
//! the rules (object ids, areas, pins).
//!
//! The seed is the task's argument (0 picks a fixed default); the number of
//! calls is [`CALLS`]. On the first disagreement the program prints the step,
//! the call and both answers, and exits 1; at the end it frees everything it
//! still holds and exits 0, so the kernel can check that every frame came back.
#![no_std]
#![no_main]

use user_programs::abi::syscall::{self as nr, PAGE_SIZE, USER_BASE, USER_END};
use user_programs::abi::{
    self, Command, Destroy, Errno, IoasAlloc, IoasIovaRanges, IoasMap, IoasUnmap, IovaRangeEntry,
    MapFlags, TaskLimits,
};
use user_programs::iommu::arg_size;
use user_programs::{argument, check, entry, println, syscall};

entry!(main);

/// Calls per run (the robustness issue asks for at least 10,000).
const CALLS: u32 = 10_000;
const DEFAULT_SEED: u64 = 0x1005_eed5_f022_5eed;
/// The kernel's limits (kernel/src/task: MAX_ALLOCATION_PAGES, MAX_TASK_PAGES).
const MAX_ALLOCATION_PAGES: u64 = 4096;
const MAX_TASK_PAGES: u64 = 16384;
/// The kernel's cap on one write.
const MAX_WRITE: u64 = 64 * 1024;
/// Allocations the model tracks at once.
const SLOTS: usize = 32;
/// Addresses no task may name: the kernel image, null, the top of memory.
const KERNEL_ADDRESS: u64 = 0x20_0000;

/// xorshift64*: small, seedable, good enough to spread the choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Allocation {
    address: u64,
    pages: u64,
    /// Byte written at the start, checked later: memory stays private and intact.
    tag: u8,
    /// IOAS areas that pin it (it cannot be freed while pinned: EBUSY).
    pins: u32,
}

struct Model {
    live: [Option<Allocation>; SLOTS],
    pages: u64,
    /// Last freed allocation: freeing it again must fail.
    freed: Option<Allocation>,
    ioases: [Option<IoasModel>; IOASES],
    /// The id of the last destroyed IOAS (naming it again is ENOENT unless a
    /// new object took the id).
    stale_id: u32,
    /// The id of an edu the task opened, if an IOMMU translates one: an
    /// object of another type, which the IOAS calls must not accept.
    device: Option<u32>,
    /// The objects and areas the kernel lets this task hold, where the model
    /// can reach them (found by [`probe_limits`]): past them, ENOSPC.
    object_limit: Option<usize>,
    area_limit: Option<usize>,
}

impl Model {
    fn overlaps(&self, address: u64, pages: u64) -> bool {
        let end = address + pages * PAGE_SIZE;
        self.live
            .iter()
            .flatten()
            .any(|a| address < a.address + a.pages * PAGE_SIZE && a.address < end)
    }

    fn pick(&self, rng: &mut Rng) -> Option<usize> {
        let used: u64 = self.live.iter().filter(|a| a.is_some()).count() as u64;
        if used == 0 {
            return None;
        }
        let mut nth = rng.below(used);
        self.live.iter().position(|a| {
            if a.is_some() {
                if nth == 0 {
                    return true;
                }
                nth -= 1;
            }
            false
        })
    }
}

type Answer = Result<u64, Errno>;

/// What the model predicted.
enum Expected {
    Error(Errno),
    Success(&'static str),
}

impl core::fmt::Display for Expected {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Expected::Error(errno) => write!(f, "{errno:?}"),
            Expected::Success(what) => f.write_str(what),
        }
    }
}

struct Mismatch {
    call: &'static str,
    args: [u64; 2],
    expected: Expected,
    got: Answer,
}

fn expect_err(
    call: &'static str,
    args: [u64; 2],
    got: Answer,
    errno: Errno,
) -> Result<(), Mismatch> {
    if got == Err(errno) {
        Ok(())
    } else {
        Err(Mismatch {
            call,
            args,
            expected: Expected::Error(errno),
            got,
        })
    }
}

fn raw(number: u64, a: u64, b: u64) -> Answer {
    check(syscall(number, [a, b, 0, 0, 0, 0]))
}

fn step(rng: &mut Rng, model: &mut Model, counts: &mut [u32; 3]) -> Result<(), Mismatch> {
    if rng.below(2) == 0 {
        counts[2] += 1;
        return iommufd_step(rng, model, counts);
    }
    match rng.below(6) {
        // mem_alloc with a size from every class.
        0 => {
            let pages = match rng.below(8) {
                0 => 0,
                1 => MAX_ALLOCATION_PAGES + 1 + rng.below(1 << 20),
                2 => u64::MAX - rng.below(4),
                3 => 17 + rng.below(4),
                _ => 1 + rng.below(8),
            };
            let Some(slot) = model.live.iter().position(Option::is_none) else {
                return Ok(());
            };
            let got = raw(nr::MEM_ALLOC, pages, 0);
            let args = [pages, 0];
            if pages == 0 {
                counts[1] += 1;
                return expect_err("mem_alloc", args, got, Errno::EINVAL);
            }
            if pages > MAX_ALLOCATION_PAGES || model.pages + pages > MAX_TASK_PAGES {
                counts[1] += 1;
                return expect_err("mem_alloc", args, got, Errno::ENOMEM);
            }
            let Ok(address) = got else {
                return Err(Mismatch {
                    call: "mem_alloc",
                    args,
                    expected: Expected::Success("an address"),
                    got,
                });
            };
            let end = address.saturating_add(pages * PAGE_SIZE);
            if address % PAGE_SIZE != 0
                || address < USER_BASE
                || end > USER_END
                || model.overlaps(address, pages)
            {
                return Err(Mismatch {
                    call: "mem_alloc",
                    args,
                    expected: Expected::Success("a fresh aligned user range"),
                    got,
                });
            }
            let memory = address as *mut u8;
            // SAFETY: the kernel just mapped `pages` zeroed pages at `address`.
            let (first, last) = unsafe {
                (
                    memory.read_volatile(),
                    memory.add((pages * PAGE_SIZE - 1) as usize).read_volatile(),
                )
            };
            if first != 0 || last != 0 {
                return Err(Mismatch {
                    call: "mem_alloc",
                    args,
                    expected: Expected::Success("zeroed memory"),
                    got,
                });
            }
            let tag = (rng.next() as u8) | 1;
            // SAFETY: as above, the page is mapped writable for this task.
            unsafe { memory.write_volatile(tag) };
            model.live[slot] = Some(Allocation {
                address,
                pages,
                tag,
                pins: 0,
            });
            model.pages += pages;
            counts[0] += 1;
            Ok(())
        }
        // mem_free: exact, partial, wrong size, foreign, already freed.
        1 => {
            let choice = rng.below(6);
            let picked = model.pick(rng);
            let (address, pages, valid) =
                match (choice, picked.and_then(|i| model.live[i].map(|a| (i, a)))) {
                    (0 | 1, Some((index, a))) => (a.address, a.pages, Some(index)),
                    (2, Some((_, a))) => (a.address, a.pages + 1, None),
                    (3, Some((_, a))) if a.pages > 1 => (a.address + PAGE_SIZE, a.pages - 1, None),
                    (4, _) => match model.freed {
                        Some(a) if !model.overlaps(a.address, a.pages) => {
                            (a.address, a.pages, None)
                        }
                        _ => (KERNEL_ADDRESS, 1, None),
                    },
                    _ => (
                        [0, KERNEL_ADDRESS, USER_END, !(PAGE_SIZE - 1)][rng.below(4) as usize],
                        1 + rng.below(3),
                        None,
                    ),
                };
            let got = raw(nr::MEM_FREE, address, pages);
            let args = [address, pages];
            match valid {
                Some(index) if model.live[index].is_some_and(|a| a.pins > 0) => {
                    counts[1] += 1;
                    expect_err("mem_free (pinned)", args, got, Errno::EBUSY)
                }
                Some(index) => {
                    if got != Ok(0) {
                        return Err(Mismatch {
                            call: "mem_free",
                            args,
                            expected: Expected::Success("0"),
                            got,
                        });
                    }
                    model.freed = model.live[index].take();
                    model.pages -= pages;
                    counts[0] += 1;
                    Ok(())
                }
                None => {
                    counts[1] += 1;
                    expect_err("mem_free", args, got, Errno::EINVAL)
                }
            }
        }
        // write with pointers into kernel, unmapped, wrapping and guard memory.
        2 => {
            let picked = model.pick(rng).and_then(|i| model.live[i]);
            let (address, len, fault) = match (rng.below(8), picked) {
                (7, Some(a)) if a.pages * PAGE_SIZE > MAX_WRITE => {
                    (a.address, MAX_WRITE + 1, false)
                }
                (0, Some(a)) => (a.address, 1, false),
                (1, Some(a)) => (a.address + a.pages * PAGE_SIZE - 4, 8, true),
                (2, _) => (KERNEL_ADDRESS + rng.below(1 << 20), 1 + rng.below(64), true),
                (3, _) => (u64::MAX - rng.below(16), 32, true),
                (4, _) => (USER_END - 4, 16, true),
                (5, _) => (0, 1, true),
                _ => match model.freed {
                    Some(a) if !model.overlaps(a.address, a.pages) => (a.address, 1, true),
                    _ => (KERNEL_ADDRESS, 1, true),
                },
            };
            let got = raw(nr::WRITE, address, len);
            let args = [address, len];
            if fault {
                counts[1] += 1;
                expect_err("write", args, got, Errno::EFAULT)
            } else if len > MAX_WRITE {
                counts[1] += 1;
                expect_err("write", args, got, Errno::EINVAL)
            } else if got == Ok(len) {
                counts[0] += 1;
                Ok(())
            } else {
                Err(Mismatch {
                    call: "write",
                    args,
                    expected: Expected::Success("the length"),
                    got,
                })
            }
        }
        // A number no call has.
        3 => {
            let number = match rng.below(4) {
                0 => nr::LIMITS + 1 + rng.below(0x80 - nr::LIMITS - 1),
                1 => 0x91 + rng.below(0x1_0000),
                2 => 1 << (16 + rng.below(47)),
                _ => u64::MAX - rng.below(8),
            };
            counts[1] += 1;
            expect_err(
                "unknown",
                [number, 0],
                raw(number, rng.next(), rng.next()),
                Errno::ENOSYS,
            )
        }
        // limits, into a buffer of the right size, a short one, or kernel
        // memory; what it reports of the task's memory matches the model.
        4 if rng.below(2) == 0 => {
            let mut report = TaskLimits::default();
            let size = core::mem::size_of::<TaskLimits>() as u64;
            let (address, len) = match rng.below(3) {
                0 => (&raw mut report as u64, size),
                1 => (&raw mut report as u64, rng.below(size)),
                _ => (KERNEL_ADDRESS + rng.below(1 << 20), 1 + rng.below(size)),
            };
            let got = raw(nr::LIMITS, address, len);
            let args = [address, len];
            if address >= USER_BASE {
                counts[0] += 1;
                let pages = report.memory_pages;
                let whole = len == size;
                if got == Ok(size)
                    && (!whole || (pages.used, pages.limit) == (model.pages, MAX_TASK_PAGES))
                {
                    Ok(())
                } else {
                    Err(Mismatch {
                        call: "limits",
                        args,
                        expected: Expected::Success("the struct's size and the modelled memory"),
                        got,
                    })
                }
            } else {
                counts[1] += 1;
                expect_err("limits", args, got, Errno::EFAULT)
            }
        }
        4 => {
            counts[0] += 1;
            let got = raw(nr::YIELD, 0, 0);
            if got == Ok(0) {
                Ok(())
            } else {
                Err(Mismatch {
                    call: "yield",
                    args: [0, 0],
                    expected: Expected::Success("0"),
                    got,
                })
            }
        }
        // Every live allocation still holds its tag.
        _ => {
            for a in model.live.iter().flatten() {
                // SAFETY: the allocation is live, so the kernel keeps it mapped.
                let tag = unsafe { (a.address as *const u8).read_volatile() };
                if tag != a.tag {
                    return Err(Mismatch {
                        call: "memory check",
                        args: [a.address, a.pages],
                        expected: Expected::Success("the tag written"),
                        got: Ok(u64::from(tag)),
                    });
                }
            }
            Ok(())
        }
    }
}

fn main() -> i32 {
    let seed = match argument() {
        0 => DEFAULT_SEED,
        seed => seed,
    };
    let mut rng = Rng(seed | 1);
    let mut model = Model {
        live: [None; SLOTS],
        pages: 0,
        freed: None,
        ioases: [None; IOASES],
        stale_id: 0,
        // An edu, opened (not attached) if an IOMMU translates one here.
        device: match user_programs::edu::find_translated(0) {
            Ok(Some(address)) => user_programs::edu::Edu::open(address)
                .ok()
                .map(|edu| edu.id),
            _ => None,
        },
        object_limit: None,
        area_limit: None,
    };
    (model.object_limit, model.area_limit) = probe_limits(model.device.is_some());
    // [calls answered with success, calls answered with the expected error,
    //  of all of them iommufd calls]
    let mut counts = [0u32; 3];
    for index in 0..CALLS {
        if let Err(m) = step(&mut rng, &mut model, &mut counts) {
            println!(
                "syscall-fuzz: seed {seed:#x} step {index}: {}({:#x}, {:#x}) expected {} got {:?}",
                m.call, m.args[0], m.args[1], m.expected, m.got
            );
            return 1;
        }
    }
    if let Some(device) = model.device.take()
        && destroy(device) != Ok(0)
    {
        println!("syscall-fuzz: final destroy of device {device} failed");
        return 2;
    }
    for ioas in model.ioases.iter_mut().filter_map(Option::take) {
        if destroy(ioas.id) != Ok(0) {
            println!("syscall-fuzz: final destroy of IOAS {} failed", ioas.id);
            return 2;
        }
    }
    for a in model.live.iter_mut().filter_map(Option::take) {
        if raw(nr::MEM_FREE, a.address, a.pages) != Ok(0) {
            println!("syscall-fuzz: final free of {:#x} failed", a.address);
            return 2;
        }
    }
    println!(
        "syscall-fuzz: seed {seed:#x}: {CALLS} calls ({} iommufd), {} answered as success and {} with the expected error; limits: {:?} objects, {:?} areas",
        counts[2], counts[0], counts[1], model.object_limit, model.area_limit
    );
    0
}

// ---- iommufd --------------------------------------------------------------

/// Finds the objects and areas the kernel lets this task hold, up to more
/// than the model ever holds, by allocating until refused, and gives all of
/// it back. `device`: the task holds a device object already.
fn probe_limits(device: bool) -> (Option<usize>, Option<usize>) {
    use user_programs::iommu;
    const PROBE: usize = IOASES * AREAS + 1;
    let mut ids = [0u32; PROBE];
    let mut held = 0;
    let mut object_limit = None;
    while held < PROBE {
        match iommu::ioas_alloc() {
            Ok(id) => {
                ids[held] = id;
                held += 1;
            }
            Err(Errno::ENOSPC) => {
                object_limit = Some(held + usize::from(device));
                break;
            }
            Err(_) => break,
        }
    }
    let mut area_limit = None;
    if held > 0
        && let Ok(page) = user_programs::mem_alloc(1)
    {
        let mut maps = 0;
        while maps < PROBE {
            let iova = FIXED_BASE + (maps as u64) * 2 * PAGE_SIZE;
            match iommu::ioas_map(ids[0], page as u64, PAGE_SIZE, Some(iova)) {
                Ok(_) => maps += 1,
                Err(Errno::ENOSPC) => {
                    area_limit = Some(maps);
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = iommu::ioas_unmap(ids[0], 0, u64::MAX);
        let _ = raw(nr::MEM_FREE, page as u64, 1);
    }
    for &id in &ids[..held] {
        let _ = iommu::destroy(id);
    }
    (object_limit, area_limit)
}

/// IOASes and areas per IOAS the model tracks at once.
const IOASES: usize = 4;
const AREAS: usize = 8;
/// Where fixed IOVAs are chosen (page-aligned, far from the automatic ones).
const FIXED_BASE: u64 = 1 << 32;
/// A flag bit `MapFlags` does not define.
const UNKNOWN_MAP_FLAG: u32 = 1 << 20;

#[derive(Clone, Copy)]
struct Area {
    iova: u64,
    len: u64,
    /// The allocation it pins.
    slot: usize,
}

impl Area {
    fn last(&self) -> u64 {
        self.iova + (self.len - 1)
    }
}

#[derive(Clone, Copy)]
struct IoasModel {
    id: u32,
    areas: [Option<Area>; AREAS],
}

impl Model {
    /// The id the kernel must hand out next: the lowest free one from 1.
    fn next_id(&self) -> u32 {
        (1..)
            .find(|id| {
                self.device != Some(*id) && !self.ioases.iter().flatten().any(|ioas| ioas.id == *id)
            })
            .unwrap_or(1)
    }

    fn pick_ioas(&self, rng: &mut Rng) -> Option<usize> {
        let live: u64 = self.ioases.iter().flatten().count() as u64;
        if live == 0 {
            return None;
        }
        let nth = rng.below(live) as usize;
        self.ioases
            .iter()
            .enumerate()
            .filter(|(_, ioas)| ioas.is_some())
            .nth(nth)
            .map(|(index, _)| index)
    }

    /// An id that names no object of this task's.
    fn unused_id(&self, rng: &mut Rng) -> u32 {
        let candidates = [0, self.stale_id, 1000 + rng.below(1000) as u32, u32::MAX];
        let id = candidates[rng.below(4) as usize];
        if self.device == Some(id) || self.ioases.iter().flatten().any(|ioas| ioas.id == id) {
            u32::MAX
        } else {
            id
        }
    }

    /// An id that names no IOAS of this task's: unused, or its device (an
    /// object of another type is ENOENT too, as Linux's iommufd_get_object).
    fn garbage_id(&self, rng: &mut Rng) -> u32 {
        match self.device {
            Some(device) if rng.below(4) == 0 => device,
            _ => self.unused_id(rng),
        }
    }

    /// Drops an IOAS's areas (unmapped or destroyed): their pins go.
    fn unpin(&mut self, area: Area) {
        if let Some(allocation) = self.live[area.slot].as_mut() {
            allocation.pins -= 1;
        }
    }
}

/// An argument struct as raw bytes: its size field can lie, and bytes after
/// it can be garbage.
struct RawArg {
    bytes: [u64; 16],
}

impl RawArg {
    fn of<T: abi::Pod>(value: &T) -> RawArg {
        let mut raw = RawArg { bytes: [0; 16] };
        let from = abi::as_bytes(value);
        raw.as_bytes_mut()[..from.len()].copy_from_slice(from);
        raw
    }

    fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the u64 array is 128 plain bytes, borrowed mutably here.
        unsafe { core::slice::from_raw_parts_mut(self.bytes.as_mut_ptr().cast::<u8>(), 128) }
    }

    fn set_size(&mut self, size: u32) {
        self.as_bytes_mut()[..4].copy_from_slice(&size.to_ne_bytes());
    }

    fn call(&mut self, command: Command) -> Answer {
        raw(command as u64, self.bytes.as_mut_ptr() as u64, 0)
    }

    fn read<T: abi::Pod + Default>(&mut self) -> T {
        let mut value = T::default();
        let size = core::mem::size_of::<T>();
        // SAFETY: `T: Pod` accepts any bytes; `size` <= 128 for the structs used.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.bytes.as_ptr().cast::<u8>(),
                (&mut value as *mut T).cast::<u8>(),
                size,
            )
        };
        value
    }
}

fn destroy(id: u32) -> Answer {
    user_programs::iommu::destroy(id).map(|()| 0)
}

fn mismatch(call: &'static str, args: [u64; 2], expected: &'static str, got: Answer) -> Mismatch {
    Mismatch {
        call,
        args,
        expected: Expected::Success(expected),
        got,
    }
}

fn iommufd_step(rng: &mut Rng, model: &mut Model, counts: &mut [u32; 3]) -> Result<(), Mismatch> {
    match rng.below(8) {
        0 => fuzz_ioas_alloc(rng, model, counts),
        1 => fuzz_destroy(rng, model, counts),
        2 | 3 => fuzz_map(rng, model, counts),
        4 | 5 => fuzz_unmap(rng, model, counts),
        6 if rng.below(8) == 0 => fuzz_reopen_device(model, counts),
        6 => fuzz_irq_wait(rng, model, counts),
        _ => fuzz_iova_ranges(rng, model, counts),
    }
}

/// Destroys the task's edu and opens it again, so that the release path
/// (interrupt, register window, quiescing) and the open path run over and
/// over: the new device object takes the lowest free id.
fn fuzz_reopen_device(model: &mut Model, counts: &mut [u32; 3]) -> Result<(), Mismatch> {
    let Some(device) = model.device else {
        return Ok(());
    };
    let Ok(Some(address)) = user_programs::edu::find_translated(0) else {
        return Ok(());
    };
    let got = destroy(device);
    if got != Ok(0) {
        return Err(mismatch(
            "destroy (device)",
            [u64::from(device), 0],
            "0",
            got,
        ));
    }
    model.device = None;
    let expected = model.next_id();
    let opened = user_programs::edu::Edu::open(address);
    match opened {
        Ok(edu) if edu.id == expected => {
            model.device = Some(edu.id);
            counts[0] += 2;
            Ok(())
        }
        other => Err(mismatch(
            "device_open (again)",
            [u64::from(expected), u64::from(address.0)],
            "the lowest free id",
            other.map(|edu| u64::from(edu.id)),
        )),
    }
}

/// `irq_wait` on ids that name no device of this task (ENOENT), ids that do
/// not fit 32 bits (EINVAL), and this task's own edu, which never raises its
/// interrupt here: a poll times out at once (ETIMEDOUT).
fn fuzz_irq_wait(rng: &mut Rng, model: &mut Model, counts: &mut [u32; 3]) -> Result<(), Mismatch> {
    counts[1] += 1;
    let (device, timeout, expected) = match (rng.below(3), model.device) {
        (0, Some(device)) => (u64::from(device), 0, Errno::ETIMEDOUT),
        (1, _) => ((1 << 32) + rng.below(1 << 20), rng.next(), Errno::EINVAL),
        _ => (
            u64::from(model.unused_id(rng)),
            rng.below(1000),
            Errno::ENOENT,
        ),
    };
    expect_err(
        "irq_wait",
        [device, timeout],
        raw(nr::IRQ_WAIT, device, timeout),
        expected,
    )
}

/// Struct-level defects every command shares, on `arg` (a valid struct).
/// Returns the errno the defect must give, after making the call.
fn struct_defect(rng: &mut Rng, arg: &mut RawArg, command: Command, size: u32) -> (Answer, Errno) {
    match rng.below(5) {
        // A size past the cap (a page): E2BIG before anything is read.
        4 => {
            arg.set_size(user_programs::abi::MAX_SIZE + 1 + rng.below(1 << 24) as u32);
            (arg.call(command), Errno::E2BIG)
        }
        // Shorter than the first version of the struct.
        0 => {
            arg.set_size(rng.below(u64::from(size.min(8))) as u32);
            (arg.call(command), Errno::EINVAL)
        }
        // Longer, with a non-zero byte the kernel does not know.
        1 => {
            arg.set_size(size + 8);
            arg.as_bytes_mut()[size as usize + 3] = 0x5A;
            (arg.call(command), Errno::E2BIG)
        }
        // The struct pointer names kernel memory, or nothing.
        2 => (raw(command as u64, KERNEL_ADDRESS, 0), Errno::EFAULT),
        _ => (raw(command as u64, USER_END - 2, 0), Errno::EFAULT),
    }
}

fn fuzz_ioas_alloc(
    rng: &mut Rng,
    model: &mut Model,
    counts: &mut [u32; 3],
) -> Result<(), Mismatch> {
    let mut arg = RawArg::of(&IoasAlloc {
        size: arg_size::<IoasAlloc>(),
        ..Default::default()
    });
    match rng.below(6) {
        0 => {
            let (got, errno) =
                struct_defect(rng, &mut arg, Command::IoasAlloc, arg_size::<IoasAlloc>());
            counts[1] += 1;
            return expect_err("ioas_alloc (bad struct)", [0, 0], got, errno);
        }
        1 => {
            arg = RawArg::of(&IoasAlloc {
                size: arg_size::<IoasAlloc>(),
                flags: 1 << rng.below(32),
                ..Default::default()
            });
            counts[1] += 1;
            return expect_err(
                "ioas_alloc (flags)",
                [0, 0],
                arg.call(Command::IoasAlloc),
                Errno::EOPNOTSUPP,
            );
        }
        _ => {}
    }
    let Some(slot) = model.ioases.iter().position(Option::is_none) else {
        return Ok(());
    };
    let held = model.ioases.iter().flatten().count() + usize::from(model.device.is_some());
    if model.object_limit.is_some_and(|limit| held >= limit) {
        counts[1] += 1;
        return expect_err(
            "ioas_alloc (at the object limit)",
            [held as u64, 0],
            arg.call(Command::IoasAlloc),
            Errno::ENOSPC,
        );
    }
    let expected = model.next_id();
    let got = arg.call(Command::IoasAlloc);
    let id = arg.read::<IoasAlloc>().out_ioas_id;
    if got != Ok(0) || id != expected {
        return Err(Mismatch {
            call: "ioas_alloc",
            args: [u64::from(expected), u64::from(id)],
            expected: Expected::Success("the lowest free id"),
            got,
        });
    }
    model.ioases[slot] = Some(IoasModel {
        id,
        areas: [None; AREAS],
    });
    counts[0] += 1;
    Ok(())
}

fn fuzz_destroy(rng: &mut Rng, model: &mut Model, counts: &mut [u32; 3]) -> Result<(), Mismatch> {
    let picked = model.pick_ioas(rng);
    match (rng.below(3), picked) {
        (0, Some(index)) => {
            let Some(ioas) = model.ioases[index].take() else {
                return Ok(());
            };
            let got = destroy(ioas.id);
            // Destroying an IOAS unmaps its areas: their pins go too.
            for area in ioas.areas.iter().flatten() {
                model.unpin(*area);
            }
            model.stale_id = ioas.id;
            counts[0] += 1;
            if got == Ok(0) {
                Ok(())
            } else {
                Err(mismatch("destroy", [u64::from(ioas.id), 0], "0", got))
            }
        }
        (1, _) => {
            let mut arg = RawArg::of(&Destroy {
                size: arg_size::<Destroy>(),
                id: model.unused_id(rng),
            });
            let (got, errno) =
                struct_defect(rng, &mut arg, Command::Destroy, arg_size::<Destroy>());
            counts[1] += 1;
            expect_err("destroy (bad struct)", [0, 0], got, errno)
        }
        _ => {
            let id = model.unused_id(rng);
            counts[1] += 1;
            expect_err("destroy", [u64::from(id), 0], destroy(id), Errno::ENOENT)
        }
    }
}

fn fuzz_map(rng: &mut Rng, model: &mut Model, counts: &mut [u32; 3]) -> Result<(), Mismatch> {
    let Some(index) = model.pick_ioas(rng) else {
        return fuzz_ioas_alloc(rng, model, counts);
    };
    let Some(slot) = model.pick(rng) else {
        return Ok(());
    };
    let (Some(ioas), Some(allocation)) = (model.ioases[index], model.live[slot]) else {
        return Ok(());
    };
    let Some(area_slot) = ioas.areas.iter().position(Option::is_none) else {
        return fuzz_unmap(rng, model, counts);
    };
    let first_page = rng.below(allocation.pages);
    let pages = 1 + rng.below(allocation.pages - first_page);
    let va = allocation.address + first_page * PAGE_SIZE;
    let len = pages * PAGE_SIZE;
    let rw = (MapFlags::READABLE | MapFlags::WRITEABLE).bits();
    let mut map = IoasMap {
        size: arg_size::<IoasMap>(),
        flags: rw,
        ioas_id: ioas.id,
        user_va: va,
        length: len,
        ..Default::default()
    };
    // A page-aligned IOVA whose next `span` bytes no area uses (0: none
    // found this time).
    let free_fixed = |rng: &mut Rng, span: u64| -> u64 {
        let iova = FIXED_BASE + rng.below(1 << 20) * PAGE_SIZE;
        let overlaps = ioas
            .areas
            .iter()
            .flatten()
            .any(|a| iova <= a.last() && a.iova <= iova + (span - 1));
        if overlaps { 0 } else { iova }
    };
    // One defect at a time (or none), so the answer is never a matter of
    // which check runs first.
    let defect: Option<(&'static str, Errno)> = match rng.below(14) {
        0 => {
            map.ioas_id = model.garbage_id(rng);
            Some(("unknown IOAS", Errno::ENOENT))
        }
        1 => {
            map.length = 0;
            Some(("zero length", Errno::EINVAL))
        }
        // No device is ever attached here, so the IOAS is byte granular
        // (Linux: `iova_alignment` 1 without domains): a length or a user
        // address off a page boundary is a valid map, not a defect.
        2 => {
            map.length = len - 1 - rng.below(PAGE_SIZE - 1);
            None
        }
        3 => {
            let offset = 1 + rng.below(PAGE_SIZE - 1);
            map.user_va = va + offset;
            map.length = len - offset;
            None
        }
        4 => {
            map.user_va = [KERNEL_ADDRESS, USER_END - PAGE_SIZE, 0][rng.below(3) as usize];
            map.length = PAGE_SIZE;
            Some(("memory the task does not own", Errno::EFAULT))
        }
        5 => {
            map.flags = 0;
            Some(("neither READ nor WRITE", Errno::EINVAL))
        }
        6 => {
            map.flags = rw | UNKNOWN_MAP_FLAG;
            Some(("an unknown flag", Errno::EOPNOTSUPP))
        }
        7 => {
            map.reserved = 1 + rng.below(u64::from(u32::MAX)) as u32;
            Some(("a reserved field set", Errno::EOPNOTSUPP))
        }
        8 => match ioas.areas.iter().flatten().next() {
            Some(area) => {
                map.flags = rw | MapFlags::FIXED_IOVA.bits();
                map.iova = area.iova + rng.below(area.len.div_ceil(PAGE_SIZE)) * PAGE_SIZE;
                Some(("a fixed IOVA over an area", Errno::EEXIST))
            }
            None => None,
        },
        9 => {
            let iova = free_fixed(rng, len + PAGE_SIZE);
            if iova == 0 {
                return Ok(());
            }
            map.flags = rw | MapFlags::FIXED_IOVA.bits();
            map.iova = iova + 1 + rng.below(PAGE_SIZE - 1);
            None
        }
        10 if pages > 1 => {
            map.flags = rw | MapFlags::FIXED_IOVA.bits();
            map.iova = !(PAGE_SIZE - 1);
            Some(("a fixed IOVA range that wraps", Errno::EOVERFLOW))
        }
        11 => {
            let mut arg = RawArg::of(&map);
            let (got, errno) =
                struct_defect(rng, &mut arg, Command::IoasMap, arg_size::<IoasMap>());
            counts[1] += 1;
            return expect_err("ioas_map (bad struct)", [va, len], got, errno);
        }
        12 => {
            let iova = free_fixed(rng, len);
            if iova == 0 {
                return Ok(());
            }
            map.flags = rw | MapFlags::FIXED_IOVA.bits();
            map.iova = iova;
            None
        }
        _ => None,
    };
    let areas: usize = model
        .ioases
        .iter()
        .flatten()
        .map(|ioas| ioas.areas.iter().flatten().count())
        .sum();
    let at_limit = model.area_limit.is_some_and(|limit| areas >= limit);
    // The limit is checked before the task's memory is pinned (a refused
    // call pins nothing): memory it does not own is then ENOSPC too.
    let defect = match defect {
        Some((what, Errno::EFAULT)) if at_limit => Some((what, Errno::ENOSPC)),
        None if at_limit => Some(("a map at the area limit", Errno::ENOSPC)),
        other => other,
    };
    let mut arg = RawArg::of(&map);
    let got = arg.call(Command::IoasMap);
    if let Some((what, errno)) = defect {
        counts[1] += 1;
        return expect_err(what, [va, len], got, errno).map_err(|mut m| {
            m.call = "ioas_map";
            m
        });
    }
    let iova = arg.read::<IoasMap>().iova;
    let fixed = map.flags & MapFlags::FIXED_IOVA.bits() != 0;
    let (va, len) = (map.user_va, map.length);
    // Automatic IOVAs: never 0, inside no other area, aligned to the length
    // rounded up to a power of two, capped by the user address's alignment
    // (Linux `iopt_alloc_iova`); below a page, at the address's page offset.
    let alignment = len
        .checked_next_power_of_two()
        .unwrap_or(1 << 63)
        .min(1u64 << va.trailing_zeros());
    let page_offset_kept = alignment >= PAGE_SIZE || iova % PAGE_SIZE == va % PAGE_SIZE;
    let overlaps = ioas
        .areas
        .iter()
        .flatten()
        .any(|a| iova <= a.last() && a.iova <= iova.wrapping_add(len - 1));
    let good = got == Ok(0)
        && !overlaps
        && iova.checked_add(len - 1).is_some()
        && if fixed {
            iova == map.iova
        } else {
            iova != 0 && iova.is_multiple_of(alignment) && page_offset_kept
        };
    if !good {
        return Err(mismatch(
            "ioas_map",
            [va, len],
            "a fresh, aligned, non-zero IOVA range",
            got.map(|_| iova),
        ));
    }
    if let Some(ioas) = model.ioases[index].as_mut() {
        ioas.areas[area_slot] = Some(Area { iova, len, slot });
    }
    if let Some(allocation) = model.live[slot].as_mut() {
        allocation.pins += 1;
    }
    counts[0] += 1;
    Ok(())
}

fn fuzz_unmap(rng: &mut Rng, model: &mut Model, counts: &mut [u32; 3]) -> Result<(), Mismatch> {
    let Some(index) = model.pick_ioas(rng) else {
        return fuzz_ioas_alloc(rng, model, counts);
    };
    let Some(ioas) = model.ioases[index] else {
        return Ok(());
    };
    let areas: [Option<Area>; AREAS] = ioas.areas;
    let some_area = areas
        .iter()
        .flatten()
        .nth(rng.below(AREAS as u64) as usize % areas.iter().flatten().count().max(1));
    // A range from the interesting boundaries: exactly an area, cutting one,
    // spanning several, over nothing, everything, empty, wrapping.
    let (iova, len) = match (rng.below(8), some_area) {
        (0 | 1, Some(a)) => (a.iova, a.len),
        (2, Some(a)) if a.len > PAGE_SIZE => (a.iova, a.len - PAGE_SIZE),
        (3, Some(a)) if a.len > PAGE_SIZE => (a.iova + PAGE_SIZE, a.len - PAGE_SIZE),
        (4, Some(a)) => (a.iova & !((1 << 24) - 1), 1 << 28),
        (5, _) => (0, u64::MAX),
        (6, _) => (
            FIXED_BASE + rng.below(1 << 20) * PAGE_SIZE,
            PAGE_SIZE * (1 + rng.below(4)),
        ),
        _ => match rng.below(3) {
            0 => (PAGE_SIZE, 0),
            1 => (u64::MAX - (PAGE_SIZE - 1), 2 * PAGE_SIZE),
            _ => (FIXED_BASE, PAGE_SIZE),
        },
    };
    let id = if rng.below(10) == 0 {
        model.garbage_id(rng)
    } else {
        ioas.id
    };
    let mut arg = RawArg::of(&IoasUnmap {
        size: arg_size::<IoasUnmap>(),
        ioas_id: id,
        iova,
        length: len,
    });
    let got = arg
        .call(Command::IoasUnmap)
        .map(|_| arg.read::<IoasUnmap>().length);
    let args = [iova, len];
    // The model's answer.
    let all = iova == 0 && len == u64::MAX;
    let expected: Result<u64, Errno> = if id != ioas.id {
        Err(Errno::ENOENT)
    } else if all {
        Ok(areas.iter().flatten().map(|a| a.len).sum())
    } else if len == 0 {
        Err(Errno::EINVAL)
    } else if iova.checked_add(len - 1).is_none() {
        Err(Errno::EOVERFLOW)
    } else {
        let last = iova + (len - 1);
        let cut = areas
            .iter()
            .flatten()
            .any(|a| a.iova <= last && iova <= a.last() && (a.iova < iova || a.last() > last));
        let inside: u64 = areas
            .iter()
            .flatten()
            .filter(|a| iova <= a.iova && a.last() <= last)
            .map(|a| a.len)
            .sum();
        if cut || inside == 0 {
            Err(Errno::ENOENT)
        } else {
            Ok(inside)
        }
    };
    if got != expected {
        return Err(Mismatch {
            call: "ioas_unmap",
            args,
            expected: match expected {
                Ok(_) => Expected::Success("the bytes of the whole areas inside"),
                Err(errno) => Expected::Error(errno),
            },
            got,
        });
    }
    if expected.is_ok() {
        let last = if all { u64::MAX } else { iova + (len - 1) };
        for (area_slot, area) in areas.iter().enumerate() {
            let Some(area) = *area else {
                continue;
            };
            if iova <= area.iova && area.last() <= last {
                model.unpin(area);
                if let Some(ioas) = model.ioases[index].as_mut() {
                    ioas.areas[area_slot] = None;
                }
            }
        }
        counts[0] += 1;
    } else {
        counts[1] += 1;
    }
    Ok(())
}

fn fuzz_iova_ranges(
    rng: &mut Rng,
    model: &mut Model,
    counts: &mut [u32; 3],
) -> Result<(), Mismatch> {
    let Some(index) = model.pick_ioas(rng) else {
        return fuzz_ioas_alloc(rng, model, counts);
    };
    let Some(ioas) = model.ioases[index] else {
        return Ok(());
    };
    let mut entries = [IovaRangeEntry::default(); 8];
    let mut ranges = IoasIovaRanges {
        size: arg_size::<IoasIovaRanges>(),
        ioas_id: ioas.id,
        num_iovas: entries.len() as u32,
        allowed_iovas: entries.as_mut_ptr() as u64,
        ..Default::default()
    };
    let defect = match rng.below(6) {
        0 => {
            ranges.num_iovas = 0;
            Some(Errno::EMSGSIZE)
        }
        1 => {
            ranges.allowed_iovas = KERNEL_ADDRESS;
            Some(Errno::EFAULT)
        }
        2 => {
            ranges.ioas_id = model.garbage_id(rng);
            Some(Errno::ENOENT)
        }
        3 => {
            ranges.reserved = 1;
            Some(Errno::EOPNOTSUPP)
        }
        _ => None,
    };
    let mut arg = RawArg::of(&ranges);
    let got = arg.call(Command::IoasIovaRanges);
    let out = arg.read::<IoasIovaRanges>();
    if let Some(errno) = defect {
        counts[1] += 1;
        expect_err(
            "ioas_iova_ranges",
            [u64::from(ranges.num_iovas), 0],
            got,
            errno,
        )?;
        // EMSGSIZE still says how many there are.
        if errno == Errno::EMSGSIZE && out.num_iovas == 0 {
            return Err(mismatch(
                "ioas_iova_ranges",
                [0, 0],
                "the count with EMSGSIZE",
                got,
            ));
        }
        return Ok(());
    }
    let n = out.num_iovas as usize;
    let listed = &entries[..n.min(entries.len())];
    // Sorted, disjoint, non-empty ranges; byte granular (alignment 1) while
    // no device is attached, as Linux's io_pagetable without domains.
    let sorted = listed.windows(2).all(|w| w[0].last < w[1].start);
    let good = got == Ok(0)
        && n >= 1
        && n <= entries.len()
        && sorted
        && listed.iter().all(|r| r.start <= r.last)
        && out.out_iova_alignment == 1;
    counts[0] += 1;
    if good {
        Ok(())
    } else {
        Err(mismatch(
            "ioas_iova_ranges",
            [n as u64, out.out_iova_alignment],
            "sorted disjoint ranges, alignment 1",
            got,
        ))
    }
}
