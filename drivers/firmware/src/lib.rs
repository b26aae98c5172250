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

pub use error::FirmwareError;
