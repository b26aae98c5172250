//! The contract every IOMMU driver implements: units, domains, attach, flush, faults, raw hardware info.
#![no_std]
