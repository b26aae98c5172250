//! PCI configuration space over ECAM, enumeration, BAR sizing and assignment,
//! and the capability list (MSI).
//!
//! Everything here goes through the [`ConfigSpace`] trait, so enumeration and
//! BAR logic are tested on the host against a model of devices; [`Ecam`] is
//! the real, memory-mapped implementation (PCIe Base 6.0 §7.2.2).
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

mod capability;
mod config;
mod ecam;

pub mod acs;
pub mod bar;
pub mod bridge;
pub mod reset;

pub use bar::{Bar, BarAllocator, BarError, MemoryWindow};
pub use capability::{Capabilities, CapabilityId, Msi};
pub use config::{Command, ConfigSpace, HeaderType, offsets};
pub use ecam::Ecam;

use alloc::vec::Vec;
use core::fmt;

/// A function's address: bus, device, function (the requester ID without segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number (0-31).
    pub device: u8,
    /// Function number (0-7).
    pub function: u8,
}

impl Bdf {
    /// The function at `bus:device.function`.
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Bdf {
            bus,
            device,
            function,
        }
    }

    /// The 16-bit requester ID (PCIe Base 6.0 §2.2.6.2): `bus[15:8]`, `device[7:3]`, `function[2:0]`.
    /// It is what IOMMUs index their tables with (VT-d source-id, AMD-Vi DeviceID,
    /// SMMUv3 StreamID through the `iommu-map`).
    pub const fn requester_id(self) -> u16 {
        (self.bus as u16) << 8 | (self.device as u16) << 3 | self.function as u16
    }

    /// The function a requester ID names.
    pub const fn from_requester_id(rid: u16) -> Self {
        Bdf::new(
            (rid >> 8) as u8,
            ((rid >> 3) & 0x1F) as u8,
            (rid & 0x7) as u8,
        )
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// Devices per bus and functions per device (PCI Local Bus 3.0 §6.1).
const DEVICES_PER_BUS: u8 = 32;
const FUNCTIONS_PER_DEVICE: u8 = 8;
/// Vendor ID that reads back when no function answers.
const NO_DEVICE: u16 = 0xFFFF;

/// A function found by enumeration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Class code, subclass, programming interface (offset 0x09..0x0B).
    pub class: u32,
    /// Its Header Type.
    pub header_type: HeaderType,
}

/// Scans buses `buses` and returns every function that answers, in BDF order.
///
/// A brute-force scan of the bus range ECAM covers: simple and complete on
/// QEMU's flat topologies; bridges are listed like any function.
pub fn enumerate(config: &dyn ConfigSpace, buses: core::ops::RangeInclusive<u8>) -> Vec<Function> {
    let mut found = Vec::new();
    for bus in buses {
        for device in 0..DEVICES_PER_BUS {
            let first = Bdf::new(bus, device, 0);
            if config.read16(first, offsets::VENDOR_ID) == NO_DEVICE {
                continue;
            }
            let multi_function =
                HeaderType::from_raw(config.read8(first, offsets::HEADER_TYPE)).multi_function;
            let functions = if multi_function {
                FUNCTIONS_PER_DEVICE
            } else {
                1
            };
            for function in 0..functions {
                let bdf = Bdf::new(bus, device, function);
                let vendor_id = config.read16(bdf, offsets::VENDOR_ID);
                if vendor_id == NO_DEVICE {
                    continue;
                }
                found.push(Function {
                    bdf,
                    vendor_id,
                    device_id: config.read16(bdf, offsets::DEVICE_ID),
                    class: config.read32(bdf, offsets::REVISION_CLASS) >> 8,
                    header_type: HeaderType::from_raw(config.read8(bdf, offsets::HEADER_TYPE)),
                });
            }
        }
    }
    found
}

#[cfg(test)]
mod model;

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;

    use super::model::{Model, ModelFunction};
    use super::*;

    const EDU_VENDOR: u16 = 0x1234;
    const EDU_DEVICE: u16 = 0x11E8;

    fn edu() -> ModelFunction {
        ModelFunction::new(EDU_VENDOR, EDU_DEVICE, 0x00FF00).with_mem32_bar(0, 1 << 20, false)
    }

    #[test]
    fn requester_id_packs_bus_device_function() {
        let bdf = Bdf::new(0x12, 0x1F, 7);
        assert_eq!(bdf.requester_id(), 0x12FF);
        assert_eq!(Bdf::new(0, 4, 0).requester_id(), 0x20);
        assert_eq!(Bdf::from_requester_id(0x12FF), bdf);
    }

    #[test]
    fn enumerate_finds_single_and_multi_function_devices_in_order() {
        let model = Model::with(vec![
            (Bdf::new(0, 4, 0), edu()),
            (
                Bdf::new(0, 0x1F, 0),
                ModelFunction::new(0x8086, 0x2918, 0x060100).with_multi_function(),
            ),
            (
                Bdf::new(0, 0x1F, 3),
                ModelFunction::new(0x8086, 0x2930, 0x0C0500),
            ),
            // Function 5 of a single-function device must not be reported.
            (Bdf::new(0, 4, 5), ModelFunction::new(0xDEAD, 0xBEEF, 0)),
        ]);
        let found = enumerate(&model, 0..=0);
        let bdfs: std::vec::Vec<_> = found.iter().map(|f| f.bdf).collect();
        assert_eq!(
            bdfs,
            vec![
                Bdf::new(0, 4, 0),
                Bdf::new(0, 0x1F, 0),
                Bdf::new(0, 0x1F, 3)
            ]
        );
        assert_eq!(found[0].vendor_id, EDU_VENDOR);
        assert_eq!(found[0].device_id, EDU_DEVICE);
        assert_eq!(found[0].class, 0x00FF00);
        assert_eq!(found[2].class, 0x0C0500);
    }

    #[test]
    fn bar_probe_sizes_32_and_64_bit_bars_and_restores_them() {
        let bdf = Bdf::new(0, 1, 0);
        let model = Model::with(vec![(bdf, edu().with_mem64_bar(2, 1 << 33))]);
        model
            .functions
            .borrow_mut()
            .get_mut(&bdf)
            .unwrap()
            .set32(0x04, u32::from(Command::MEMORY_SPACE.bits()));
        let bars = bar::probe_all(&model, bdf);
        assert_eq!(
            bars,
            vec![
                Bar::Memory {
                    index: 0,
                    address: 0,
                    size: 1 << 20,
                    is_64bit: false,
                    prefetchable: false
                },
                Bar::Memory {
                    index: 2,
                    address: 0,
                    size: 1 << 33,
                    is_64bit: true,
                    prefetchable: false
                },
            ]
        );
        // Decoding was switched off around sizing and restored after.
        assert_eq!(model.command(bdf), Command::MEMORY_SPACE);
        let sizing_writes: std::vec::Vec<_> = model
            .writes
            .borrow()
            .iter()
            .filter(|w| w.1 == offsets::COMMAND)
            .map(|w| w.2)
            .collect();
        assert!(
            sizing_writes.contains(&0),
            "memory decode not disabled while sizing"
        );
    }

    #[test]
    fn bar_allocator_aligns_naturally_and_refuses_overflow() {
        let first = Bdf::new(0, 1, 0);
        let second = Bdf::new(0, 2, 0);
        let model = Model::with(vec![
            (
                first,
                ModelFunction::new(1, 1, 0).with_mem32_bar(0, 0x1000, false),
            ),
            (second, edu()),
        ]);
        let window = MemoryWindow {
            pci_base: 0x1000_0000,
            cpu_base: 0x1000_0000,
            size: 0x20_0000,
        };
        let mut allocator = BarAllocator::new(window);
        let small = allocator
            .assign(&model, first, bar::probe(&model, first, 0).unwrap())
            .unwrap();
        let big = allocator
            .assign(&model, second, bar::probe(&model, second, 0).unwrap())
            .unwrap();
        assert!(matches!(
            small,
            Bar::Memory {
                address: 0x1000_0000,
                ..
            }
        ));
        assert!(matches!(
            big,
            Bar::Memory {
                address: 0x1010_0000,
                size: 0x10_0000,
                ..
            }
        ));
        assert_eq!(model.read32(second, offsets::BAR0), 0x1010_0000);
        // A third 1 MiB BAR no longer fits in the 2 MiB window.
        assert_eq!(
            allocator.assign(&model, second, big),
            Err(BarError::WindowFull)
        );
    }

    #[test]
    fn capability_walk_finds_msi_and_stops_on_a_loop() {
        let bdf = Bdf::new(0, 4, 0);
        let model = Model::with(vec![(
            bdf,
            edu().with_capabilities(&[(0x40, 0x05, 0x50), (0x50, 0x10, 0x40)]),
        )]);
        let caps: std::vec::Vec<_> = Capabilities::new(&model, bdf).collect();
        assert_eq!(
            caps.len(),
            48,
            "a looping list must be cut at the maximum possible length"
        );
        assert_eq!(caps[0], (CapabilityId::MSI, 0x40));
        assert_eq!(caps[1], (CapabilityId::PCI_EXPRESS, 0x50));
        assert_eq!(
            Capabilities::offset_of(&model, bdf, CapabilityId::MSI_X),
            None
        );
    }

    #[test]
    fn msi_enable_programs_a_64bit_message() {
        let bdf = Bdf::new(0, 4, 0);
        let model = Model::with(vec![(bdf, edu().with_capabilities(&[(0x40, 0x05, 0x00)]))]);
        // Control: 64-bit capable.
        model.functions.borrow_mut().get_mut(&bdf).unwrap().space[0x42] = 0x80;
        let msi = Msi::find(&model, bdf).expect("MSI capability");
        msi.enable(&model, 0x1_FEE0_1000, 0x4041);
        assert!(msi.is_enabled(&model));
        assert_eq!(model.read32(bdf, 0x44), 0xFEE0_1000);
        assert_eq!(model.read32(bdf, 0x48), 0x1);
        assert_eq!(model.read16(bdf, 0x4C), 0x4041);
        msi.disable(&model);
        assert!(!msi.is_enabled(&model));
    }
}
