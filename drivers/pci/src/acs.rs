//! Access Control Services (PCIe Base 6.0 §6.12, the ACS Extended Capability
//! §7.7.8): what keeps a function's requests from reaching a peer below the
//! same port without passing the IOMMU. Without it, peers share an isolation
//! group whatever their requester ids (Linux `pci_device_group`,
//! `pci_acs_enabled`, `pci_enable_acs`).

use alloc::vec::Vec;

use bitflags::bitflags;

use crate::bridge::{PortType, Topology, port_type};
use crate::{Bdf, ConfigSpace, Function};

/// Extended capabilities start after the 256 bytes of conventional
/// configuration space (PCIe Base 6.0 §7.6).
const FIRST_EXTENDED: u16 = 0x100;
/// The extended space holds at most this many 4-byte headers: walking more
/// means a loop.
const MAX_EXTENDED: usize = (4096 - 256) / 4;
/// Extended capability header (§7.6.3): ID `[15:0]`, version `[19:16]`, next
/// offset `[31:20]`.
const ID_MASK: u32 = 0xFFFF;
const NEXT_SHIFT: u32 = 20;
const NEXT_MASK: u32 = 0xFFC;
/// The ACS Extended Capability's ID (PCI Code and ID Assignment §3).
pub const ACS_ID: u16 = 0x000D;
/// ACS Capability Register and ACS Control Register (§7.7.8.2, §7.7.8.3),
/// from the capability's start.
const CAPABILITY: u16 = 0x04;
const CONTROL: u16 = 0x06;

bitflags! {
    /// The ACS controls, at the same bits in the Capability (implemented)
    /// and Control (enabled) registers (§7.7.8.2-3).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct AcsFlags: u16 {
        /// Source Validation: a downstream port checks the requester's bus.
        const SOURCE_VALIDATION = 1 << 0;
        /// Translation Blocking: translated (ATS) requests are refused.
        const TRANSLATION_BLOCKING = 1 << 1;
        /// P2P Request Redirect: peer requests go up to the root (and the IOMMU).
        const REQUEST_REDIRECT = 1 << 2;
        /// P2P Completion Redirect.
        const COMPLETION_REDIRECT = 1 << 3;
        /// Upstream Forwarding: requests to the port's own window go up too.
        const UPSTREAM_FORWARDING = 1 << 4;
        /// P2P Egress Control: a port may block peer requests by a vector.
        const EGRESS_CONTROL = 1 << 5;
        /// Direct Translated P2P: translated peer requests go straight to the peer.
        const DIRECT_TRANSLATED_P2P = 1 << 6;
    }
}

/// What isolation needs enabled (Linux `REQ_ACS_FLAGS`).
pub const ISOLATION: AcsFlags = AcsFlags::SOURCE_VALIDATION
    .union(AcsFlags::REQUEST_REDIRECT)
    .union(AcsFlags::COMPLETION_REDIRECT)
    .union(AcsFlags::UPSTREAM_FORWARDING);

/// The offset of `bdf`'s extended capability `id`, if it has one.
pub fn find_extended(config: &dyn ConfigSpace, bdf: Bdf, id: u16) -> Option<u16> {
    let mut offset = FIRST_EXTENDED;
    for _ in 0..MAX_EXTENDED {
        let header = config.read32(bdf, offset);
        // No extended capabilities (0), or no function at all (all ones).
        if header == 0 || header == u32::MAX {
            return None;
        }
        if header & ID_MASK == u32::from(id) {
            return Some(offset);
        }
        let next = ((header >> NEXT_SHIFT) & NEXT_MASK) as u16;
        if next < FIRST_EXTENDED {
            return None;
        }
        offset = next;
    }
    None
}

/// `bdf`'s ACS capability: (implemented, enabled) controls.
pub fn read(config: &dyn ConfigSpace, bdf: Bdf) -> Option<(AcsFlags, AcsFlags)> {
    let at = find_extended(config, bdf, ACS_ID)?;
    Some((
        AcsFlags::from_bits_truncate(config.read16(bdf, at + CAPABILITY)),
        AcsFlags::from_bits_truncate(config.read16(bdf, at + CONTROL)),
    ))
}

/// Turns on the isolation controls `bdf` implements (Linux
/// `pci_std_enable_acs`); returns the controls enabled after, or `None`
/// without an ACS capability.
pub fn enable_isolation(config: &dyn ConfigSpace, bdf: Bdf) -> Option<AcsFlags> {
    let at = find_extended(config, bdf, ACS_ID)?;
    let implemented = AcsFlags::from_bits_truncate(config.read16(bdf, at + CAPABILITY));
    let control = config.read16(bdf, at + CONTROL);
    config.write16(
        bdf,
        at + CONTROL,
        control | (implemented & ISOLATION).bits(),
    );
    Some(AcsFlags::from_bits_truncate(
        config.read16(bdf, at + CONTROL),
    ))
}

/// Whether `required` controls are in force at `bdf` (Linux
/// `pci_acs_flags_enabled`): a control the function does not implement
/// counts as hard-wired on, except egress control.
fn flags_enabled(config: &dyn ConfigSpace, bdf: Bdf, required: AcsFlags) -> bool {
    let Some((implemented, enabled)) = read(config, bdf) else {
        return false;
    };
    let required = required & (implemented | AcsFlags::EGRESS_CONTROL);
    enabled.contains(required)
}

/// Whether `bdf` keeps the requests below or beside it from reaching peers
/// directly (Linux `pci_acs_enabled` with [`ISOLATION`]): conventional PCI
/// and bridges to or from it never do; root and switch downstream ports must
/// have ACS on; a multi-function device's functions must, as to each other;
/// anything else has no peers to reach.
pub fn isolates(config: &dyn ConfigSpace, bdf: Bdf, multi_function: bool) -> bool {
    match port_type(config, bdf) {
        None | Some(PortType::PcieToPciBridge | PortType::PciToPcieBridge) => false,
        Some(PortType::RootPort | PortType::SwitchDownstream) => {
            flags_enabled(config, bdf, ISOLATION)
        }
        Some(PortType::SwitchUpstream | PortType::Other(_)) => {
            !multi_function || flags_enabled(config, bdf, ISOLATION)
        }
    }
}

/// Whether the device of function `bdf` has more than one function (the
/// multi-function bit of its function 0).
fn multi_function(functions: &[Function], bdf: Bdf) -> bool {
    functions
        .iter()
        .find(|f| f.bdf.bus == bdf.bus && f.bdf.device == bdf.device && f.bdf.function == 0)
        .is_some_and(|f| f.header_type.multi_function)
}

/// The highest bridge below which `bdf`'s requests can reach peers without
/// passing the IOMMU (after Linux `pci_device_group`'s walk up the buses):
/// below a bridge that does not isolate (a PCIe-to-PCI bridge, a port
/// without ACS on), requests can reach everything on the bus above it, so
/// the group grows to the bridge above; the walk ends at the first bridge
/// whose whole path to the root isolates. `None`: nothing on the way lets
/// the function's requests reach a peer.
pub fn isolation_root(
    config: &dyn ConfigSpace,
    topology: &Topology,
    functions: &[Function],
    bdf: Bdf,
) -> Option<Bdf> {
    let path_isolates = |bridge: Bdf| {
        let mut at = Some(bridge);
        // A path is never longer than the bus numbers.
        for _ in 0..=u8::MAX {
            let Some(here) = at else {
                return true;
            };
            if !isolates(config, here, multi_function(functions, here)) {
                return false;
            }
            at = topology.bridge_to(here.bus).map(|b| b.bdf);
        }
        false
    };
    let mut root = None;
    let mut bridge = topology.bridge_to(bdf.bus).map(|b| b.bdf);
    for _ in 0..=u8::MAX {
        let Some(at) = bridge else {
            break;
        };
        if path_isolates(at) {
            break;
        }
        let parent = topology.bridge_to(at.bus).map(|b| b.bdf);
        root = Some(parent.unwrap_or(at));
        bridge = parent;
    }
    root
}

/// The functions that share `bdf`'s isolation group: those below the same
/// [`isolation_root`], and the other functions of its device where ACS does
/// not keep them apart (Linux `get_pci_function_alias_group`). `bdf` is
/// among them.
pub fn isolation_group(
    config: &dyn ConfigSpace,
    topology: &Topology,
    functions: &[Function],
    bdf: Bdf,
) -> Vec<Bdf> {
    let root_buses = isolation_root(config, topology, functions, bdf)
        .and_then(|root| topology.bridges.iter().find(|b| b.bdf == root))
        .map(|root| root.secondary..=root.subordinate);
    let below = |other: Bdf| {
        root_buses
            .as_ref()
            .is_some_and(|buses| buses.contains(&other.bus))
    };
    let own_device_shared = multi_function(functions, bdf) && !isolates(config, bdf, true);
    functions
        .iter()
        .map(|f| f.bdf)
        .filter(|&other| {
            other == bdf
                || below(other)
                || (own_device_shared
                    && other.bus == bdf.bus
                    && other.device == bdf.device
                    && !isolates(config, other, true))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::model::{Model, ModelFunction};

    const ROOT_PORT: u8 = 4;
    const SWITCH_UP: u8 = 5;
    const SWITCH_DOWN: u8 = 6;
    const PCIE_TO_PCI: u8 = 7;
    /// What QEMU's `pcie-root-port` implements (`pcie_acs_init`).
    const QEMU_PORT_ACS: u16 = 0b1_1111;

    fn bridge(port_type: u8, secondary: u8, subordinate: u8) -> ModelFunction {
        let mut bridge = ModelFunction::bridge(0x1B36, 0x000C).with_pcie_port_type(port_type);
        bridge.set32(
            0x18,
            u32::from(subordinate) << 16 | u32::from(secondary) << 8,
        );
        bridge
    }

    fn endpoint() -> ModelFunction {
        ModelFunction::new(0x1234, 0x11E8, 0x00FF00).with_pcie_port_type(0)
    }

    fn group(model: &Model, bdf: Bdf) -> Vec<Bdf> {
        let functions = crate::enumerate(model, 0..=8);
        let topology = Topology::discover(model, &functions);
        isolation_group(model, &topology, &functions, bdf)
    }

    fn enable_everywhere(model: &Model) {
        let bdfs: Vec<Bdf> = model.functions.borrow().keys().copied().collect();
        for bdf in bdfs {
            enable_isolation(model, bdf);
        }
    }

    /// Two root ports, one with a PCIe-to-PCI bridge and two edus below,
    /// one with an edu. ACS never applies below a PCIe-to-PCI bridge: the
    /// conventional bus and the bridge are one group, the root port's; the
    /// other edu is alone. Enabling turns on what the ports implement.
    #[test]
    fn functions_below_a_pci_bridge_share_a_group() {
        let model = Model::with(vec![
            (
                Bdf::new(0, 1, 0),
                bridge(ROOT_PORT, 1, 2).with_acs(QEMU_PORT_ACS, 0),
            ),
            (
                Bdf::new(0, 2, 0),
                bridge(ROOT_PORT, 3, 3).with_acs(QEMU_PORT_ACS, 0),
            ),
            (Bdf::new(1, 0, 0), bridge(PCIE_TO_PCI, 2, 2)),
            (
                Bdf::new(2, 1, 0),
                ModelFunction::new(0x1234, 0x11E8, 0x00FF00),
            ),
            (
                Bdf::new(2, 2, 0),
                ModelFunction::new(0x1234, 0x11E8, 0x00FF00),
            ),
            (Bdf::new(3, 0, 0), endpoint()),
        ]);
        assert!(!isolates(&model, Bdf::new(0, 1, 0), false));
        enable_everywhere(&model);
        assert_eq!(
            read(&model, Bdf::new(0, 1, 0)),
            Some((AcsFlags::from_bits_truncate(QEMU_PORT_ACS), ISOLATION))
        );
        assert!(isolates(&model, Bdf::new(0, 1, 0), false));
        assert_eq!(
            group(&model, Bdf::new(2, 2, 0)),
            [Bdf::new(1, 0, 0), Bdf::new(2, 1, 0), Bdf::new(2, 2, 0)]
        );
        assert_eq!(group(&model, Bdf::new(3, 0, 0)), [Bdf::new(3, 0, 0)]);
    }

    /// Endpoints below the downstream ports of one switch reach each other
    /// through the switch unless the downstream ports have ACS on; a port
    /// without an ACS capability never isolates.
    #[test]
    fn switch_downstream_ports_need_acs_on() {
        let switch = |acs: Option<u16>| {
            let down = |secondary| {
                let port = bridge(SWITCH_DOWN, secondary, secondary);
                match acs {
                    Some(enabled) => port.with_acs(QEMU_PORT_ACS, enabled),
                    None => port,
                }
            };
            Model::with(vec![
                (
                    Bdf::new(0, 1, 0),
                    bridge(ROOT_PORT, 1, 4).with_acs(QEMU_PORT_ACS, 0b1_1101),
                ),
                (Bdf::new(1, 0, 0), bridge(SWITCH_UP, 2, 4)),
                (Bdf::new(2, 0, 0), down(3)),
                (Bdf::new(2, 1, 0), down(4)),
                (Bdf::new(3, 0, 0), endpoint()),
                (Bdf::new(4, 0, 0), endpoint()),
            ])
        };
        for acs in [None, Some(0)] {
            let model = switch(acs);
            let shared = group(&model, Bdf::new(3, 0, 0));
            assert!(shared.contains(&Bdf::new(4, 0, 0)), "{acs:?}: {shared:?}");
        }
        let model = switch(Some(0b1_1101));
        assert_eq!(group(&model, Bdf::new(3, 0, 0)), [Bdf::new(3, 0, 0)]);
        assert_eq!(group(&model, Bdf::new(4, 0, 0)), [Bdf::new(4, 0, 0)]);
    }

    /// The functions of a multi-function device without ACS reach each other
    /// inside the device: one group. With P2P request and completion
    /// redirect on (an endpoint implements no more), each is alone.
    #[test]
    fn functions_of_one_device_share_a_group_without_acs() {
        let device = |acs: Option<u16>| {
            let function = || {
                let f = endpoint().with_multi_function();
                match acs {
                    Some(bits) => f.with_acs(bits, bits),
                    None => f,
                }
            };
            Model::with(vec![
                (Bdf::new(0, 3, 0), function()),
                (Bdf::new(0, 3, 1), function()),
                (Bdf::new(0, 4, 0), endpoint()),
            ])
        };
        assert_eq!(
            group(&device(None), Bdf::new(0, 3, 1)),
            [Bdf::new(0, 3, 0), Bdf::new(0, 3, 1)]
        );
        let redirect = (AcsFlags::REQUEST_REDIRECT | AcsFlags::COMPLETION_REDIRECT).bits();
        assert_eq!(
            group(&device(Some(redirect)), Bdf::new(0, 3, 1)),
            [Bdf::new(0, 3, 1)]
        );
        assert_eq!(group(&device(None), Bdf::new(0, 4, 0)), [Bdf::new(0, 4, 0)]);
    }

    /// Extended capability pointers that loop, or lead back into the
    /// conventional space, end the walk.
    #[test]
    fn a_looping_extended_capability_list_ends() {
        let mut function = endpoint();
        function.set32(0x100, 0x0001 | (1 << 16) | (0x200 << 20));
        function.set32(0x200, 0x0002 | (1 << 16) | (0x100 << 20));
        let model = Model::with(vec![(Bdf::new(0, 1, 0), function)]);
        assert_eq!(find_extended(&model, Bdf::new(0, 1, 0), ACS_ID), None);
        let mut function = endpoint();
        function.set32(0x100, 0x0001 | (1 << 16) | (0x40 << 20));
        let model = Model::with(vec![(Bdf::new(0, 1, 0), function)]);
        assert_eq!(find_extended(&model, Bdf::new(0, 1, 0), ACS_ID), None);
    }
}
