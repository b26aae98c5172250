//! A kernel panic prints its message, location and backtrace and fails the
//! QEMU run.

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch;

/// A panic is being reported: a second one (a fault in the backtrace walk,
/// say) reports only its message.
static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let first = !PANICKING.swap(true, Ordering::SeqCst);
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
    if first {
        crate::backtrace::print_here();
    }
    arch::exit(arch::ExitCode::Panic)
}
