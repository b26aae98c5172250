//! A kernel panic prints its message and location and fails the QEMU run.

use core::panic::PanicInfo;

use crate::arch;

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    if let Some(test) = crate::testing::running_test() {
        println!("test {test} ... FAILED: kernel panic (below)");
    }
    match info.location() {
        Some(location) => println!(
            "KERNEL PANIC: {} at {}:{}:{}",
            info.message(),
            location.file(),
            location.line(),
            location.column()
        ),
        None => println!("KERNEL PANIC: {}", info.message()),
    }
    arch::exit(arch::ExitCode::Panic)
}
