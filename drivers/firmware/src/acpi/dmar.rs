//! DMAR: DMA Remapping Reporting table (Intel VT-d Architecture Specification rev 4.1,
//! chapter 8 "BIOS Considerations", §8.1–§8.9).

use alloc::string::String;
use alloc::vec::Vec;

use super::sdt::{SdtHeader, checked_table};
use crate::FirmwareError;
use crate::bytes::{le16, le32, le64, slice, u8_at};
use crate::overlap;

/// VT-d §8.1 "DMA Remapping Reporting Structure" offsets.
const HOST_ADDRESS_WIDTH: usize = 36;
const FLAGS: usize = 37;
/// 10 reserved bytes follow the flags; the remapping structures start here.
const STRUCTURES_OFFSET: usize = 48;

/// VT-d §8.2 remapping structure types.
const TYPE_DRHD: u16 = 0;
const TYPE_RMRR: u16 = 1;
const TYPE_ATSR: u16 = 2;
const TYPE_RHSA: u16 = 3;
const TYPE_ANDD: u16 = 4;
const TYPE_SATC: u16 = 5;
/// Every remapping structure starts with Type (u16) and Length (u16).
const STRUCT_HEADER_SIZE: usize = 4;

/// VT-d §8.1 `Flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmarFlags(pub u8);

impl DmarFlags {
    /// Bit 0 INTR_REMAP: the platform supports interrupt remapping.
    pub const INTR_REMAP: u8 = 1 << 0;
    /// Bit 1 X2APIC_OPT_OUT: firmware asks the OS not to enable x2APIC mode.
    pub const X2APIC_OPT_OUT: u8 = 1 << 1;
    /// Bit 2 DMA_CTRL_PLATFORM_OPT_IN_FLAG: firmware set up DMA protection the OS may keep.
    pub const DMA_CTRL_PLATFORM_OPT_IN: u8 = 1 << 2;

    /// INTR_REMAP: the platform supports interrupt remapping.
    pub fn intr_remap(self) -> bool {
        self.0 & Self::INTR_REMAP != 0
    }
    /// X2APIC_OPT_OUT: firmware asks the OS not to use x2APIC mode.
    pub fn x2apic_opt_out(self) -> bool {
        self.0 & Self::X2APIC_OPT_OUT != 0
    }
    /// DMA_CTRL_PLATFORM_OPT_IN: firmware protected DMA before handing over (the OS should keep the IOMMU on).
    pub fn dma_ctrl_platform_opt_in(self) -> bool {
        self.0 & Self::DMA_CTRL_PLATFORM_OPT_IN != 0
    }
}

/// VT-d §8.3.1 device scope entry types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceScopeType {
    /// 01h: a PCI endpoint.
    PciEndpoint,
    /// 02h: a bridge and everything below it.
    PciSubHierarchy,
    /// 03h: an I/O APIC.
    IoApic,
    /// 04h: an MSI-capable HPET.
    MsiCapableHpet,
    /// 05h: an ACPI namespace device.
    AcpiNamespaceDevice,
    /// Reserved by the spec; kept so the scope list stays complete.
    Reserved(u8),
}

impl DeviceScopeType {
    pub(crate) fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Self::PciEndpoint,
            2 => Self::PciSubHierarchy,
            3 => Self::IoApic,
            4 => Self::MsiCapableHpet,
            5 => Self::AcpiNamespaceDevice,
            other => Self::Reserved(other),
        }
    }
}

/// One hop of a device-scope path (VT-d §8.3.1.1): device and function on the current bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathEntry {
    /// Device number.
    pub device: u8,
    /// Function number.
    pub function: u8,
}

/// VT-d §8.3.1 Device Scope Structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceScope {
    /// What kind of device.
    pub scope_type: DeviceScopeType,
    /// Byte 2 flags (VT-d 4.x: bit 0 REQ_WO_PASID_NESTED_NOTALLOWED, bit 1
    /// REQ_WO_PASID_PWSNP_NOTALLOWED, bit 2 REQ_WO_PASID_PGSNP_NOTALLOWED, bit 3 ATC_HARDENED, bit 4 ATC_REQUIRED).
    pub flags: u8,
    /// IOAPIC ID, HPET number or ACPI device number (ANDD) depending on the type.
    pub enumeration_id: u8,
    /// The bus the path starts at.
    pub start_bus: u8,
    /// (device, function) hops from `start_bus`.
    pub path: Vec<PathEntry>,
}

/// VT-d §8.3.1 offsets.
const SCOPE_HEADER_SIZE: usize = 6;
const SCOPE_TYPE: usize = 0;
const SCOPE_LENGTH: usize = 1;
const SCOPE_FLAGS: usize = 2;
const SCOPE_ENUMERATION_ID: usize = 4;
const SCOPE_START_BUS: usize = 5;
const PATH_ENTRY_SIZE: usize = 2;

impl DeviceScope {
    /// Bus/device/function when the path has a single hop (no bridges to walk).
    pub fn bdf(&self) -> Option<(u8, u8, u8)> {
        match self.path.as_slice() {
            [only] => Some((self.start_bus, only.device, only.function)),
            _ => None,
        }
    }

    /// Walks the path (VT-d §8.3.1.1): every hop but the last is a PCI-PCI bridge whose
    /// secondary bus number `secondary_bus(bus, device, function)` reads from config space.
    pub fn resolve(
        &self,
        mut secondary_bus: impl FnMut(u8, u8, u8) -> Option<u8>,
    ) -> Option<(u8, u8, u8)> {
        let (last, bridges) = self.path.split_last()?;
        let mut bus = self.start_bus;
        for hop in bridges {
            bus = secondary_bus(bus, hop.device, hop.function)?;
        }
        Some((bus, last.device, last.function))
    }
}

/// VT-d §8.3 DMA Remapping Hardware Unit Definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drhd {
    /// Bit 0 INCLUDE_PCI_ALL: this unit covers every device of the segment not
    /// claimed by another DRHD.
    pub flags: u8,
    /// Byte 5 `Size` (VT-d 3.x+): register set size is 2^size 4 KiB pages; 0 on older
    /// firmware, which means one page.
    pub size: u8,
    /// The PCI segment.
    pub segment: u16,
    /// The unit's register base.
    pub register_base: u64,
    /// The devices it covers.
    pub scopes: Vec<DeviceScope>,
}

impl Drhd {
    /// Flags bit: every device of the segment not listed under another DRHD.
    pub const INCLUDE_PCI_ALL: u8 = 1 << 0;
    /// Bits 3:0 of `Size`.
    const SIZE_MASK: u8 = 0xf;

    /// INCLUDE_PCI_ALL is set.
    pub fn include_pci_all(&self) -> bool {
        self.flags & Self::INCLUDE_PCI_ALL != 0
    }

    /// Bytes of register space (at least one 4 KiB page).
    pub fn register_size(&self) -> u64 {
        4096u64 << (self.size & Self::SIZE_MASK)
    }
}

/// VT-d §8.4 Reserved Memory Region Reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rmrr {
    /// The PCI segment.
    pub segment: u16,
    /// First byte.
    pub base: u64,
    /// Last byte of the region (inclusive).
    pub limit: u64,
    /// The devices it covers.
    pub scopes: Vec<DeviceScope>,
}

/// VT-d §8.5 Root Port ATS Capability Reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Atsr {
    /// Bit 0 ALL_PORTS: every root port of the segment supports ATS.
    pub flags: u8,
    /// The PCI segment.
    pub segment: u16,
    /// The devices it covers.
    pub scopes: Vec<DeviceScope>,
}

impl Atsr {
    /// Flags bit: every root port of the segment supports ATS.
    pub const ALL_PORTS: u8 = 1 << 0;
}

/// VT-d §8.6 Remapping Hardware Static Affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rhsa {
    /// The register base of the unit it describes.
    pub register_base: u64,
    /// The NUMA proximity domain of the unit.
    pub proximity_domain: u32,
}

/// VT-d §8.7 ACPI Name-space Device Declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Andd {
    /// The number device scopes use for it.
    pub device_number: u8,
    /// Its ACPI object name.
    pub object_name: String,
}

/// VT-d §8.8 SoC Integrated Address Translation Cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Satc {
    /// Bit 0 ATC_REQUIRED.
    pub flags: u8,
    /// The PCI segment.
    pub segment: u16,
    /// The devices it covers.
    pub scopes: Vec<DeviceScope>,
}

/// A parsed DMAR table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dmar {
    /// The table header.
    pub header: SdtHeader,
    /// Raw `Host Address Width` field: the DMA physical address width is this plus one.
    pub host_address_width: u8,
    /// The table's flags.
    pub flags: DmarFlags,
    /// Remapping units.
    pub drhds: Vec<Drhd>,
    /// Reserved memory regions.
    pub rmrrs: Vec<Rmrr>,
    /// ATS reporting structures.
    pub atsrs: Vec<Atsr>,
    /// Remapping unit affinities.
    pub rhsas: Vec<Rhsa>,
    /// ACPI namespace device declarations.
    pub andds: Vec<Andd>,
    /// SoC integrated address translation caches.
    pub satcs: Vec<Satc>,
    /// Types of the structures this parser does not know (skipped by their length).
    pub unknown_types: Vec<u16>,
}

impl Dmar {
    /// Maximum DMA physical address width in bits (VT-d §8.1: HAW + 1).
    pub fn address_width(&self) -> u32 {
        u32::from(self.host_address_width) + 1
    }

    /// The DRHD responsible for segment:bus:device.function whose scope lists it
    /// directly (single-hop paths), else the segment's INCLUDE_PCI_ALL unit.
    pub fn drhd_for(&self, segment: u16, bus: u8, device: u8, function: u8) -> Option<&Drhd> {
        let listed = self.drhds.iter().find(|d| {
            d.segment == segment
                && d.scopes.iter().any(|s| {
                    matches!(
                        s.scope_type,
                        DeviceScopeType::PciEndpoint | DeviceScopeType::PciSubHierarchy
                    ) && s.bdf() == Some((bus, device, function))
                })
        });
        listed.or_else(|| {
            self.drhds
                .iter()
                .find(|d| d.segment == segment && d.include_pci_all())
        })
    }
}

fn truncated(offset: usize) -> FirmwareError {
    FirmwareError::Truncated {
        what: "DMAR structure",
        offset,
    }
}

/// Device scopes filling `bytes` (which starts at table offset `base`).
fn parse_scopes(bytes: &[u8], base: usize) -> Result<Vec<DeviceScope>, FirmwareError> {
    let mut scopes = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let offset = base + at;
        let length = u8_at(bytes, at + SCOPE_LENGTH).ok_or(FirmwareError::Truncated {
            what: "DMAR device scope",
            offset,
        })? as usize;
        if length < SCOPE_HEADER_SIZE
            || !(length - SCOPE_HEADER_SIZE).is_multiple_of(PATH_ENTRY_SIZE)
        {
            return Err(FirmwareError::BadLength {
                what: "DMAR device scope",
                offset,
                length,
            });
        }
        let scope = slice(bytes, at, length).ok_or(FirmwareError::BadLength {
            what: "DMAR device scope",
            offset,
            length,
        })?;
        let path = scope[SCOPE_HEADER_SIZE..]
            .chunks_exact(PATH_ENTRY_SIZE)
            .map(|hop| PathEntry {
                device: hop[0],
                function: hop[1],
            })
            .collect::<Vec<_>>();
        if path.iter().any(|hop| hop.device > 31 || hop.function > 7) {
            return Err(FirmwareError::Malformed {
                what: "DMAR device scope path",
                offset,
            });
        }
        scopes.push(DeviceScope {
            scope_type: DeviceScopeType::from_raw(scope[SCOPE_TYPE]),
            flags: scope[SCOPE_FLAGS],
            enumeration_id: scope[SCOPE_ENUMERATION_ID],
            start_bus: scope[SCOPE_START_BUS],
            path,
        });
        at += length;
    }
    Ok(scopes)
}

/// Minimum lengths of the fixed part of each structure (VT-d §8.3–§8.8).
const DRHD_FIXED: usize = 16;
const RMRR_FIXED: usize = 24;
const ATSR_FIXED: usize = 8;
const RHSA_SIZE: usize = 20;
const ANDD_FIXED: usize = 8;
const SATC_FIXED: usize = 8;
/// 4 KiB: the granule of RMRR base/limit (VT-d §8.4).
const PAGE_SIZE: u64 = 4096;

fn fixed_len(what: &'static str, s: &[u8], min: usize, offset: usize) -> Result<(), FirmwareError> {
    if s.len() < min {
        return Err(FirmwareError::BadLength {
            what,
            offset,
            length: s.len(),
        });
    }
    Ok(())
}

/// Parses a whole DMAR table (header included, checksum verified).
pub fn parse_dmar(bytes: &[u8]) -> Result<Dmar, FirmwareError> {
    let (header, table) = checked_table(bytes, b"DMAR")?;
    let host_address_width =
        u8_at(table, HOST_ADDRESS_WIDTH).ok_or(truncated(HOST_ADDRESS_WIDTH))?;
    let flags = DmarFlags(u8_at(table, FLAGS).ok_or(truncated(FLAGS))?);
    if table.len() < STRUCTURES_OFFSET {
        return Err(truncated(table.len()));
    }
    let mut dmar = Dmar {
        header,
        host_address_width,
        flags,
        drhds: Vec::new(),
        rmrrs: Vec::new(),
        atsrs: Vec::new(),
        rhsas: Vec::new(),
        andds: Vec::new(),
        satcs: Vec::new(),
        unknown_types: Vec::new(),
    };
    let mut at = STRUCTURES_OFFSET;
    while at < table.len() {
        let kind = le16(table, at).ok_or(truncated(at))?;
        let length = le16(table, at + 2).ok_or(truncated(at))? as usize;
        // A length below the common header would never advance (or walk backwards).
        if length < STRUCT_HEADER_SIZE {
            return Err(FirmwareError::BadLength {
                what: "DMAR structure",
                offset: at,
                length,
            });
        }
        let s = slice(table, at, length).ok_or(FirmwareError::BadLength {
            what: "DMAR structure",
            offset: at,
            length,
        })?;
        let u16_at = |o| le16(s, o).ok_or(truncated(at + o));
        let u64_at = |o| le64(s, o).ok_or(truncated(at + o));
        match kind {
            TYPE_DRHD => {
                fixed_len("DMAR DRHD", s, DRHD_FIXED, at)?;
                dmar.drhds.push(Drhd {
                    flags: s[4],
                    size: s[5],
                    segment: u16_at(6)?,
                    register_base: u64_at(8)?,
                    scopes: parse_scopes(&s[DRHD_FIXED..], at + DRHD_FIXED)?,
                });
            }
            TYPE_RMRR => {
                fixed_len("DMAR RMRR", s, RMRR_FIXED, at)?;
                let rmrr = Rmrr {
                    segment: u16_at(6)?,
                    base: u64_at(8)?,
                    limit: u64_at(16)?,
                    scopes: parse_scopes(&s[RMRR_FIXED..], at + RMRR_FIXED)?,
                };
                if rmrr.base > rmrr.limit || !rmrr.base.is_multiple_of(PAGE_SIZE) {
                    return Err(FirmwareError::Malformed {
                        what: "DMAR RMRR range",
                        offset: at,
                    });
                }
                dmar.rmrrs.push(rmrr);
            }
            TYPE_ATSR => {
                fixed_len("DMAR ATSR", s, ATSR_FIXED, at)?;
                dmar.atsrs.push(Atsr {
                    flags: s[4],
                    segment: u16_at(6)?,
                    scopes: parse_scopes(&s[ATSR_FIXED..], at + ATSR_FIXED)?,
                });
            }
            TYPE_RHSA => {
                fixed_len("DMAR RHSA", s, RHSA_SIZE, at)?;
                dmar.rhsas.push(Rhsa {
                    register_base: u64_at(8)?,
                    proximity_domain: le32(s, 16).ok_or(truncated(at + 16))?,
                });
            }
            TYPE_ANDD => {
                fixed_len("DMAR ANDD", s, ANDD_FIXED, at)?;
                let name = &s[ANDD_FIXED..];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                let object_name =
                    core::str::from_utf8(name).map_err(|_| FirmwareError::Malformed {
                        what: "DMAR ANDD name",
                        offset: at,
                    })?;
                dmar.andds.push(Andd {
                    device_number: s[7],
                    object_name: String::from(object_name),
                });
            }
            TYPE_SATC => {
                fixed_len("DMAR SATC", s, SATC_FIXED, at)?;
                dmar.satcs.push(Satc {
                    flags: s[4],
                    segment: u16_at(6)?,
                    scopes: parse_scopes(&s[SATC_FIXED..], at + SATC_FIXED)?,
                });
            }
            other => dmar.unknown_types.push(other),
        }
        at += length;
    }
    validate(&dmar)?;
    Ok(dmar)
}

/// Cross-structure rules of VT-d §8.3 and §8.4.
fn validate(dmar: &Dmar) -> Result<(), FirmwareError> {
    let mut registers = Vec::with_capacity(dmar.drhds.len());
    for d in &dmar.drhds {
        // Callers compute base + size, so that must not wrap either.
        let end = d
            .register_base
            .checked_add(d.register_size())
            .ok_or(FirmwareError::Overflow { what: "DMAR DRHD" })?;
        registers.push((0, d.register_base, end - 1));
    }
    if overlap::any_overlap(registers) {
        return Err(FirmwareError::Overlap {
            what: "DMAR DRHD register ranges",
        });
    }
    // §8.3: at most one INCLUDE_PCI_ALL unit per segment.
    let catch_all = dmar
        .drhds
        .iter()
        .filter(|d| d.include_pci_all())
        .map(|d| (0, u64::from(d.segment), u64::from(d.segment)))
        .collect();
    if overlap::any_overlap(catch_all) {
        return Err(FirmwareError::Malformed {
            what: "DMAR: two INCLUDE_PCI_ALL units in one segment",
            offset: 0,
        });
    }
    let reserved = dmar
        .rmrrs
        .iter()
        .map(|r| (u64::from(r.segment), r.base, r.limit))
        .collect();
    if overlap::any_overlap(reserved) {
        return Err(FirmwareError::Overlap {
            what: "DMAR RMRR ranges",
        });
    }
    Ok(())
}
