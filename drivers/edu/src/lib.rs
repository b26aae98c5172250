//! Driver for QEMU's edu PCI device, the DMA master of every test.
#![no_std]
