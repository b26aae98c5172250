//! Ordering the CPU's memory accesses against a device's.
//!
//! A CPU fence (`core::sync::atomic::fence`) orders accesses between CPUs of
//! the inner-shareable domain; an IOMMU reads its tables and queues, and
//! writes its event records, from outside it. These are the barriers a driver
//! needs for that, as Linux names them (`Documentation/memory-barriers.txt`,
//! "DEVICE I/O BARRIERS" and `dma_wmb()`/`dma_rmb()`):
//!
//! | barrier | orders | x86-64 | AArch64 | Linux |
//! |---------|--------|--------|---------|-------|
//! | [`dma_wmb`] | CPU writes to memory a device reads: each before the next, and all before a later MMIO write (a doorbell) | compiler barrier: stores are seen in program order, and a store to uncached MMIO is not reordered with earlier ones (SDM vol. 3 §9.2.2) | `dmb oshst` (Arm ARM B2.3.12) | `dma_wmb()`, the barrier inside `writel()` |
//! | [`dma_rmb`] | a CPU read of a device-written flag or index before the reads of the data it vouches for | compiler barrier: loads are not reordered with older loads | `dmb oshld` | `dma_rmb()` |
//! | [`io_mb`] | everything before against everything after, device included (reads of a consumed entry before the MMIO write that hands its slot back) | `mfence` | `dmb osh` | `__iomb()` / `mb()` |
//!
//! On the host (the drivers' tests) each barrier is also reported to an
//! observer, if one is set (`crate::observe`), so that a model of the
//! hardware can check that a driver orders its accesses as the spec requires.

pub use crate::observe::Barrier;

/// CPU writes to memory a device reads are seen by the device in program
/// order, and before any later MMIO write.
#[inline(always)]
pub fn dma_wmb() {
    notify(Barrier::DmaWmb);
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a data memory barrier only orders memory accesses; it touches
    // no memory and no register.
    unsafe {
        core::arch::asm!("dmb oshst", options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "aarch64"))]
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}

/// A read of a device-written flag or index completes before later reads.
#[inline(always)]
pub fn dma_rmb() {
    notify(Barrier::DmaRmb);
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as in `dma_wmb`.
    unsafe {
        core::arch::asm!("dmb oshld", options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "aarch64"))]
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}

/// Every access before against every access after, the device's included.
#[inline(always)]
pub fn io_mb() {
    notify(Barrier::IoMb);
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as in `dma_wmb`.
    unsafe {
        core::arch::asm!("dmb osh", options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "aarch64"))]
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

fn notify(barrier: Barrier) {
    crate::observe::notify(crate::observe::Observed::Barrier(barrier));
}
