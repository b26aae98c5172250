//! What the ACPI IVRS (AMD IOMMU §5.2) says about each IOMMU: where its registers are,
//! which requesters it translates, and which memory ranges (IVMD) must stay mapped.
//!
//! The `firmware` crate parses the table's syntax; this module checks what a driver
//! relies on (a usable register base, distinct units, IVMD ranges that do not wrap)
//! and rejects the table otherwise.

use alloc::vec::Vec;

use firmware::acpi::ivrs::{DeviceTarget, Ivhd, IvhdType, Ivmd, IvmdTarget, Ivrs};

use crate::device_table::FirmwareSetting;
use crate::regs::MMIO_SIZE;

/// A requester the IOMMU translates and the DTE settings firmware gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requester {
    /// Its DeviceID.
    pub device_id: u16,
    /// The DTE settings the IVHD gives it (INITPass, SysMgt, ...).
    pub setting: FirmwareSetting,
}

/// §5.2.3 IVMD with the Unity flag: memory the listed devices keep using and that must
/// be identity-mapped with the given permissions in whatever domain they are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnityRange {
    /// Inclusive DeviceID range the range applies to.
    pub first_device: u16,
    /// Last DeviceID (inclusive).
    pub last_device: u16,
    /// First byte.
    pub start: u64,
    /// Inclusive last byte.
    pub last: u64,
    /// The devices may read it.
    pub read: bool,
    /// The devices may write it.
    pub write: bool,
}

impl UnityRange {
    /// The range is for `device_id`.
    pub fn applies_to(&self, device_id: u16) -> bool {
        (self.first_device..=self.last_device).contains(&device_id)
    }
}

/// One IOMMU as firmware describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitDescription {
    /// Which IVHD type described it (10h, 11h, 40h).
    pub ivhd_type: IvhdType,
    /// The PCI segment it serves.
    pub segment: u16,
    /// The IOMMU's own PCI function (bus << 8 | devfn).
    pub iommu_device_id: u16,
    /// Offset of the IOMMU capability block (§3.2.1) in that function's config space.
    pub capability_offset: u16,
    /// Physical address of the 16 KiB MMIO register block.
    pub mmio_base: u64,
    /// EFR image from an IVHD 11h/40h (valid when IVinfo.EFRSup).
    pub efr_image: Option<u64>,
    /// Every requester the IVHD names, in DeviceID order, without duplicates.
    pub requesters: Vec<Requester>,
    /// (device, alias) for each device whose requests arrive with another
    /// DeviceID (IVHD alias entries, §5.2.2.2), in device order.
    pub aliases: Vec<(u16, u16)>,
    /// Unity-mapped ranges (IVMD) of its requesters.
    pub unity: Vec<UnityRange>,
}

impl UnitDescription {
    /// The largest DeviceID the device table must cover.
    pub fn max_device_id(&self) -> u16 {
        self.requesters.last().map_or(0, |r| r.device_id)
    }

    /// The DeviceID `device_id`'s requests arrive with, when the IVHD says
    /// it is another's (Linux keeps it in `amd_iommu_alias_table`).
    pub fn alias_of(&self, device_id: u16) -> Option<u16> {
        self.aliases
            .binary_search_by_key(&device_id, |&(device, _)| device)
            .ok()
            .map(|at| self.aliases[at].1)
    }

    /// The IVHD names `device_id`.
    pub fn translates(&self, device_id: u16) -> bool {
        self.requesters
            .binary_search_by_key(&device_id, |r| r.device_id)
            .is_ok()
    }
}

/// Why the IVRS cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscoveryError {
    /// No IVHD at all.
    NoIommu,
    /// An IVHD's register base is zero or not aligned to the 16 KiB block.
    BadBase(u64),
    /// Two IVHDs of the same type describe the same register block.
    DuplicateBase(u64),
    /// An IVMD range is empty, unaligned to 4 KiB, or wraps.
    BadIvmd {
        /// The range's start.
        start: u64,
        /// Its length.
        length: u64,
    },
}

/// Describes every IOMMU of the newest IVHD type the table offers (§5.2.2: firmware
/// lists each IOMMU once per IVHD type it supports).
pub fn describe(ivrs: &Ivrs) -> Result<Vec<UnitDescription>, DiscoveryError> {
    let mut units = Vec::new();
    for ivhd in ivrs.preferred_ivhds() {
        let base = ivhd.base_address;
        if base == 0 || !base.is_multiple_of(MMIO_SIZE as u64) {
            return Err(DiscoveryError::BadBase(base));
        }
        if units
            .iter()
            .any(|u: &UnitDescription| u.mmio_base == base && u.segment == ivhd.segment)
        {
            return Err(DiscoveryError::DuplicateBase(base));
        }
        let requesters = requesters(ivhd);
        let aliases = aliases(ivhd);
        let unity = unity_ranges(&ivrs.ivmds, &requesters)?;
        units.push(UnitDescription {
            ivhd_type: ivhd.ivhd_type,
            segment: ivhd.segment,
            iommu_device_id: ivhd.iommu_device_id,
            capability_offset: ivhd.capability_offset,
            mmio_base: base,
            efr_image: ivhd.efr.filter(|_| ivrs.iv_info.efr_supported()),
            requesters,
            aliases,
            unity,
        });
    }
    if units.is_empty() {
        return Err(DiscoveryError::NoIommu);
    }
    Ok(units)
}

/// The unit that translates `device_id` of `segment`: the last IVHD, in table
/// order, whose device entries name it, as Linux's `set_iommu_for_device`
/// leaves its per-segment `rlookup_table` (§5.2.2.2: each IVHD lists the
/// requesters its IOMMU sees). `None`: no IOMMU translates it.
pub fn unit_for(units: &[UnitDescription], segment: u16, device_id: u16) -> Option<usize> {
    units
        .iter()
        .rposition(|unit| unit.segment == segment && unit.translates(device_id))
}

fn aliases(ivhd: &Ivhd) -> Vec<(u16, u16)> {
    let mut aliases: Vec<(u16, u16)> = Vec::new();
    for entry in &ivhd.devices {
        let Some(alias) = entry.alias else {
            continue;
        };
        match entry.target {
            DeviceTarget::Device(id) => aliases.push((id, alias)),
            DeviceTarget::Range { start, end } => {
                aliases.extend((start..=end).map(|id| (id, alias)))
            }
            _ => {}
        }
    }
    // A later entry for the same device wins, as it does for settings.
    aliases.reverse();
    aliases.sort_by_key(|&(device, _)| device);
    aliases.dedup_by_key(|&mut (device, _)| device);
    aliases
}

fn requesters(ivhd: &Ivhd) -> Vec<Requester> {
    let mut ids: Vec<u16> = Vec::new();
    for entry in &ivhd.devices {
        match entry.target {
            DeviceTarget::All => ids.extend(0..=u16::MAX),
            DeviceTarget::Device(id) => ids.push(id),
            DeviceTarget::Range { start, end } => ids.extend(start..=end),
            DeviceTarget::Special { device_id, .. } | DeviceTarget::AcpiHid { device_id, .. } => {
                ids.push(device_id)
            }
        }
        // Requests of an aliased device arrive with the alias DeviceID (§5.2.2.2).
        if let Some(alias) = entry.alias {
            ids.push(alias);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .map(|device_id| Requester {
            device_id,
            setting: FirmwareSetting(ivhd.entry_for(device_id).map_or(0, |e| e.setting.0)),
        })
        .collect()
}

fn unity_ranges(
    ivmds: &[Ivmd],
    requesters: &[Requester],
) -> Result<Vec<UnityRange>, DiscoveryError> {
    let mut ranges = Vec::new();
    for ivmd in ivmds {
        if ivmd.flags & Ivmd::UNITY == 0 {
            continue;
        }
        let bad = DiscoveryError::BadIvmd {
            start: ivmd.start,
            length: ivmd.length,
        };
        if ivmd.length == 0 || !ivmd.start.is_multiple_of(4096) || !ivmd.length.is_multiple_of(4096)
        {
            return Err(bad);
        }
        let last = ivmd.start.checked_add(ivmd.length - 1).ok_or(bad)?;
        let (first_device, last_device) = match ivmd.target {
            IvmdTarget::All => (0, u16::MAX),
            IvmdTarget::Device(id) => (id, id),
            IvmdTarget::Range { start, end } => (start, end),
        };
        let range = UnityRange {
            first_device,
            last_device,
            start: ivmd.start,
            last,
            read: ivmd.flags & Ivmd::IR != 0,
            write: ivmd.flags & Ivmd::IW != 0,
        };
        if requesters.iter().any(|r| range.applies_to(r.device_id)) {
            ranges.push(range);
        }
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware::acpi::ivrs::{DeviceEntry, DteSetting, IvInfo};
    use firmware::acpi::parse_ivrs;
    use std::vec;

    /// The IVRS QEMU 10.0.2 builds for `-device amd-iommu` with edu devices.
    const QEMU_IVRS: &[u8] = include_bytes!("../../firmware/fixtures/q35-amdvi-IVRS.bin");

    #[test]
    fn qemu_ivrs_describes_one_unit_at_fed80000() {
        let ivrs = parse_ivrs(QEMU_IVRS).unwrap();
        let units = describe(&ivrs).unwrap();
        assert_eq!(units.len(), 1);
        let unit = &units[0];
        assert_eq!(unit.ivhd_type, IvhdType::Type11);
        assert_eq!(unit.mmio_base, 0xFED8_0000);
        assert_eq!(unit.capability_offset, 0x40);
        assert_eq!(unit.efr_image, Some(0x29d3));
        assert!(unit.translates(unit.iommu_device_id));
        assert!(unit.unity.is_empty());
        assert!(unit.max_device_id() < 0x100, "{:#x}", unit.max_device_id());
    }

    fn ivhd(base: u64, devices: Vec<DeviceEntry>) -> Ivhd {
        Ivhd {
            ivhd_type: IvhdType::Type10,
            flags: 0,
            iommu_device_id: 0x10,
            capability_offset: 0x40,
            base_address: base,
            segment: 0,
            iommu_info: 0,
            feature_info: 0,
            efr: None,
            efr2: None,
            devices,
        }
    }

    fn entry(target: DeviceTarget, setting: u8) -> DeviceEntry {
        DeviceEntry {
            target,
            setting: DteSetting(setting),
            alias: None,
            extended: None,
        }
    }

    fn table(ivhds: Vec<Ivhd>, ivmds: Vec<Ivmd>) -> Ivrs {
        let ivrs = parse_ivrs(QEMU_IVRS).unwrap();
        Ivrs {
            header: ivrs.header,
            iv_info: IvInfo(0),
            ivhds,
            ivmds,
            unknown_types: vec![],
        }
    }

    #[test]
    fn each_requester_belongs_to_the_last_ivhd_that_names_it() {
        let ivrs = table(
            vec![
                ivhd(0xFED8_0000, vec![entry(DeviceTarget::All, 0)]),
                ivhd(
                    0xFED9_0000,
                    vec![entry(
                        DeviceTarget::Range {
                            start: 0x100,
                            end: 0x1FF,
                        },
                        0,
                    )],
                ),
            ],
            vec![],
        );
        let units = describe(&ivrs).unwrap();
        assert_eq!(units.len(), 2);
        assert_eq!(unit_for(&units, 0, 0x08), Some(0));
        assert_eq!(unit_for(&units, 0, 0x100), Some(1));
        assert_eq!(unit_for(&units, 0, 0x1FF), Some(1));
        assert_eq!(unit_for(&units, 0, 0x200), Some(0));
        assert_eq!(unit_for(&units, 1, 0x08), None, "another segment");
        assert_eq!(unit_for(&units[1..], 0, 0x08), None, "named by no IVHD");
    }

    #[test]
    fn ranges_aliases_and_settings_expand_to_requesters() {
        let mut aliased = entry(DeviceTarget::Device(0x30), 0);
        aliased.alias = Some(0x100);
        let ivrs = table(
            vec![ivhd(
                0xFED8_0000,
                vec![
                    entry(
                        DeviceTarget::Range {
                            start: 0x08,
                            end: 0x0A,
                        },
                        0x40,
                    ),
                    aliased,
                    entry(DeviceTarget::Device(0x09), 0x01),
                ],
            )],
            vec![],
        );
        let unit = describe(&ivrs).unwrap().remove(0);
        let ids: Vec<u16> = unit.requesters.iter().map(|r| r.device_id).collect();
        assert_eq!(ids, [0x08, 0x09, 0x0A, 0x30, 0x100]);
        assert_eq!(unit.requesters[0].setting, FirmwareSetting(0x40));
        // The select entry refines the range for 0x09.
        assert_eq!(unit.requesters[1].setting, FirmwareSetting(0x01));
        assert_eq!(unit.max_device_id(), 0x100);
        // 0x30's requests arrive as 0x100; the others as themselves.
        assert_eq!(unit.alias_of(0x30), Some(0x100));
        assert_eq!(unit.alias_of(0x09), None);
        assert_eq!(unit.alias_of(0x100), None);
    }

    #[test]
    fn unity_ivmd_becomes_a_range_for_the_units_devices() {
        let ivmd = Ivmd {
            target: IvmdTarget::Range {
                start: 0x08,
                end: 0x10,
            },
            flags: Ivmd::UNITY | Ivmd::IR,
            start: 0x000A_0000,
            length: 0x2_0000,
        };
        let other = Ivmd {
            target: IvmdTarget::Device(0x500),
            ..ivmd
        };
        let exclusion = Ivmd {
            flags: Ivmd::EXCLUSION_RANGE,
            ..ivmd
        };
        let ivrs = table(
            vec![ivhd(
                0xFED8_0000,
                vec![entry(DeviceTarget::Device(0x08), 0)],
            )],
            vec![ivmd, other, exclusion],
        );
        let unit = describe(&ivrs).unwrap().remove(0);
        assert_eq!(
            unit.unity,
            [UnityRange {
                first_device: 0x08,
                last_device: 0x10,
                start: 0xA_0000,
                last: 0xB_FFFF,
                read: true,
                write: false
            }]
        );
    }

    #[test]
    fn malformed_tables_are_rejected() {
        assert_eq!(
            describe(&table(vec![], vec![])),
            Err(DiscoveryError::NoIommu)
        );
        assert_eq!(
            describe(&table(vec![ivhd(0, vec![])], vec![])),
            Err(DiscoveryError::BadBase(0))
        );
        assert_eq!(
            describe(&table(vec![ivhd(0xFED8_1000, vec![])], vec![])),
            Err(DiscoveryError::BadBase(0xFED8_1000))
        );
        assert_eq!(
            describe(&table(
                vec![ivhd(0xFED8_0000, vec![]), ivhd(0xFED8_0000, vec![])],
                vec![]
            )),
            Err(DiscoveryError::DuplicateBase(0xFED8_0000))
        );
        let wrapping = Ivmd {
            target: IvmdTarget::All,
            flags: Ivmd::UNITY,
            start: 0xFFFF_FFFF_FFFF_F000,
            length: 0x2000,
        };
        assert_eq!(
            describe(&table(vec![ivhd(0xFED8_0000, vec![])], vec![wrapping])),
            Err(DiscoveryError::BadIvmd {
                start: 0xFFFF_FFFF_FFFF_F000,
                length: 0x2000
            })
        );
        let empty = Ivmd {
            length: 0,
            start: 0x1000,
            ..wrapping
        };
        assert!(describe(&table(vec![ivhd(0xFED8_0000, vec![])], vec![empty])).is_err());
    }
}
