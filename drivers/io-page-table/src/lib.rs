//! Native IO page-table formats of VT-d, AMD-Vi and ARM SMMUv3: one walk algorithm,
//! per-format accessors.
#![no_std]

pub mod gather;

pub use gather::Gather;
