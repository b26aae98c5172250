//! Hands the kernel bad arguments: each must come back as an error code, never
//! a crash. The exit code is the number of the first check that failed (0 =
//! all held).
#![no_std]
#![no_main]

use user_programs::abi::syscall as nr;
use user_programs::abi::{DeviceOpen, Errno, syscall::USER_END};
use user_programs::edu;
use user_programs::{check, entry, println, syscall};

entry!(main);

#[cfg(target_arch = "x86_64")]
const KERNEL_IMAGE: u64 = 0x20_0000;
#[cfg(target_arch = "aarch64")]
const KERNEL_IMAGE: u64 = 0x4020_0000;

/// A user address the program never maps (just below the top of the region).
const UNMAPPED: u64 = USER_END - 0x10_0000;

fn expect(number: i32, what: &str, result: i64, expected: Errno) -> Result<(), i32> {
    match check(result) {
        Err(errno) if errno == expected => {
            println!("{what}: {errno:?} as expected");
            Ok(())
        }
        other => {
            println!("{what}: expected {expected:?}, got {other:?}");
            Err(number)
        }
    }
}

fn run() -> Result<(), i32> {
    let message = b"valid";
    expect(
        1,
        "write from kernel memory",
        syscall(nr::WRITE, [KERNEL_IMAGE, 16, 0, 0, 0, 0]),
        Errno::EFAULT,
    )?;
    expect(
        2,
        "write from unmapped user memory",
        syscall(nr::WRITE, [UNMAPPED, 16, 0, 0, 0, 0]),
        Errno::EFAULT,
    )?;
    expect(
        3,
        "write whose length wraps the address space",
        syscall(nr::WRITE, [message.as_ptr() as u64, u64::MAX, 0, 0, 0, 0]),
        Errno::EFAULT,
    )?;
    expect(
        4,
        "write running off the end of the user region",
        syscall(nr::WRITE, [USER_END - 8, 16, 0, 0, 0, 0]),
        Errno::EFAULT,
    )?;
    expect(
        5,
        "unknown system call",
        syscall(0x7fff_ffff, [0; 6]),
        Errno::ENOSYS,
    )?;
    expect(
        6,
        "allocate zero pages",
        syscall(nr::MEM_ALLOC, [0; 6]),
        Errno::EINVAL,
    )?;
    expect(
        7,
        "free memory that was never allocated",
        syscall(nr::MEM_FREE, [UNMAPPED, 1, 0, 0, 0, 0]),
        Errno::EINVAL,
    )?;
    expect(
        8,
        "free the program's own code",
        syscall(
            nr::MEM_FREE,
            [main as *const () as u64 & !0xfff, 1, 0, 0, 0, 0],
        ),
        Errno::EINVAL,
    )?;
    expect(
        10,
        "irq_wait on a device the task never opened",
        syscall(nr::IRQ_WAIT, [1, 1_000_000, 0, 0, 0, 0]),
        Errno::ENOENT,
    )?;
    expect(
        11,
        "irq_wait on a device id wider than 32 bits",
        syscall(nr::IRQ_WAIT, [1 << 40, 0, 0, 0, 0, 0]),
        Errno::EINVAL,
    )?;
    // One size rule for every struct, the kernel's own calls included: up to
    // a page with a zero tail is read (device_list then says it needs room
    // for the list), past a page is E2BIG whatever the tail.
    let page = user_programs::mem_alloc(2).map_err(|_| 13)?;
    for (size, expected, what) in [
        (
            4096u32,
            Errno::EMSGSIZE,
            "device_list claiming a page, zero tail",
        ),
        (4097, Errno::E2BIG, "device_list claiming more than a page"),
    ] {
        // SAFETY: the two pages are this task's, fresh and zeroed; the size
        // field is the struct's first word.
        unsafe { (page as *mut u32).write_volatile(size) };
        expect(
            13,
            what,
            syscall(nr::DEVICE_LIST, [page as u64, 0, 0, 0, 0, 0]),
            expected,
        )?;
    }
    // device_open whose struct the kernel can read but not write back: the
    // call fails and the device is not left claimed (the task never learnt
    // its id). Only where an IOMMU translates an edu.
    if let Ok(Some(address)) = edu::find_translated(0)
        && let Some(open) = edu::read_only_open(address)
    {
        expect(
            12,
            "device_open with a read-only argument struct",
            syscall(
                nr::DEVICE_OPEN,
                [open as *const DeviceOpen as u64, 0, 0, 0, 0, 0],
            ),
            Errno::EFAULT,
        )?;
        if edu::holder(address) != "free" {
            println!(
                "device_open with a read-only argument left {address} {}",
                edu::holder(address)
            );
            return Err(12);
        }
        println!("device_open with a read-only argument left {address} free");
    }
    // A valid write still works after all of that.
    if check(syscall(
        nr::WRITE,
        [message.as_ptr() as u64, message.len() as u64, 0, 0, 0, 0],
    )) != Ok(message.len() as u64)
    {
        return Err(9);
    }
    println!();
    Ok(())
}

fn main() -> i32 {
    match run() {
        Ok(()) => 0,
        Err(failed) => failed,
    }
}
