//! A model of configuration space for host tests: functions with BARs whose
//! size masks behave like hardware, and raw capability bytes.

extern crate std;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;

use crate::{Bdf, ConfigSpace, offsets};

pub struct ModelFunction {
    /// The whole 4 KiB of PCIe configuration space, extended capabilities
    /// included.
    pub space: [u8; 4096],
    /// Per BAR slot: (writable address bits, read-only type bits), or None
    /// for an unimplemented slot.
    pub bars: [Option<(u32, u32)>; 6],
}

impl ModelFunction {
    pub fn new(vendor: u16, device: u16, class: u32) -> Self {
        let mut space = [0u8; 4096];
        space[0..2].copy_from_slice(&vendor.to_le_bytes());
        space[2..4].copy_from_slice(&device.to_le_bytes());
        space[9..12].copy_from_slice(&class.to_le_bytes()[..3]);
        ModelFunction {
            space,
            bars: [None; 6],
        }
    }

    pub fn set32(&mut self, offset: usize, value: u32) {
        self.space[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// A 32-bit memory BAR of `size` bytes at slot `index`.
    pub fn with_mem32_bar(mut self, index: usize, size: u32, prefetchable: bool) -> Self {
        let flags = if prefetchable { 1 << 3 } else { 0 };
        self.bars[index] = Some((!(size - 1) & !0xF, flags));
        self.set32(0x10 + 4 * index, flags);
        self
    }

    /// A 64-bit memory BAR of `size` bytes at slots `index`, `index + 1`.
    pub fn with_mem64_bar(mut self, index: usize, size: u64) -> Self {
        let mask = !(size - 1);
        let flags = 0b10 << 1;
        self.bars[index] = Some((mask as u32 & !0xF, flags));
        self.bars[index + 1] = Some(((mask >> 32) as u32, 0));
        self.set32(0x10 + 4 * index, flags);
        self
    }

    /// A PCI-to-PCI bridge (type-1 header, class 0604h); its bus numbers
    /// start at zero, as after reset.
    pub fn bridge(vendor: u16, device: u16) -> Self {
        let mut function = ModelFunction::new(vendor, device, 0x060400);
        function.space[offsets::HEADER_TYPE as usize] = 0x01;
        function
    }

    /// A PCI Express capability at 0x40 with device/port type `port_type`.
    pub fn with_pcie_port_type(mut self, port_type: u8) -> Self {
        self = self.with_capabilities(&[(0x40, 0x10, 0)]);
        self.space[0x42] = 0x02 | (port_type << 4);
        self
    }

    /// An ACS Extended Capability at 0x100 (the first, and last, extended
    /// capability) implementing `implemented`, with `enabled` on.
    pub fn with_acs(mut self, implemented: u16, enabled: u16) -> Self {
        self.set32(0x100, 0x000D | (1 << 16));
        self.space[0x104..0x106].copy_from_slice(&implemented.to_le_bytes());
        self.space[0x106..0x108].copy_from_slice(&enabled.to_le_bytes());
        self
    }

    pub fn with_multi_function(mut self) -> Self {
        self.space[offsets::HEADER_TYPE as usize] |= 0x80;
        self
    }

    /// Installs a capability list from `(offset, id, next)` triples.
    pub fn with_capabilities(mut self, caps: &[(u8, u8, u8)]) -> Self {
        self.space[offsets::STATUS as usize] |= 1 << 4;
        if let Some(&(first, _, _)) = caps.first() {
            self.space[offsets::CAPABILITIES_POINTER as usize] = first;
        }
        for &(offset, id, next) in caps {
            self.space[offset as usize] = id;
            self.space[offset as usize + 1] = next;
        }
        self
    }
}

#[derive(Default)]
pub struct Model {
    pub functions: RefCell<BTreeMap<Bdf, ModelFunction>>,
    pub writes: RefCell<Vec<(Bdf, u16, u32)>>,
}

impl Model {
    pub fn with(functions: Vec<(Bdf, ModelFunction)>) -> Self {
        Model {
            functions: RefCell::new(functions.into_iter().collect()),
            writes: RefCell::new(vec![]),
        }
    }
}

impl ConfigSpace for Model {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        let functions = self.functions.borrow();
        let Some(function) = functions.get(&bdf) else {
            return u32::MAX;
        };
        let offset = offset as usize;
        if offset + 4 > function.space.len() {
            return 0;
        }
        u32::from_le_bytes(function.space[offset..offset + 4].try_into().unwrap())
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        self.writes.borrow_mut().push((bdf, offset, value));
        let mut functions = self.functions.borrow_mut();
        let Some(function) = functions.get_mut(&bdf) else {
            return;
        };
        let offset = offset as usize;
        let bars_end = if function.space[offsets::HEADER_TYPE as usize] & 0x7F == 1 {
            0x18
        } else {
            0x28
        };
        if (0x10..bars_end).contains(&offset) {
            let (writable, read_only) = function.bars[(offset - 0x10) / 4].unwrap_or((0, 0));
            function.set32(offset, (value & writable) | read_only);
        } else if offset + 4 <= function.space.len() {
            function.set32(offset, value);
        }
    }
}
