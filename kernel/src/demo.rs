//! The demo `cargo xtask run` shows.

use crate::platform::Platform;

/// Runs the demo; returns the number of steps that failed.
pub fn run(platform: &Platform) -> usize {
    println!(
        "IOMMU unikernel on {} ({})",
        crate::arch::ARCH_NAME,
        platform.summary()
    );
    println!(
        "free memory: {} MiB",
        crate::memory::frames::free_count() * 4096 >> 20
    );
    0
}
