//! Intel VT-d (Intel Virtualization Technology for Directed I/O, spec 3.4)
//! remapping-hardware driver behind the [`iommu::IommuUnit`] contract.
//!
//! One module per hardware function: [`regs`] (registers, §11.4), [`tables`]
//! (root/context/PASID structures, chapter 9), [`invalidation`] (queued
//! invalidation descriptors, §6.5.2), [`fault`] (fault records, §7.1.3),
//! [`interrupt`] (interrupt remapping, chapter 5), [`discovery`] (ACPI DMAR,
//! chapter 8) and [`unit`], which drives one remapping unit with them.
#![no_std]

extern crate alloc;

pub mod discovery;
pub mod fault;
pub mod interrupt;
pub mod invalidation;
pub mod paging;
pub mod queue;
pub mod regs;
pub mod tables;
pub mod unit;

#[cfg(test)]
mod tests;

pub use paging::{DomainTable, TableFactory, TableFormat};
pub use unit::{Counters, Environment, Error, FaultStats, Mode, Options, Registers, Vtd};
