//! MCFG: PCI Express memory-mapped configuration space (PCI Firmware Specification
//! 3.3 §4.1.2 "MCFG Table Description").

use alloc::vec::Vec;

use super::sdt::{SDT_HEADER_SIZE, checked_table};
use crate::FirmwareError;
use crate::bytes::{le16, le64, u8_at};
use crate::overlap;

/// PCI FW §4.1.2: 8 reserved bytes follow the header.
const ENTRIES_OFFSET: usize = SDT_HEADER_SIZE + 8;
/// PCI FW §4.1.2: one "configuration space base address allocation" structure.
const ENTRY_SIZE: usize = 16;
const ENTRY_BASE: usize = 0;
const ENTRY_SEGMENT: usize = 8;
const ENTRY_START_BUS: usize = 10;
const ENTRY_END_BUS: usize = 11;
/// ECAM (PCIe base spec §7.2.2): bus in address bits 27:20, device 19:15, function 14:12.
const ECAM_BUS_SHIFT: u32 = 20;
const ECAM_DEVICE_SHIFT: u32 = 15;
const ECAM_FUNCTION_SHIFT: u32 = 12;

/// One ECAM window (PCI FW §4.1.2 base address allocation structure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcamRegion {
    /// ECAM base for bus 0 of the segment (even when `bus_start` is not 0).
    pub base: u64,
    /// The PCI segment.
    pub segment: u16,
    /// First bus the window covers.
    pub bus_start: u8,
    /// Last bus (inclusive).
    pub bus_end: u8,
}

impl EcamRegion {
    /// Physical address of the configuration space of bus:device.function, if the bus
    /// is decoded by this window.
    pub fn config_address(&self, bus: u8, device: u8, function: u8) -> Option<u64> {
        if !(self.bus_start..=self.bus_end).contains(&bus) || device > 31 || function > 7 {
            return None;
        }
        let offset = (u64::from(bus) << ECAM_BUS_SHIFT)
            | (u64::from(device) << ECAM_DEVICE_SHIFT)
            | (u64::from(function) << ECAM_FUNCTION_SHIFT);
        self.base.checked_add(offset)
    }

    /// The (start, size) of physical address space this window decodes; `None` for a
    /// region that [`parse_mcfg`] would have rejected.
    pub fn window(&self) -> Option<(u64, u64)> {
        let start = self
            .base
            .checked_add(u64::from(self.bus_start) << ECAM_BUS_SHIFT)?;
        let buses = u64::from(self.bus_end).checked_sub(u64::from(self.bus_start))? + 1;
        let size = buses << ECAM_BUS_SHIFT;
        start.checked_add(size)?;
        Some((start, size))
    }
}

/// Parses a whole MCFG table (header included, checksum verified).
pub fn parse_mcfg(bytes: &[u8]) -> Result<Vec<EcamRegion>, FirmwareError> {
    let (_, table) = checked_table(bytes, b"MCFG")?;
    let entries = table
        .get(ENTRIES_OFFSET..)
        .ok_or(FirmwareError::Truncated {
            what: "MCFG",
            offset: table.len(),
        })?;
    if !entries.len().is_multiple_of(ENTRY_SIZE) {
        return Err(FirmwareError::BadLength {
            what: "MCFG entries",
            offset: ENTRIES_OFFSET,
            length: entries.len(),
        });
    }
    let mut regions: Vec<EcamRegion> = Vec::with_capacity(entries.len() / ENTRY_SIZE);
    for (i, entry) in entries.chunks_exact(ENTRY_SIZE).enumerate() {
        let offset = ENTRIES_OFFSET + i * ENTRY_SIZE;
        let t = FirmwareError::Truncated {
            what: "MCFG entry",
            offset,
        };
        let region = EcamRegion {
            base: le64(entry, ENTRY_BASE).ok_or(t)?,
            segment: le16(entry, ENTRY_SEGMENT).ok_or(t)?,
            bus_start: u8_at(entry, ENTRY_START_BUS).ok_or(t)?,
            bus_end: u8_at(entry, ENTRY_END_BUS).ok_or(t)?,
        };
        if region.bus_start > region.bus_end {
            return Err(FirmwareError::Malformed {
                what: "MCFG bus range",
                offset,
            });
        }
        region
            .base
            .checked_add((u64::from(region.bus_end) + 1) << ECAM_BUS_SHIFT)
            .ok_or(FirmwareError::Overflow { what: "MCFG entry" })?;
        regions.push(region);
    }
    let buses = regions
        .iter()
        .map(|r| {
            (
                u64::from(r.segment),
                u64::from(r.bus_start),
                u64::from(r.bus_end),
            )
        })
        .collect();
    if overlap::any_overlap(buses) {
        return Err(FirmwareError::Overlap {
            what: "MCFG bus ranges",
        });
    }
    Ok(regions)
}
