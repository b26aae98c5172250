//! The kernel console: `print!`/`println!` over the architecture's serial port.

use core::fmt::{self, Write};

use spin::Mutex;

use crate::arch;

static CONSOLE: Mutex<Option<arch::Serial>> = Mutex::new(None);

/// Installs the serial port; output before this is dropped.
pub fn init(serial: arch::Serial) {
    *CONSOLE.lock() = Some(serial);
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    // Exception handlers and panics print too; never deadlock on a lock held
    // by the code they interrupted.
    let mut guard = match CONSOLE.try_lock() {
        Some(guard) => guard,
        None => {
            // SAFETY: only reached when the holder was interrupted on this
            // (single) CPU and will not run again before we return; losing
            // the interleaving of a half-printed line is acceptable.
            unsafe { CONSOLE.force_unlock() };
            CONSOLE.lock()
        }
    };
    if let Some(serial) = guard.as_mut() {
        let _ = serial.write_fmt(args);
    }
}

#[allow(unused_macros, reason = "only the x86_64 drivers' demo output uses it")]
macro_rules! print {
    ($($arg:tt)*) => ($crate::console::_print(format_args!($($arg)*)));
}

macro_rules! println {
    () => ($crate::console::_print(format_args!("\n")));
    ($($arg:tt)*) => ($crate::console::_print(format_args!("{}\n", format_args!($($arg)*))));
}
