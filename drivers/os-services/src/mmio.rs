//! Typed access to memory-mapped device registers.
//!
//! A register block is described by a base address and typed register
//! constants ([`Reg32`], [`Reg64`]) holding their offsets; the access width is
//! part of the type, so a 32-bit register can never be touched with a 64-bit
//! access (QEMU aborts on some of those, docs/QEMU.md §6.3).

use core::ptr::NonNull;

use volatile::VolatilePtr;

use crate::observe::{Observed, notify};

/// A 32-bit register at a byte offset from its block's base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg32(pub usize);

/// A 64-bit register at a byte offset from its block's base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg64(pub usize);

/// A block of device registers mapped uncached at `base`.
#[derive(Debug)]
pub struct Mmio {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: every access is one volatile load or store of a register, which
// the device sees whole from whichever CPU makes it; a driver whose sequence
// of accesses must not interleave with another CPU's (a command register and
// its busy bit) serialises it itself, as its `&self` methods document.
unsafe impl Send for Mmio {}
// SAFETY: as for `Send`.
unsafe impl Sync for Mmio {}

impl Mmio {
    /// # Safety
    /// `base..base+len` must be a mapping of device registers (uncached) that
    /// stays valid for the lifetime of the value, and no other code may treat
    /// that range as ordinary memory.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Mmio { base, len }
    }

    /// Base address of the block.
    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    fn ptr<T>(&self, offset: usize) -> VolatilePtr<'_, T> {
        assert!(
            offset.is_multiple_of(core::mem::size_of::<T>())
                && offset + core::mem::size_of::<T>() <= self.len,
            "register offset {offset:#x} outside its block or misaligned"
        );
        // SAFETY: the offset is inside the block (checked above) and aligned
        // for T; `new`'s contract makes the block valid device memory.
        unsafe { VolatilePtr::new(self.base.byte_add(offset).cast::<T>()) }
    }

    /// Reads the 32-bit register `reg` (one volatile load).
    pub fn read32(&self, reg: Reg32) -> u32 {
        self.ptr::<u32>(reg.0).read()
    }

    /// Writes the 32-bit register `reg` (one volatile store).
    pub fn write32(&self, reg: Reg32, value: u32) {
        self.ptr::<u32>(reg.0).write(value);
        notify(Observed::MmioWrite {
            offset: reg.0,
            bytes: 4,
        });
    }

    /// Reads the 64-bit register `reg` (one volatile load).
    pub fn read64(&self, reg: Reg64) -> u64 {
        self.ptr::<u64>(reg.0).read()
    }

    /// Writes the 64-bit register `reg` (one volatile store).
    pub fn write64(&self, reg: Reg64, value: u64) {
        self.ptr::<u64>(reg.0).write(value);
        notify(Observed::MmioWrite {
            offset: reg.0,
            bytes: 8,
        });
    }
}
