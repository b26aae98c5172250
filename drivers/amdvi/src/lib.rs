//! Driver for the AMD I/O Virtualization Technology (IOMMU), "AMD-Vi".
//!
//! References: AMD I/O Virtualization Technology (IOMMU) Specification, pub. 48882
//! rev 3.10 ("AMD IOMMU" below). Every hardware structure cites its section.
//!
//! Layout of the crate, as in the other two drivers (docs/IOMMU.md, "Where each job
//! lives"):
//! - [`regs`]: the MMIO register block (§3.4) and the PCI capability header (§3.2.1).
//! - [`device_table`]: device table entries (§2.2.2).
//! - [`command`]: command-buffer entries (§2.4) and the INVALIDATE_IOMMU_PAGES range
//!   encoding.
//! - [`invalidation`]: which commands a change needs (§2.4.3).
//! - [`fault`]: event-log entries (§2.5) and the ring reader.
//! - [`interrupt`]: interrupt remapping table entries (§2.2.5).
//! - [`paging`]: table pages for the AMD v1 page tables of `io-page-table`.
//! - [`discovery`]: what the IVRS (§5.2) says about each IOMMU.
//! - [`hardware`]: one IOMMU's instance: bring-up, and in `hardware/` what it does for
//!   each job (device table, command buffer, event log, interrupt tables).
//! - [`mod@unit`]: the contract over the instance: domains, attachments, fault queues.
//!
//! # What is proven where
//! QEMU 10.0.2's `amd-iommu,pt=off` translates and caches translations, so DMA
//! remapping, blocking, invalidation after unmap and interrupt remapping are tested
//! there with edu DMA (kernel tests `amdvi::*`). It never writes its event log,
//! drops a whole domain on any INVALIDATE_IOMMU_PAGES, caches no DTEs and keeps
//! processing after an illegal command. Those paths are tested on the host instead:
//! encodings against values built by hand from the spec, the INVALIDATE_IOMMU_PAGES
//! range encoding against a shadow IOTLB, the event-log reader against a model
//! producer, and the unit itself against a model IOMMU (`model`, test-only) that
//! caches DTEs, halts on illegal commands and overflows its event log.
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
pub mod interrupt;
pub mod invalidation;
pub mod paging;
pub mod regs;
pub mod unit;

#[cfg(test)]
mod model;

pub use discovery::{DiscoveryError, UnitDescription};
pub use hardware::{Counters, Hardware, UnitError};
pub use unit::AmdVi;
