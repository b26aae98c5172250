//! The pieces every IOMMU driver in this project needs, written once.
//!
//! VT-d, AMD-Vi and SMMUv3 differ in their registers, entries and commands,
//! but not in how they keep a structure the device reads, hand page-table
//! pages to `io-page-table`, walk a command ring, hand out domain ids or count
//! their work. Those live here, so that a reader learns them once and a fix
//! lands in all three drivers:
//!
//! - [`dma`]: [`DmaBuffer`], device-visible memory with bounds-checked
//!   volatile access, and [`DmaBuffer::publish`], the one writer of entries the
//!   hardware may read at any time (ordering and cache maintenance in one place).
//! - [`table_alloc`]: [`DmaTableAlloc`], `io-page-table`'s page allocator over a
//!   driver's `DmaMemory`.
//! - [`ring`]: the two ways hardware tells a full ring from an empty one:
//!   a slot always left empty ([`SlotRing`], VT-d and AMD-Vi) or a wrap bit
//!   ([`WrapIndex`], SMMUv3).
//! - [`shared_ring`]: [`SharedRing`], the claim / publish / observe protocol
//!   by which several CPUs submit to one of those rings, each waiting only for
//!   its own commands, or for a sync another CPU queued after them
//!   (model-checked with `loom`).
//! - [`ids`]: [`IdAllocator`], domain ids (DID, DomainID, ASID, VMID) that are
//!   recycled only after the driver has invalidated them.
//! - [`unlinked`]: [`Unlinked`], the table pages unmaps unlinked, each batch
//!   freed by the flush whose range covers it, so that CPUs unmapping from one
//!   domain at once never free each other's.
//! - [`counters!`]: a counters struct with `since`, for the figures, and
//!   [`Tally`], one that several CPUs add to.
//! - [`rationed`]: [`Rationed`], DMA memory that refuses after a budget, to
//!   exhaust table pages on demand in tests (host and kernel alike).
//! - [`recycled`]: [`Recycled`], DMA memory whose unzeroed allocations hold a
//!   chosen word everywhere, as a hostile previous owner may leave a frame.
//! - `fakes` (feature `host-fakes`): heap-backed DMA memory and a stepping
//!   clock for host tests.
#![cfg_attr(not(any(test, feature = "host-fakes")), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod counters;
pub mod dma;
#[cfg(any(test, feature = "host-fakes"))]
pub mod fakes;
pub mod ids;
pub mod rationed;
pub mod recycled;
pub mod ring;
pub mod shared_ring;
pub mod table_alloc;
pub mod unlinked;

pub use counters::Tally;
pub use dma::{CacheClean, CacheMaintenance, DmaBuffer};
pub use ids::{IdAllocator, TakenId};
pub use rationed::Rationed;
pub use recycled::Recycled;
pub use ring::{BadPointer, SlotRing, WrapIndex};
pub use shared_ring::{Claim, Full, SharedRing};
pub use table_alloc::DmaTableAlloc;
pub use unlinked::{Taken, Unlinked};
