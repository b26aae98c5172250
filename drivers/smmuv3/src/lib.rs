//! ARM SMMUv3 driver (SMMUv3 architecture specification, IHI 0070).
//!
//! The modules are laid out as in the other two drivers (docs/IOMMU.md,
//! "Where each job lives"): [`regs`] (registers, §6), [`discovery`] (the
//! device tree's description), [`device_table`] (stream table entries and
//! context descriptors, §5), [`command`] (command queue entries, §4; PROD/CONS
//! arithmetic is the kit's `WrapIndex`, §3.5), [`invalidation`] (which
//! commands a change needs, §4.4), [`fault`] (event records, §7), [`paging`]
//! (the domains' I/O page tables), [`nesting`] (what a task may hand the SMMU
//! for its own stage 1), [`hardware`] (one SMMU instance; in `hardware/` its
//! stream table, command and event queues) and [`unit`](mod@unit) (the
//! `iommu::IommuUnit` contract over it). `model` (host tests only) is a
//! register-level model of the SMMU.
//!
//! Policy (which device goes where) is the kernel's; this crate only knows the
//! hardware.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod command;
pub mod device_table;
pub mod discovery;
pub mod fault;
pub mod hardware;
pub mod invalidation;
pub mod nesting;
pub mod paging;
pub mod regs;
pub mod unit;

pub use command::{Command, RawCommand};
pub use device_table::cd::{Cd, CdError, Stage1Config};
pub use device_table::ste::{Stage2Config, Ste, StreamConfig};
pub use fault::{Event, EventKind, Fault, Stage};
pub use hardware::{Counters, Error, Features, Smmu, StreamTableFormat};
pub use regs::Granule;
pub use unit::SmmuUnit;

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
