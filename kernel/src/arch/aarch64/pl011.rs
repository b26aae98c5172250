//! The PL011 UART (Arm PrimeCell UART PL011 TRM, DDI 0183): transmit only.

use core::fmt;
use core::ptr::NonNull;

use os_services::mmio::{Mmio, Reg32};

/// PL011 TRM §3.3.1 UARTDR, data register.
const UARTDR: Reg32 = Reg32(0x000);
/// PL011 TRM §3.3.3 UARTFR, flag register.
const UARTFR: Reg32 = Reg32(0x018);
/// UARTFR.TXFF: transmit FIFO full.
const UARTFR_TXFF: u32 = 1 << 5;
const REGISTER_BLOCK_SIZE: usize = 0x1000;

pub struct Pl011 {
    regs: Mmio,
}

// SAFETY: the register block is only reached through the console mutex.
unsafe impl Send for Pl011 {}

impl Pl011 {
    /// # Safety
    /// `base` must be a PL011 register block mapped as Device memory that no
    /// one else drives.
    pub unsafe fn new(base: usize) -> Self {
        let base = NonNull::new(base as *mut u8).expect("PL011 at address 0");
        // SAFETY: forwarded from the caller's contract.
        Pl011 {
            regs: unsafe { Mmio::new(base, REGISTER_BLOCK_SIZE) },
        }
    }

    fn put(&mut self, byte: u8) {
        // The FIFO drains at the line rate; QEMU never keeps it full.
        while self.regs.read32(UARTFR) & UARTFR_TXFF != 0 {
            core::hint::spin_loop();
        }
        self.regs.write32(UARTDR, u32::from(byte));
    }
}

impl fmt::Write for Pl011 {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for byte in text.bytes() {
            if byte == b'\n' {
                self.put(b'\r');
            }
            self.put(byte);
        }
        Ok(())
    }
}
