//! Driver for the AMD I/O Virtualization Technology (IOMMU), "AMD-Vi".
//!
//! References: AMD I/O Virtualization Technology (IOMMU) Specification, pub. 48882
//! rev 3.10 ("AMD IOMMU" below). Every hardware structure cites its section.
//!
//! Layout of the crate, one hardware function per module:
//! - [`regs`]: the MMIO register block (§3.4) and the PCI capability header (§3.2.1).
//! - [`dte`]: device table entries (§2.2.2).
//! - [`command`]: command-buffer entries (§2.4) and the INVALIDATE_IOMMU_PAGES range
//!   encoding.
//! - [`event`]: event-log entries (§2.5) and the ring reader.
//! - [`irte`]: interrupt remapping table entries (§2.2.5).
//! - [`ring`]: head/tail arithmetic shared by the command buffer and the event log.
//! - [`tables`]: table pages for the AMD v1 page tables of `io-page-table`.
//! - [`discovery`]: what the IVRS (§5.2) says about each IOMMU.
//! - [`unit`]: one live IOMMU: bring-up, command submission, faults, domains.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod command;
pub mod discovery;
pub mod dte;
pub mod event;
pub mod irte;
pub mod regs;
pub mod ring;
pub mod tables;
pub mod unit;

#[cfg(test)]
mod model;

pub use discovery::{DiscoveryError, UnitDescription};
pub use unit::{AmdVi, Counters, UnitError};
