//! Firmware-table parsers: ACPI (MCFG, DMAR, IVRS) and the flattened device tree.
//!
//! Every parser works on untrusted bytes: each length, count and offset is checked
//! before use, arithmetic is checked, and malformed input yields a [`FirmwareError`],
//! never a panic or an out-of-bounds read.
#![no_std]

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
