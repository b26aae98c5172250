//! The registry of in-kernel tests, one group per subsystem. A group that
//! does not apply to this machine returns `NotApplicable` from its tests
//! (e.g. the VT-d tests on a machine without VT-d), never "ok".

#[cfg(target_arch = "x86_64")]
mod amdvi;
mod foundation;
mod iommufd_devices;
mod iommufd_syscalls;
mod isolation;
#[cfg(target_arch = "x86_64")]
mod robust_amdvi;
#[cfg(target_arch = "aarch64")]
mod robust_smmuv3;
mod robust_syscalls;
#[cfg(target_arch = "x86_64")]
mod robust_vtd;
#[cfg(target_arch = "aarch64")]
mod smmuv3;
mod tasks;
#[cfg(target_arch = "x86_64")]
mod vtd;

use crate::testing::Test;

/// Every test group, in the order they run.
pub static ALL: &[&[Test]] = &[
    foundation::TESTS,
    #[cfg(target_arch = "aarch64")]
    smmuv3::TESTS,
    #[cfg(target_arch = "aarch64")]
    robust_smmuv3::TESTS,
    #[cfg(target_arch = "x86_64")]
    vtd::TESTS,
    #[cfg(target_arch = "x86_64")]
    vtd::PAGING_TESTS,
    #[cfg(target_arch = "x86_64")]
    robust_vtd::TESTS,
    #[cfg(target_arch = "x86_64")]
    amdvi::TESTS,
    #[cfg(target_arch = "x86_64")]
    robust_amdvi::TESTS,
    tasks::TESTS,
    robust_syscalls::TESTS,
    iommufd_syscalls::TESTS,
    iommufd_devices::TESTS,
    isolation::TESTS,
];
