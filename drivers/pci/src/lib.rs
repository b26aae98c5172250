//! PCI ECAM configuration space, enumeration, BAR assignment and capabilities.
#![no_std]
