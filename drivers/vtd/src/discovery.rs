//! Remapping units from the ACPI DMAR (VT-d 3.4 chapter 8): one description
//! per DRHD, with the RMRRs of the devices it covers.

use alloc::vec::Vec;

use firmware::acpi::dmar::{DeviceScope, DeviceScopeType, Dmar};
use iommu::IovaRange;

/// One DRHD (VT-d 3.4 §8.3) as the driver needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitDescription {
    /// The PCI segment the unit serves.
    pub segment: u16,
    /// Register base (4 KiB aligned).
    pub register_base: u64,
    /// Size of the register block (the DRHD's Size field: 2^N pages).
    pub register_size: u64,
    /// INCLUDE_PCI_ALL: every device of the segment not listed elsewhere.
    pub include_all: bool,
    /// Requester ids of the endpoints the scope lists (single-hop paths).
    pub devices: Vec<u16>,
    /// Requester ids of the bridges whose sub-hierarchy the scope lists
    /// (§8.3.1 scope type 02h): the bridge and every bus below it.
    pub bridges: Vec<u16>,
    /// The (secondary, subordinate) buses of those bridges, which only the
    /// PCI topology knows ([`UnitDescription::resolve_bridges`]).
    pub bridge_buses: Vec<(u8, u8)>,
    /// RMRRs (§8.4) for devices of this unit: identity-mapped for them and
    /// reported as reserved regions.
    pub reserved: Vec<DirectRegion>,
    /// Physical address bits DMA can reach on this platform: the DMAR's Host
    /// Address Width + 1 (§8.1). A page-table entry naming an address at or
    /// above it sets reserved bits, which the unit faults on.
    pub output_bits: u32,
}

/// A VT-d 3.4 §8.4 Reserved Memory Region for one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectRegion {
    /// The device the region is for.
    pub requester: u16,
    /// The region, identity-mapped for it.
    pub range: IovaRange,
}

/// Why the DMAR cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmarError {
    /// No DRHD at all.
    NoUnits,
    /// A DRHD register base that is zero or not 4 KiB aligned.
    BadRegisterBase(u64),
    /// An RMRR whose base/limit are unaligned or inverted (§8.4: base 4 KiB
    /// aligned, limit + 1 4 KiB aligned).
    BadReservedRegion {
        /// The RMRR's base.
        base: u64,
        /// Its limit (last byte).
        limit: u64,
    },
    /// A device scope whose path needs a bridge walk the driver does not do.
    UnresolvedScope,
    /// Two DRHDs of one segment both claim INCLUDE_PCI_ALL.
    DuplicateIncludeAll(u16),
    /// A Host Address Width outside what page tables can name (§8.1; 32 to
    /// 52 bits).
    BadHostAddressWidth(u32),
}

/// The physical address widths a VT-d page table can name (§9.8: ADDR up to
/// bit 51; no platform is narrower than 32 bits).
const OUTPUT_BITS: core::ops::RangeInclusive<u32> = 32..=52;

fn requester(bus: u8, device: u8, function: u8) -> u16 {
    (u16::from(bus) << 8) | (u16::from(device & 0x1F) << 3) | u16::from(function & 0x7)
}

fn endpoint_requesters(scopes: &[DeviceScope]) -> Result<Vec<u16>, DmarError> {
    scope_requesters(scopes, DeviceScopeType::PciEndpoint)
}

fn scope_requesters(scopes: &[DeviceScope], kind: DeviceScopeType) -> Result<Vec<u16>, DmarError> {
    scopes
        .iter()
        .filter(|scope| scope.scope_type == kind)
        .map(|scope| {
            scope
                .bdf()
                .map(|(bus, device, function)| requester(bus, device, function))
                .ok_or(DmarError::UnresolvedScope)
        })
        .collect()
}

/// Every remapping unit the DMAR describes, validated.
pub fn units(dmar: &Dmar) -> Result<Vec<UnitDescription>, DmarError> {
    if dmar.drhds.is_empty() {
        return Err(DmarError::NoUnits);
    }
    let mut reserved = Vec::new();
    for rmrr in &dmar.rmrrs {
        let aligned = rmrr.base % 4096 == 0 && rmrr.limit.wrapping_add(1) % 4096 == 0;
        if !aligned || rmrr.limit < rmrr.base {
            return Err(DmarError::BadReservedRegion {
                base: rmrr.base,
                limit: rmrr.limit,
            });
        }
        for device in endpoint_requesters(&rmrr.scopes)? {
            reserved.push((
                rmrr.segment,
                DirectRegion {
                    requester: device,
                    range: IovaRange {
                        start: rmrr.base,
                        last: rmrr.limit,
                    },
                },
            ));
        }
    }
    let output_bits = dmar.address_width();
    if !OUTPUT_BITS.contains(&output_bits) {
        return Err(DmarError::BadHostAddressWidth(output_bits));
    }
    let mut units: Vec<UnitDescription> = Vec::new();
    for drhd in &dmar.drhds {
        if drhd.register_base == 0 || drhd.register_base % 4096 != 0 {
            return Err(DmarError::BadRegisterBase(drhd.register_base));
        }
        if drhd.include_pci_all()
            && units
                .iter()
                .any(|unit| unit.include_all && unit.segment == drhd.segment)
        {
            return Err(DmarError::DuplicateIncludeAll(drhd.segment));
        }
        units.push(UnitDescription {
            segment: drhd.segment,
            register_base: drhd.register_base,
            register_size: drhd.register_size(),
            include_all: drhd.include_pci_all(),
            devices: endpoint_requesters(&drhd.scopes)?,
            bridges: scope_requesters(&drhd.scopes, DeviceScopeType::PciSubHierarchy)?,
            bridge_buses: Vec::new(),
            reserved: Vec::new(),
            output_bits,
        });
    }
    // An RMRR belongs to the unit that translates its device.
    for (segment, region) in reserved {
        if let Some(owner) = unit_for(&units, segment, region.requester) {
            units[owner].reserved.push(region);
        }
    }
    Ok(units)
}

/// Index of the unit in `units` that translates `requester` of `segment`: the
/// one whose device scope lists it, else the segment's INCLUDE_PCI_ALL unit,
/// which covers only what no other unit lists (VT-d 3.4 §8.3). `None`: the
/// function is not behind any remapping unit and its DMA is untranslated.
pub fn unit_for(units: &[UnitDescription], segment: u16, requester: u16) -> Option<usize> {
    units
        .iter()
        .position(|unit| unit.segment == segment && unit.lists(requester))
        .or_else(|| {
            units
                .iter()
                .position(|unit| unit.segment == segment && unit.include_all)
        })
}

impl UnitDescription {
    /// Whether this unit translates `requester` (listed, or covered by INCLUDE_PCI_ALL).
    pub fn covers(&self, requester: u16) -> bool {
        self.include_all || self.lists(requester)
    }

    /// Whether the unit's device scope names `requester`: as an endpoint, as
    /// a listed bridge, or on a bus below a listed bridge.
    pub fn lists(&self, requester: u16) -> bool {
        let bus = (requester >> 8) as u8;
        self.devices.contains(&requester)
            || self.bridges.contains(&requester)
            || self
                .bridge_buses
                .iter()
                .any(|&(secondary, subordinate)| (secondary..=subordinate).contains(&bus))
    }

    /// Fills in the buses below the listed bridges: `buses_below` gives a
    /// bridge's (secondary, subordinate) bus numbers from the PCI topology.
    pub fn resolve_bridges(&mut self, buses_below: impl Fn(u16) -> Option<(u8, u8)>) {
        self.bridge_buses = self
            .bridges
            .iter()
            .filter_map(|&bridge| buses_below(bridge))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use firmware::acpi::dmar::{Drhd, PathEntry, Rmrr};

    fn endpoint(bus: u8, device: u8, function: u8) -> DeviceScope {
        DeviceScope {
            scope_type: DeviceScopeType::PciEndpoint,
            flags: 0,
            enumeration_id: 0,
            start_bus: bus,
            path: vec![PathEntry { device, function }],
        }
    }

    /// The DMAR QEMU 10.0.2 builds for q35 + intel-iommu (dumped from a run).
    const QEMU_DMAR: &[u8] = include_bytes!("../../firmware/fixtures/q35-vtd-DMAR.bin");

    /// The QEMU table with its DRHDs and RMRRs replaced.
    fn dmar(drhds: Vec<Drhd>, rmrrs: Vec<Rmrr>) -> Dmar {
        let mut table = firmware::acpi::parse_dmar(QEMU_DMAR).unwrap();
        table.drhds = drhds;
        table.rmrrs = rmrrs;
        table
    }

    #[test]
    fn describes_the_real_qemu_table() {
        let table = firmware::acpi::parse_dmar(QEMU_DMAR).unwrap();
        let units = units(&table).unwrap();
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].register_base, 0xFED9_0000);
        assert!(!units[0].include_all);
        // Both edu devices (00:04.0, 00:05.0) are listed, 00:06.0 is not.
        assert_eq!(units[0].devices, vec![0x00, 0x20, 0x28, 0xF8, 0xFA, 0xFB]);
        assert!(units[0].covers(0x20) && units[0].covers(0x28) && !units[0].covers(0x30));
        assert!(units[0].reserved.is_empty());
        // QEMU's q35 reports HAW = 0x2f: 48-bit DMA addresses.
        assert_eq!(units[0].output_bits, 48);
    }

    #[test]
    fn a_host_address_width_no_page_table_can_name_is_refused() {
        for (haw, accepted) in [(30, false), (31, true), (51, true), (52, false)] {
            let mut table = dmar(vec![drhd(0xFED9_0000, 0, vec![endpoint(0, 4, 0)])], vec![]);
            table.host_address_width = haw;
            assert_eq!(units(&table).is_ok(), accepted, "HAW {haw}");
        }
    }

    fn drhd(base: u64, flags: u8, scopes: Vec<DeviceScope>) -> Drhd {
        Drhd {
            flags,
            size: 0,
            segment: 0,
            register_base: base,
            scopes,
        }
    }

    fn bridge_scope(bus: u8, device: u8, function: u8) -> DeviceScope {
        DeviceScope {
            scope_type: DeviceScopeType::PciSubHierarchy,
            ..endpoint(bus, device, function)
        }
    }

    #[test]
    fn a_bridge_scope_covers_the_bridge_and_the_buses_below_it() {
        let table = dmar(
            vec![drhd(
                0xFED9_0000,
                0,
                vec![endpoint(0, 4, 0), bridge_scope(0, 6, 0)],
            )],
            vec![],
        );
        let mut units = units(&table).unwrap();
        assert_eq!(units[0].bridges, vec![0x30]);
        // Unresolved, the scope covers only the bridge itself.
        assert_eq!(unit_for(&units, 0, 0x0100), None);
        assert_eq!(unit_for(&units, 0, 0x30), Some(0));
        // 00:06.0 forwards buses 1-2.
        units[0].resolve_bridges(|bridge| (bridge == 0x30).then_some((1, 2)));
        assert_eq!(unit_for(&units, 0, 0x0100), Some(0));
        assert_eq!(unit_for(&units, 0, 0x0208), Some(0));
        assert!(units[0].covers(0x0100));
        assert_eq!(unit_for(&units, 0, 0x0300), None);
    }

    #[test]
    fn describes_qemu_like_unit_with_rmrr() {
        let table = dmar(
            vec![drhd(
                0xFED9_0000,
                0,
                vec![endpoint(0, 4, 0), endpoint(0, 5, 0)],
            )],
            vec![Rmrr {
                segment: 0,
                base: 0x000E_0000,
                limit: 0x000E_FFFF,
                scopes: vec![endpoint(0, 5, 0)],
            }],
        );
        let units = units(&table).unwrap();
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].register_base, 0xFED9_0000);
        assert_eq!(units[0].devices, vec![0x20, 0x28]);
        assert!(units[0].covers(0x28) && !units[0].covers(0x30));
        assert_eq!(
            units[0].reserved,
            vec![DirectRegion {
                requester: 0x28,
                range: IovaRange {
                    start: 0xE_0000,
                    last: 0xE_FFFF
                }
            }]
        );
    }

    #[test]
    fn a_listed_device_belongs_to_its_unit_not_to_the_include_all_one() {
        let table = dmar(
            vec![
                drhd(0xFED9_0000, Drhd::INCLUDE_PCI_ALL, vec![]),
                drhd(0xFED9_1000, 0, vec![endpoint(0, 5, 0)]),
            ],
            vec![],
        );
        let units = units(&table).unwrap();
        assert_eq!(unit_for(&units, 0, 0x28), Some(1));
        assert_eq!(unit_for(&units, 0, 0x20), Some(0));
        assert_eq!(unit_for(&units, 1, 0x20), None, "no unit on segment 1");
        let listed_only = units_of(vec![drhd(0xFED9_0000, 0, vec![endpoint(0, 4, 0)])]);
        assert_eq!(unit_for(&listed_only, 0, 0x20), Some(0));
        assert_eq!(
            unit_for(&listed_only, 0, 0x30),
            None,
            "00:06.0 is not listed"
        );
    }

    fn units_of(drhds: Vec<Drhd>) -> Vec<UnitDescription> {
        units(&dmar(drhds, vec![])).unwrap()
    }

    #[test]
    fn rejects_malformed_tables() {
        assert_eq!(units(&dmar(vec![], vec![])), Err(DmarError::NoUnits));
        assert_eq!(
            units(&dmar(vec![drhd(0xFED9_0010, 0, vec![])], vec![])),
            Err(DmarError::BadRegisterBase(0xFED9_0010))
        );
        let bad_rmrr = Rmrr {
            segment: 0,
            base: 0x2000,
            limit: 0x1FFF,
            scopes: vec![],
        };
        assert_eq!(
            units(&dmar(vec![drhd(0x1000, 1, vec![])], vec![bad_rmrr])),
            Err(DmarError::BadReservedRegion {
                base: 0x2000,
                limit: 0x1FFF
            })
        );
        assert_eq!(
            units(&dmar(
                vec![drhd(0x1000, 1, vec![]), drhd(0x2000, 1, vec![])],
                vec![]
            )),
            Err(DmarError::DuplicateIncludeAll(0))
        );
    }
}
