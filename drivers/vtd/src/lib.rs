//! Intel VT-d (Intel Virtualization Technology for Directed I/O, spec 3.4)
//! remapping-hardware driver behind the [`iommu::IommuUnit`] contract.
//!
//! The modules are laid out as in the other two drivers (docs/IOMMU.md,
//! "Where each job lives"): [`regs`] (registers, §11.4), [`device_table`]
//! (root, context and PASID entries, chapter 9), [`command`] (invalidation
//! queue descriptors and the ring, §6.5.2), [`invalidation`] (which
//! invalidation a change needs, §6.5), [`fault`] (fault records, §7.1.3),
//! [`interrupt`] (interrupt remapping, chapter 5), [`discovery`] (ACPI DMAR,
//! chapter 8), [`paging`] (the domains' I/O page tables, §9.7-9.8) and
//! [`hardware`] (one remapping unit's instance: bring-up, the register
//! file, and in `hardware/` what it does for each job) and [`unit`](mod@unit)
//! (domains and the contract over the instance). `model` (host tests only) is
//! a register-level model that caches what the spec lets it cache.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod command;
pub mod device_table;
pub mod discovery;
pub mod fault;
pub mod hardware;
pub mod interrupt;
pub mod invalidation;
pub mod paging;
pub mod regs;
pub mod unit;

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

pub use hardware::{Counters, Environment, Error, FaultStats, Hardware, Mode, Options, Registers};
pub use paging::{DomainTable, TableFactory, TableFormat};
pub use unit::Vtd;
