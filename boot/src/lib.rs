//! Per-architecture entry code and the BootInfo the kernel starts from.
#![no_std]
