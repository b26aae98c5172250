//! The stream table and what it points at (SMMUv3 §5): a stream table entry
//! per StreamID ([`ste`], §5.2) selects the translation of that stream, and
//! a stage-1 context descriptor ([`cd`], §5.4) holds its stage-1 table.
//! VT-d's root and context entries and AMD-Vi's device table entry do the
//! same job in their drivers' `device_table.rs`.

pub mod cd;
pub mod ste;
