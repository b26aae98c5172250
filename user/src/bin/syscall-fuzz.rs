//! A seeded stream of system calls with valid, boundary and garbage arguments,
//! each checked against a reference model of what the kernel must answer.
//!
//! The seed is the task's argument (0 picks a fixed default); the number of
//! calls is [`CALLS`]. On the first disagreement the program prints the step,
//! the call and both answers, and exits 1; at the end it frees everything it
//! still holds and exits 0, so the kernel can check that every frame came back.
#![no_std]
#![no_main]

use user_programs::abi::Errno;
use user_programs::abi::syscall::{self as nr, PAGE_SIZE, USER_BASE, USER_END};
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
}

struct Model {
    live: [Option<Allocation>; SLOTS],
    pages: u64,
    /// Last freed allocation: freeing it again must fail.
    freed: Option<Allocation>,
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

fn step(rng: &mut Rng, model: &mut Model, counts: &mut [u32; 2]) -> Result<(), Mismatch> {
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
                0 => 6 + rng.below(0x80 - 6),
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
    };
    // [calls answered with success, calls answered with the expected error]
    let mut counts = [0u32; 2];
    for index in 0..CALLS {
        if let Err(m) = step(&mut rng, &mut model, &mut counts) {
            println!(
                "syscall-fuzz: seed {seed:#x} step {index}: {}({:#x}, {:#x}) expected {} got {:?}",
                m.call, m.args[0], m.args[1], m.expected, m.got
            );
            return 1;
        }
    }
    for a in model.live.iter_mut().filter_map(Option::take) {
        if raw(nr::MEM_FREE, a.address, a.pages) != Ok(0) {
            println!("syscall-fuzz: final free of {:#x} failed", a.address);
            return 2;
        }
    }
    println!(
        "syscall-fuzz: seed {seed:#x}: {CALLS} calls, {} answered as success and {} with the expected error",
        counts[0], counts[1]
    );
    0
}
