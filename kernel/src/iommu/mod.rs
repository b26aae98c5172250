//! The IOMMU units the kernel drives: each vendor module finds its units in
//! the firmware tables, brings them up and hands them out behind the
//! `iommu::IommuUnit` contract.

#[cfg(target_arch = "x86_64")]
pub mod amdvi;
#[cfg(target_arch = "aarch64")]
pub mod smmuv3;
#[cfg(target_arch = "x86_64")]
pub mod vtd;
