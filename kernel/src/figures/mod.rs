//! What each IOMMU operation costs on this machine's unit, in commands,
//! waits and register writes: printed by the demo (`demo.rs`), reported by
//! the benchmarks (`bench.rs`) and checked by the tests that pin the costs.
//! Kept apart from the driver glue (`iommu/`), which only finds and brings
//! up the units.

#[cfg(target_arch = "x86_64")]
pub mod amdvi;
#[cfg(target_arch = "aarch64")]
pub mod smmuv3;
#[cfg(target_arch = "x86_64")]
pub mod vtd;
