//! IVRS: I/O Virtualization Reporting Structure (AMD I/O Virtualization Technology
//! (IOMMU) Specification, pub. 48882 rev 3.x, §5.2 "IVRS").

use alloc::vec::Vec;

use super::sdt::{SdtHeader, checked_table};
use crate::FirmwareError;
use crate::bytes::{bytes_at, le16, le32, le64, slice, u8_at};
use crate::overlap;

/// AMD IOMMU §5.2 IVRS header: IVinfo follows the SDT header, then 8
/// reserved bytes; the IVDB blocks start at 48.
const IVINFO: usize = 36;
const BLOCKS_OFFSET: usize = 48;

/// AMD IOMMU §5.2 IVRS header, IVinfo field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IvInfo(pub u32);

impl IvInfo {
    /// Bit 0 EFRSup: the IVHD type 11h/40h EFR images are valid.
    pub fn efr_supported(self) -> bool {
        self.0 & 1 != 0
    }
    /// Bit 1 DMA remap support (pre-boot DMA protection requested by firmware).
    pub fn dma_remap_support(self) -> bool {
        self.0 & (1 << 1) != 0
    }
    /// Bits 7:5 GVAsize: guest virtual address size code.
    pub fn gva_size(self) -> u8 {
        ((self.0 >> 5) & 0x7) as u8
    }
    /// Bits 14:8 PAsize: physical address size in bits.
    pub fn pa_size(self) -> u8 {
        ((self.0 >> 8) & 0x7f) as u8
    }
    /// Bits 21:15 VAsize: virtual address size in bits.
    pub fn va_size(self) -> u8 {
        ((self.0 >> 15) & 0x7f) as u8
    }
    /// Bit 22 HtAtsResv: the HyperTransport ATS reserved range is in use.
    pub fn ht_ats_reserved(self) -> bool {
        self.0 & (1 << 22) != 0
    }
}

/// AMD IOMMU §5.2 IVHD block types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IvhdType {
    /// 10h: legacy IVHD, 24-byte header, "IOMMU Feature Reporting" field.
    Type10,
    /// 11h: IVHD with the EFR image, 40-byte header.
    Type11,
    /// 40h: as 11h, and may contain ACPI HID device entries (type F0h).
    Type40,
}

const TYPE_IVHD_10: u8 = 0x10;
const TYPE_IVHD_11: u8 = 0x11;
const TYPE_IVHD_40: u8 = 0x40;
const TYPE_IVMD_ALL: u8 = 0x20;
const TYPE_IVMD_SELECT: u8 = 0x21;
const TYPE_IVMD_RANGE: u8 = 0x22;

/// Every IVDB starts with Type (u8), Flags (u8) and Length (u16).
const BLOCK_HEADER_SIZE: usize = 4;
/// AMD IOMMU §5.2 IVHD block header lengths: type 10h, types 11h/40h.
const IVHD_10_HEADER: usize = 24;
const IVHD_11_HEADER: usize = 40;
/// AMD IOMMU §5.2 IVMD block length.
const IVMD_SIZE: usize = 32;

/// The "DTE setting" byte of a device entry (AMD IOMMU §5.2, IVHD device entries): which interrupts pass
/// untranslated and the SysMgt setting, copied into the DTE by system software.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DteSetting(pub u8);

impl DteSetting {
    /// INITPass: INIT interrupts pass through.
    pub const INIT_PASS: u8 = 1 << 0;
    /// EIntPass: ExtInt interrupts pass through.
    pub const EINT_PASS: u8 = 1 << 1;
    /// NMIPass: NMIs pass through.
    pub const NMI_PASS: u8 = 1 << 2;
    /// Bits 5:4 SysMgt.
    pub const SYS_MGT_SHIFT: u8 = 4;
    /// Lint0Pass: LINT0 passes through.
    pub const LINT0_PASS: u8 = 1 << 6;
    /// Lint1Pass: LINT1 passes through.
    pub const LINT1_PASS: u8 = 1 << 7;

    /// SysMgt (bits 5:4): how system management messages are treated.
    pub fn sys_mgt(self) -> u8 {
        (self.0 >> Self::SYS_MGT_SHIFT) & 0x3
    }
}

/// AMD IOMMU §5.2 IVHD device entry 48h `Variety`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialVariety {
    /// An I/O APIC.
    IoApic,
    /// An HPET.
    Hpet,
    /// A variety the spec reserves.
    Reserved(u8),
}

/// AMD IOMMU §5.2 IVHD device entry F0h: the ACPI _UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcpiUid {
    /// No _UID.
    None,
    /// A numeric _UID.
    Integer(u64),
    /// A string _UID.
    String(Vec<u8>),
}

/// Which devices a device entry applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceTarget {
    /// 01h: every DeviceID.
    All,
    /// 02h, 42h, 46h: one DeviceID.
    Device(u16),
    /// 03h/43h/47h … 04h: an inclusive DeviceID range.
    Range {
        /// First DeviceID.
        start: u16,
        /// Last DeviceID (inclusive).
        end: u16,
    },
    /// 48h: an IOAPIC or HPET identified by `handle` (its ID) that issues requests as
    /// `device_id`.
    Special {
        /// IOAPIC or HPET.
        variety: SpecialVariety,
        /// Its ID.
        handle: u8,
        /// The DeviceID its requests carry.
        device_id: u16,
    },
    /// F0h (IVHD 40h only): an ACPI device identified by _HID/_CID/_UID.
    AcpiHid {
        /// The DeviceID its requests carry.
        device_id: u16,
        /// _HID.
        hid: [u8; 8],
        /// _CID.
        cid: [u8; 8],
        /// _UID.
        uid: AcpiUid,
    },
}

/// One device entry after expansion: start/end-of-range pairs merged into a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    /// Which devices.
    pub target: DeviceTarget,
    /// The DTE settings firmware gives them.
    pub setting: DteSetting,
    /// 42h/43h: the DeviceID the IOMMU sees for requests of the target.
    pub alias: Option<u16>,
    /// 46h/47h: the extended DTE setting (bit 0 AtsDisabled).
    pub extended: Option<u32>,
}

/// One IVHD block (AMD IOMMU §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ivhd {
    /// 10h, 11h or 40h.
    pub ivhd_type: IvhdType,
    /// Byte 1 flags (HtTunEn, PassPW, ResPassPW, Isoc, IotlbSup, Coherent, PreFSup, PPRSup).
    pub flags: u8,
    /// The IOMMU's own PCI DeviceID (bus << 8 | devfn).
    pub iommu_device_id: u16,
    /// Offset of the IOMMU's capability block in its PCI config space.
    pub capability_offset: u16,
    /// The IOMMU's register base.
    pub base_address: u64,
    /// The PCI segment.
    pub segment: u16,
    /// Bits 4:0 MSI number, bits 12:8 UnitID.
    pub iommu_info: u16,
    /// Type 10h: IOMMU Feature Reporting; 11h/40h: IOMMU Attributes.
    pub feature_info: u32,
    /// 11h/40h: image of the Extended Feature Register (valid when IVinfo.EFRSup).
    pub efr: Option<u64>,
    /// 11h/40h: image of the Extended Feature 2 Register.
    pub efr2: Option<u64>,
    /// Its device entries, in order.
    pub devices: Vec<DeviceEntry>,
}

impl Ivhd {
    /// The setting that applies to `device_id`: the last matching select/range entry,
    /// else an All entry (IVHD device entries: more specific entries refine the All setting).
    pub fn entry_for(&self, device_id: u16) -> Option<&DeviceEntry> {
        let specific = self.devices.iter().rev().find(|e| match e.target {
            DeviceTarget::Device(d) => d == device_id,
            DeviceTarget::Range { start, end } => (start..=end).contains(&device_id),
            _ => false,
        });
        specific.or_else(|| self.devices.iter().find(|e| e.target == DeviceTarget::All))
    }
}

/// AMD IOMMU §5.2 IVMD block types 20h-22h.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvmdTarget {
    /// 20h: every peripheral.
    All,
    /// 21h: one DeviceID.
    Device(u16),
    /// 22h: an inclusive DeviceID range.
    Range {
        /// First DeviceID.
        start: u16,
        /// Last DeviceID (inclusive).
        end: u16,
    },
}

/// AMD IOMMU §5.2 IVMD block: memory that must stay mapped (unity) or excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ivmd {
    /// Which devices.
    pub target: IvmdTarget,
    /// Bit 0 Unity, bit 1 IR, bit 2 IW, bit 3 ExclusionRange.
    pub flags: u8,
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
}

impl Ivmd {
    /// Unity: identity-map the range for the devices.
    pub const UNITY: u8 = 1 << 0;
    /// IR: with read permission.
    pub const IR: u8 = 1 << 1;
    /// IW: with write permission.
    pub const IW: u8 = 1 << 2;
    /// ExclusionRange: the range bypasses translation.
    pub const EXCLUSION_RANGE: u8 = 1 << 3;
}

/// A parsed IVRS table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ivrs {
    /// The table header.
    pub header: SdtHeader,
    /// IVinfo: the platform's IOMMU features.
    pub iv_info: IvInfo,
    /// IOMMU hardware definitions.
    pub ivhds: Vec<Ivhd>,
    /// IOMMU memory definitions.
    pub ivmds: Vec<Ivmd>,
    /// Types of the blocks this parser does not know (skipped by their length).
    pub unknown_types: Vec<u8>,
}

impl Ivrs {
    /// The IVHDs of the newest type present. Firmware describes each IOMMU once per
    /// IVHD type it supports (§5.2); software uses the highest type it understands.
    pub fn preferred_ivhds(&self) -> impl Iterator<Item = &Ivhd> {
        let best = self.ivhds.iter().map(|h| h.ivhd_type).max();
        self.ivhds.iter().filter(move |h| Some(h.ivhd_type) == best)
    }
}

fn truncated(offset: usize) -> FirmwareError {
    FirmwareError::Truncated {
        what: "IVRS block",
        offset,
    }
}

/// AMD IOMMU §5.2 IVHD device entry types.
mod entry {
    pub const PAD4: u8 = 0x00;
    pub const ALL: u8 = 0x01;
    pub const SELECT: u8 = 0x02;
    pub const RANGE_START: u8 = 0x03;
    pub const RANGE_END: u8 = 0x04;
    pub const PAD8: u8 = 0x40;
    pub const ALIAS_SELECT: u8 = 0x42;
    pub const ALIAS_RANGE_START: u8 = 0x43;
    pub const EXT_SELECT: u8 = 0x46;
    pub const EXT_RANGE_START: u8 = 0x47;
    pub const SPECIAL: u8 = 0x48;
    pub const ACPI_HID: u8 = 0xf0;
    /// Types 00h–3Fh are 4 bytes long, 40h–7Fh 8 bytes, 80h and up variable.
    pub const FIRST_8_BYTE: u8 = 0x40;
    pub const FIRST_VARIABLE: u8 = 0x80;
    /// F0h layout: HID at 4, CID at 12, UID format at 20, UID length at 21, UID at 22.
    pub const HID_HID: usize = 4;
    pub const HID_CID: usize = 12;
    pub const HID_UID_FORMAT: usize = 20;
    pub const HID_UID_LENGTH: usize = 21;
    pub const HID_FIXED: usize = 22;
}

/// The start of an open range (03h/43h/47h) waiting for its 04h.
struct OpenRange {
    start: u16,
    setting: DteSetting,
    alias: Option<u16>,
    extended: Option<u32>,
    offset: usize,
}

/// Decodes the device entries in `bytes` (table offset `base`).
fn parse_device_entries(
    bytes: &[u8],
    base: usize,
    ivhd_type: IvhdType,
) -> Result<Vec<DeviceEntry>, FirmwareError> {
    let mut devices = Vec::new();
    let mut open: Option<OpenRange> = None;
    let mut at = 0;
    while at < bytes.len() {
        let offset = base + at;
        let kind = bytes[at];
        let length = if kind < entry::FIRST_8_BYTE {
            4
        } else if kind < entry::FIRST_VARIABLE {
            8
        } else if kind == entry::ACPI_HID && ivhd_type == IvhdType::Type40 {
            let uid_len =
                u8_at(bytes, at + entry::HID_UID_LENGTH).ok_or(FirmwareError::Truncated {
                    what: "IVHD ACPI HID entry",
                    offset,
                })?;
            entry::HID_FIXED + uid_len as usize
        } else {
            // Variable-length entries carry no generic length field: nothing can be skipped safely.
            return Err(FirmwareError::Malformed {
                what: "IVHD device entry type",
                offset,
            });
        };
        let e = slice(bytes, at, length).ok_or(FirmwareError::Truncated {
            what: "IVHD device entry",
            offset,
        })?;
        let device_id = le16(e, 1).unwrap_or(0);
        let setting = DteSetting(e[3]);
        let mut push = |target, alias, extended| {
            devices.push(DeviceEntry {
                target,
                setting,
                alias,
                extended,
            })
        };
        let in_range = open.is_some();
        let range_error = FirmwareError::Malformed {
            what: "IVHD range entry",
            offset,
        };
        match kind {
            entry::PAD4 | entry::PAD8 => {}
            entry::ALL => push(DeviceTarget::All, None, None),
            entry::SELECT => push(DeviceTarget::Device(device_id), None, None),
            entry::ALIAS_SELECT => push(DeviceTarget::Device(device_id), le16(e, 5), None),
            entry::EXT_SELECT => push(DeviceTarget::Device(device_id), None, le32(e, 4)),
            entry::RANGE_START | entry::ALIAS_RANGE_START | entry::EXT_RANGE_START => {
                if in_range {
                    return Err(range_error);
                }
                open = Some(OpenRange {
                    start: device_id,
                    setting,
                    alias: (kind == entry::ALIAS_RANGE_START)
                        .then(|| le16(e, 5))
                        .flatten(),
                    extended: (kind == entry::EXT_RANGE_START)
                        .then(|| le32(e, 4))
                        .flatten(),
                    offset,
                });
            }
            entry::RANGE_END => {
                let range = open.take().ok_or(range_error)?;
                if device_id < range.start {
                    return Err(range_error);
                }
                devices.push(DeviceEntry {
                    target: DeviceTarget::Range {
                        start: range.start,
                        end: device_id,
                    },
                    setting: range.setting,
                    alias: range.alias,
                    extended: range.extended,
                });
            }
            entry::SPECIAL => {
                let variety = match e[7] {
                    1 => SpecialVariety::IoApic,
                    2 => SpecialVariety::Hpet,
                    other => SpecialVariety::Reserved(other),
                };
                push(
                    DeviceTarget::Special {
                        variety,
                        handle: e[4],
                        device_id: le16(e, 5).unwrap_or(0),
                    },
                    None,
                    None,
                );
            }
            entry::ACPI_HID => {
                let hid = bytes_at(e, entry::HID_HID).unwrap_or([0; 8]);
                let cid = bytes_at(e, entry::HID_CID).unwrap_or([0; 8]);
                let uid_bytes = &e[entry::HID_FIXED..];
                let uid = match e[entry::HID_UID_FORMAT] {
                    0 => AcpiUid::None,
                    1 => {
                        let mut raw = [0u8; 8];
                        let n = uid_bytes.len().min(8);
                        raw[..n].copy_from_slice(&uid_bytes[..n]);
                        AcpiUid::Integer(u64::from_le_bytes(raw))
                    }
                    2 => AcpiUid::String(uid_bytes.to_vec()),
                    _ => {
                        return Err(FirmwareError::Malformed {
                            what: "IVHD ACPI HID UID format",
                            offset,
                        });
                    }
                };
                push(
                    DeviceTarget::AcpiHid {
                        device_id,
                        hid,
                        cid,
                        uid,
                    },
                    None,
                    None,
                );
            }
            // Reserved 4- and 8-byte types: skipped by their class length.
            _ => {}
        }
        // IVHD device entries: only the end-of-range entry may follow a start-of-range entry.
        if in_range && kind != entry::RANGE_END && open.is_some() {
            return Err(range_error);
        }
        at += length;
    }
    if let Some(range) = open {
        return Err(FirmwareError::Malformed {
            what: "IVHD range without end",
            offset: range.offset,
        });
    }
    check_device_overlap(&devices)?;
    Ok(devices)
}

/// Select and range entries of one IVHD must name each DeviceID at most once.
fn check_device_overlap(devices: &[DeviceEntry]) -> Result<(), FirmwareError> {
    let mut spans: Vec<(u16, u16)> = devices
        .iter()
        .filter_map(|d| match d.target {
            DeviceTarget::Device(id) => Some((id, id)),
            DeviceTarget::Range { start, end } => Some((start, end)),
            _ => None,
        })
        .collect();
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[1].0 <= w[0].1) {
        return Err(FirmwareError::Overlap {
            what: "IVHD device entries",
        });
    }
    Ok(())
}

fn parse_ivhd(block: &[u8], at: usize, ivhd_type: IvhdType) -> Result<Ivhd, FirmwareError> {
    let header_len = if ivhd_type == IvhdType::Type10 {
        IVHD_10_HEADER
    } else {
        IVHD_11_HEADER
    };
    if block.len() < header_len {
        return Err(FirmwareError::BadLength {
            what: "IVHD",
            offset: at,
            length: block.len(),
        });
    }
    let t = |o| truncated(at + o);
    let extended = ivhd_type != IvhdType::Type10;
    let ivhd = Ivhd {
        ivhd_type,
        flags: block[1],
        iommu_device_id: le16(block, 4).ok_or(t(4))?,
        capability_offset: le16(block, 6).ok_or(t(6))?,
        base_address: le64(block, 8).ok_or(t(8))?,
        segment: le16(block, 16).ok_or(t(16))?,
        iommu_info: le16(block, 18).ok_or(t(18))?,
        feature_info: le32(block, 20).ok_or(t(20))?,
        efr: if extended {
            Some(le64(block, 24).ok_or(t(24))?)
        } else {
            None
        },
        efr2: if extended {
            Some(le64(block, 32).ok_or(t(32))?)
        } else {
            None
        },
        devices: parse_device_entries(&block[header_len..], at + header_len, ivhd_type)?,
    };
    if ivhd.base_address == 0 {
        return Err(FirmwareError::Malformed {
            what: "IVHD base address",
            offset: at + 8,
        });
    }
    Ok(ivhd)
}

fn parse_ivmd(block: &[u8], at: usize, kind: u8) -> Result<Ivmd, FirmwareError> {
    if block.len() < IVMD_SIZE {
        return Err(FirmwareError::BadLength {
            what: "IVMD",
            offset: at,
            length: block.len(),
        });
    }
    let t = |o| truncated(at + o);
    let device_id = le16(block, 4).ok_or(t(4))?;
    let auxiliary = le16(block, 6).ok_or(t(6))?;
    let target = match kind {
        TYPE_IVMD_ALL => IvmdTarget::All,
        TYPE_IVMD_SELECT => IvmdTarget::Device(device_id),
        _ => {
            if auxiliary < device_id {
                return Err(FirmwareError::Malformed {
                    what: "IVMD device range",
                    offset: at,
                });
            }
            IvmdTarget::Range {
                start: device_id,
                end: auxiliary,
            }
        }
    };
    let ivmd = Ivmd {
        target,
        flags: block[1],
        start: le64(block, 16).ok_or(t(16))?,
        length: le64(block, 24).ok_or(t(24))?,
    };
    ivmd.start
        .checked_add(ivmd.length)
        .ok_or(FirmwareError::Overflow { what: "IVMD" })?;
    Ok(ivmd)
}

/// Parses a whole IVRS table (header included, checksum verified).
pub fn parse_ivrs(bytes: &[u8]) -> Result<Ivrs, FirmwareError> {
    let (header, table) = checked_table(bytes, b"IVRS")?;
    let iv_info = IvInfo(le32(table, IVINFO).ok_or(truncated(IVINFO))?);
    if table.len() < BLOCKS_OFFSET {
        return Err(truncated(table.len()));
    }
    let mut ivrs = Ivrs {
        header,
        iv_info,
        ivhds: Vec::new(),
        ivmds: Vec::new(),
        unknown_types: Vec::new(),
    };
    let mut at = BLOCKS_OFFSET;
    while at < table.len() {
        let kind = table[at];
        let length = le16(table, at + 2).ok_or(truncated(at))? as usize;
        // A length below the common header would never advance.
        if length < BLOCK_HEADER_SIZE {
            return Err(FirmwareError::BadLength {
                what: "IVRS block",
                offset: at,
                length,
            });
        }
        let block = slice(table, at, length).ok_or(FirmwareError::BadLength {
            what: "IVRS block",
            offset: at,
            length,
        })?;
        match kind {
            TYPE_IVHD_10 => ivrs.ivhds.push(parse_ivhd(block, at, IvhdType::Type10)?),
            TYPE_IVHD_11 => ivrs.ivhds.push(parse_ivhd(block, at, IvhdType::Type11)?),
            TYPE_IVHD_40 => ivrs.ivhds.push(parse_ivhd(block, at, IvhdType::Type40)?),
            TYPE_IVMD_ALL | TYPE_IVMD_SELECT | TYPE_IVMD_RANGE => {
                ivrs.ivmds.push(parse_ivmd(block, at, kind)?)
            }
            other => ivrs.unknown_types.push(other),
        }
        at += length;
    }
    // Within one IVHD type, two blocks describing the same IOMMU (or register range) are contradictory.
    let group = |h: &Ivhd| h.ivhd_type as u64;
    let ids = ivrs
        .ivhds
        .iter()
        .map(|h| {
            let id = (u64::from(h.segment) << 16) | u64::from(h.iommu_device_id);
            (group(h), id, id)
        })
        .collect();
    let bases = ivrs
        .ivhds
        .iter()
        .map(|h| (group(h), h.base_address, h.base_address))
        .collect();
    if overlap::any_overlap(ids) || overlap::any_overlap(bases) {
        return Err(FirmwareError::Overlap {
            what: "IVHD blocks of one type",
        });
    }
    Ok(ivrs)
}
