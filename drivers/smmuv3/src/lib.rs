//! ARM SMMUv3 driver (SMMUv3 architecture specification, IHI 0070): typed
//! registers, stream table entries, context descriptors, commands and event
//! records, and one SMMU instance with its queues and stream table.
//!
//! Policy (which device goes where) is the kernel's; this crate only knows the
//! hardware.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod cd;
pub mod command;
pub mod fault;
pub mod invalidation;
pub mod queue;
pub mod regs;
pub mod smmu;
pub mod ste;
pub mod unit;

pub use cd::{Cd, Stage1Config};
pub use command::{Command, RawCommand};
pub use fault::{Event, EventKind, Fault, Stage};
pub use regs::Granule;
pub use smmu::{Counters, Error, Features, Smmu, StreamTableFormat};
pub use ste::{Stage2Config, Ste, StreamConfig};
pub use unit::SmmuUnit;
