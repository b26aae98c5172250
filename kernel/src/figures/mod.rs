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
pub mod walk;

/// A driver's refusal in words, for the demo's lines.
pub fn error_words(error: iommu::IommuError) -> &'static str {
    use iommu::IommuError;
    match error {
        IommuError::NoMemory => "out of memory for tables, ids or queue slots",
        IommuError::Unsupported => "the unit cannot do this",
        IommuError::Invalid => "the request does not fit this unit",
        IommuError::Busy => "still in use",
        IommuError::Timeout => "the hardware did not answer in time",
        IommuError::Refused => "refused for this caller",
    }
}
