//! Firmware-table parsers: ACPI (MCFG, DMAR, IVRS, MADT) and the flattened device tree.
//!
//! Every parser works on untrusted bytes: each length, count and offset is checked
//! before use, arithmetic is checked, work is bounded (no quadratic paths on hostile
//! counts), and malformed input yields a [`FirmwareError`], never a panic or an
//! out-of-bounds read.
//!
//! aarch64 (device tree at the address the loader passed):
//! ```ignore
//! // SAFETY: the boot protocol put a DTB at `dtb_phys`, identity-mapped and unchanged.
//! let platform = unsafe { firmware::devicetree::parse_at(dtb_phys as *const u8) }?;
//! let smmu = &platform.smmus[0];
//! let (smmu_phandle, sid) = platform.pcie_host().unwrap().iommu_for_rid(rid).unwrap();
//! ```
//! x86_64 (RSDP from the PVH start_info):
//! ```ignore
//! // SAFETY: physical memory below 4 GiB is identity-mapped and holds RAM/ROM there.
//! let memory = unsafe { firmware::acpi::IdentityMapped::new(0, 1 << 32) };
//! let info = firmware::acpi::discover(start_info.rsdp_paddr, &memory)?;
//! let drhd = &info.dmar.as_ref().unwrap().drhds[0];
//! ```
//!
//! The workspace's `acpi` (6.x) and `fdt` (0.1) crates are deliberately not used: acpi 6
//! needs a nightly feature, and fdt 0.1 panics on malformed trees (see `Cargo.toml`).
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod acpi;
mod bytes;
pub mod devicetree;
mod error;
mod overlap;

pub use error::FirmwareError;

/// Property-test case count: modest by default to keep CI fast; set
/// `FIRMWARE_FUZZ_CASES` for a deep run.
#[cfg(test)]
fn test_cases() -> u32 {
    std::env::var("FIRMWARE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}
