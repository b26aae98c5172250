//! PCI-to-PCI bridges and the topology they make: bus numbers, forwarding
//! windows (PCI-to-PCI Bridge Architecture 1.2 §3.2, type-1 header), and the
//! requester id a device's DMA carries once a bridge has forwarded it (PCIe to
//! PCI/PCI-X Bridge 1.0 §2.3), which is the id an IOMMU sees and isolates.

use alloc::vec::Vec;

use crate::{Bdf, Capabilities, CapabilityId, Command, ConfigSpace, Function, HeaderType};

/// Type-1 header offsets (PCI-to-PCI Bridge 1.2 §3.2, Figure 3-2).
pub mod offsets {
    /// The bus the bridge sits on.
    pub const PRIMARY_BUS: u16 = 0x18;
    /// The bus right below it.
    pub const SECONDARY_BUS: u16 = 0x19;
    /// The highest bus below it.
    pub const SUBORDINATE_BUS: u16 = 0x1A;
    /// I/O base and limit (one byte each).
    pub const IO_BASE: u16 = 0x1C;
    /// Memory window base, bits 31:20.
    pub const MEMORY_BASE: u16 = 0x20;
    /// Memory window limit, bits 31:20.
    pub const MEMORY_LIMIT: u16 = 0x22;
    /// Prefetchable window base, bits 31:20.
    pub const PREFETCHABLE_BASE: u16 = 0x24;
    /// Prefetchable window limit, bits 31:20.
    pub const PREFETCHABLE_LIMIT: u16 = 0x26;
}

/// Memory windows are 1 MiB grained: base and limit registers hold address
/// bits 31:20 in their bits 15:4 (§3.2.5.8).
pub const WINDOW_GRAIN: u64 = 1 << 20;
const WINDOW_SHIFT: u32 = 16;

/// PCIe Capabilities register (PCIe Base 6.0 §7.5.3.2): device/port type in
/// bits 7:4, at offset 2 of the PCI Express capability.
const PCIE_CAPABILITIES: u16 = 0x02;
const PORT_TYPE_SHIFT: u16 = 4;
const PORT_TYPE_MASK: u16 = 0xF;

/// PCIe device/port type (PCIe Base 6.0 §7.5.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortType {
    /// A root port.
    RootPort,
    /// A switch's upstream port.
    SwitchUpstream,
    /// A switch's downstream port.
    SwitchDownstream,
    /// A PCI Express to PCI/PCI-X bridge: the bus below it is conventional.
    PcieToPciBridge,
    /// A PCI/PCI-X to PCI Express bridge.
    PciToPcieBridge,
    /// Endpoints and root-complex functions.
    Other(u8),
}

impl PortType {
    fn from_raw(raw: u16) -> Self {
        match raw {
            4 => PortType::RootPort,
            5 => PortType::SwitchUpstream,
            6 => PortType::SwitchDownstream,
            7 => PortType::PcieToPciBridge,
            8 => PortType::PciToPcieBridge,
            other => PortType::Other(other as u8),
        }
    }
}

/// The PCIe device/port type of `bdf`; `None` for a conventional PCI function.
pub fn port_type(config: &dyn ConfigSpace, bdf: Bdf) -> Option<PortType> {
    let at = Capabilities::offset_of(config, bdf, CapabilityId::PCI_EXPRESS)?;
    let capabilities = config.read16(bdf, at + PCIE_CAPABILITIES);
    Some(PortType::from_raw(
        (capabilities >> PORT_TYPE_SHIFT) & PORT_TYPE_MASK,
    ))
}

/// (secondary, subordinate) bus numbers of bridge `bdf`.
pub fn buses(config: &dyn ConfigSpace, bdf: Bdf) -> (u8, u8) {
    (
        config.read8(bdf, offsets::SECONDARY_BUS),
        config.read8(bdf, offsets::SUBORDINATE_BUS),
    )
}

fn set_buses(config: &dyn ConfigSpace, bdf: Bdf, primary: u8, secondary: u8, subordinate: u8) {
    let old = config.read32(bdf, offsets::PRIMARY_BUS);
    let latency = old & 0xFF00_0000;
    config.write32(
        bdf,
        offsets::PRIMARY_BUS,
        latency | u32::from(subordinate) << 16 | u32::from(secondary) << 8 | u32::from(primary),
    );
}

/// Numbers the buses below `bus` depth first, as firmware does where there
/// is none (aarch64 `virt` booted from an ELF): each bridge found gets the
/// next free number as its secondary bus and, once everything below it is
/// numbered, the last one used as its subordinate bus. Returns the last bus
/// number used. Bridges whose secondary bus would pass 255 are left alone.
pub fn number_buses(config: &dyn ConfigSpace, bus: u8) -> u8 {
    let mut last = bus;
    number_below(config, bus, &mut last);
    last
}

fn number_below(config: &dyn ConfigSpace, bus: u8, last: &mut u8) {
    for function in crate::enumerate(config, bus..=bus) {
        if function.header_type.layout != HeaderType::PCI_BRIDGE {
            continue;
        }
        let Some(secondary) = last.checked_add(1) else {
            return;
        };
        *last = secondary;
        // Everything below may answer to the bus range while it is numbered.
        set_buses(config, function.bdf, bus, secondary, u8::MAX);
        number_below(config, secondary, last);
        set_buses(config, function.bdf, bus, secondary, *last);
    }
}

/// Makes bridge `bdf` forward memory accesses to `[start, end)` (bus
/// addresses, [`WINDOW_GRAIN`] aligned) or, with `None`, none; the
/// prefetchable window is closed, and forwarding is turned on
/// ([`enable_forwarding`]).
pub fn open_memory_window(config: &dyn ConfigSpace, bdf: Bdf, window: Option<(u64, u64)>) {
    let (base, limit) = match window {
        Some((start, end)) if end > start => (start, end - 1),
        // Base above limit: the window is closed.
        _ => (WINDOW_GRAIN, 0),
    };
    let register = |address: u64| ((address >> WINDOW_SHIFT) as u32) & 0xFFF0;
    config.write32(
        bdf,
        offsets::MEMORY_BASE,
        register(limit) << 16 | register(base),
    );
    config.write32(
        bdf,
        offsets::PREFETCHABLE_BASE,
        register(0) << 16 | register(WINDOW_GRAIN),
    );
    enable_forwarding(config, bdf);
}

/// Turns on bridge `bdf`'s memory decoding and bus mastering: it forwards
/// accesses to its window down, and its secondary side's DMA up only as a
/// bus master (PCI-to-PCI Bridge 1.2 §3.2.5.4).
pub fn enable_forwarding(config: &dyn ConfigSpace, bdf: Bdf) {
    config.set_command(
        bdf,
        config.command(bdf) | Command::MEMORY_SPACE | Command::BUS_MASTER,
    );
}

/// A bridge as the topology needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bridge {
    /// The bridge's own address.
    pub bdf: Bdf,
    /// The bus right below it.
    pub secondary: u8,
    /// The highest bus below it.
    pub subordinate: u8,
    /// `None`: a conventional PCI-to-PCI bridge.
    pub port_type: Option<PortType>,
}

/// Which bridge leads to which bus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// Every bridge, in BDF order.
    pub bridges: Vec<Bridge>,
}

impl Topology {
    /// The bridges among `functions`, with their bus numbers as programmed.
    pub fn discover(config: &dyn ConfigSpace, functions: &[Function]) -> Self {
        let bridges = functions
            .iter()
            .filter(|function| function.header_type.layout == HeaderType::PCI_BRIDGE)
            .map(|function| {
                let (secondary, subordinate) = buses(config, function.bdf);
                Bridge {
                    bdf: function.bdf,
                    secondary,
                    subordinate,
                    port_type: port_type(config, function.bdf),
                }
            })
            .collect();
        Topology { bridges }
    }

    /// The bridge whose secondary bus is `bus`; `None` on a root bus.
    pub fn bridge_to(&self, bus: u8) -> Option<&Bridge> {
        self.bridges
            .iter()
            .find(|bridge| bridge.secondary == bus && bridge.bdf.bus != bus)
    }

    /// The requester id `bdf`'s DMA carries when it reaches the root (Linux
    /// `pci_for_each_dma_alias`, its last alias; QEMU
    /// `pci_device_get_iommu_bus_devfn`): walking up from the function's bus,
    /// a PCIe-to-PCI bridge takes the transaction over as (its secondary
    /// bus, 00.0), a conventional PCI-to-PCI bridge as itself, and PCIe ports
    /// and switches pass the id on unchanged.
    pub fn dma_alias(&self, bdf: Bdf) -> Bdf {
        let mut alias = bdf;
        self.for_each_dma_alias(bdf, |id| alias = id);
        alias
    }

    /// Calls `f` with every requester id `bdf`'s DMA may carry on its way
    /// to the root, in order (Linux `pci_for_each_dma_alias`): its own, then
    /// each id a bridge on the way takes requests over with; the last is
    /// [`Self::dma_alias`]. An IOMMU driver programs all of them: a bridge
    /// may pass some requests on with the function's own id.
    pub fn for_each_dma_alias(&self, bdf: Bdf, mut f: impl FnMut(Bdf)) {
        let mut alias = bdf;
        f(alias);
        let mut bus = bdf.bus;
        // Each step goes one bus up; a topology cannot be deeper than the
        // bus numbers (a loop in corrupt bus numbers ends here too).
        for _ in 0..=u8::MAX {
            let Some(bridge) = self.bridge_to(bus) else {
                break;
            };
            let taken_over = match bridge.port_type {
                Some(PortType::PcieToPciBridge) => Some(Bdf::new(bridge.secondary, 0, 0)),
                None => Some(bridge.bdf),
                Some(_) => None,
            };
            if let Some(id) = taken_over
                && id != alias
            {
                alias = id;
                f(alias);
            }
            bus = bridge.bdf.bus;
        }
    }

    /// The buses whose requester ids an MSI of `bdf` may carry when a
    /// PCIe-to-PCI bridge on the way took its requests over: from that
    /// bridge's secondary bus (its alias, bus:00.0) to `bdf`'s own bus. Such a
    /// bridge may forward a request with the function's own id or its alias,
    /// so an interrupt check can only verify the bus (Linux `set_msi_sid`:
    /// `set_irte_verify_bus`). `None`: the id the MSI carries is exact.
    pub fn msi_buses(&self, bdf: Bdf) -> Option<(u8, u8)> {
        let alias = self.dma_alias(bdf);
        let bridge = self.bridges.iter().find(|b| {
            b.port_type == Some(PortType::PcieToPciBridge) && Bdf::new(b.secondary, 0, 0) == alias
        })?;
        Some((bridge.secondary, bdf.bus))
    }

    /// Whether `bus` lies below bridge `bdf` (its secondary..=subordinate).
    pub fn is_below(&self, bridge: Bdf, bus: u8) -> bool {
        self.bridges
            .iter()
            .find(|b| b.bdf == bridge)
            .is_some_and(|b| (b.secondary..=b.subordinate).contains(&bus))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;

    use super::*;
    use crate::model::{Model, ModelFunction};

    fn edu() -> ModelFunction {
        ModelFunction::new(0x1234, 0x11E8, 0x00FF00).with_mem32_bar(0, 1 << 20, false)
    }

    /// virt-like: a root port at 00:01.0 with a PCIe-to-PCI bridge behind
    /// it, two edus on the conventional bus below, and an edu on bus 0.
    fn virt_with_bridge() -> Model {
        Model::with(vec![
            (
                Bdf::new(0, 0, 0),
                ModelFunction::new(0x1B36, 0x0008, 0x060000),
            ),
            (
                Bdf::new(0, 1, 0),
                ModelFunction::bridge(0x1B36, 0x000C).with_pcie_port_type(4),
            ),
            (Bdf::new(0, 2, 0), edu()),
        ])
    }

    #[test]
    fn buses_are_numbered_depth_first_and_aliases_follow_the_bridges() {
        let model = virt_with_bridge();
        // The devices below appear only once the root port forwards bus 1.
        assert_eq!(number_buses(&model, 0), 1);
        assert_eq!(buses(&model, Bdf::new(0, 1, 0)), (1, 1));
        {
            let mut functions = model.functions.borrow_mut();
            functions.insert(
                Bdf::new(1, 0, 0),
                ModelFunction::bridge(0x1B36, 0x000E).with_pcie_port_type(7),
            );
            functions.insert(Bdf::new(2, 1, 0), edu());
            functions.insert(Bdf::new(2, 2, 0), edu());
        }
        // Renumbered from scratch: the root port covers 1-2, the PCIe-to-PCI
        // bridge 2.
        assert_eq!(number_buses(&model, 0), 2);
        assert_eq!(buses(&model, Bdf::new(0, 1, 0)), (1, 2));
        assert_eq!(buses(&model, Bdf::new(1, 0, 0)), (2, 2));
        let functions = crate::enumerate(&model, 0..=2);
        let topology = Topology::discover(&model, &functions);
        assert_eq!(topology.bridges.len(), 2);
        // Both edus behind the PCIe-to-PCI bridge present (2, 00.0); the
        // root port passes ids on; bus 0 keeps its own.
        assert_eq!(topology.dma_alias(Bdf::new(2, 1, 0)), Bdf::new(2, 0, 0));
        assert_eq!(topology.dma_alias(Bdf::new(2, 2, 0)), Bdf::new(2, 0, 0));
        assert_eq!(topology.dma_alias(Bdf::new(1, 0, 0)), Bdf::new(1, 0, 0));
        assert_eq!(topology.dma_alias(Bdf::new(0, 2, 0)), Bdf::new(0, 2, 0));
        // Every id on the way: the edu's own, then the bridge's take-over.
        let mut seen = vec![];
        topology.for_each_dma_alias(Bdf::new(2, 1, 0), |id| seen.push(id));
        assert_eq!(seen, [Bdf::new(2, 1, 0), Bdf::new(2, 0, 0)]);
        seen.clear();
        topology.for_each_dma_alias(Bdf::new(0, 2, 0), |id| seen.push(id));
        assert_eq!(seen, [Bdf::new(0, 2, 0)]);
        assert!(topology.is_below(Bdf::new(0, 1, 0), 2));
        assert!(!topology.is_below(Bdf::new(1, 0, 0), 1));
        // MSIs behind the PCIe-to-PCI bridge may carry any id of bus 2 (its
        // alias or the edu's own): only the bus can be checked.
        assert_eq!(topology.msi_buses(Bdf::new(2, 1, 0)), Some((2, 2)));
        assert_eq!(topology.msi_buses(Bdf::new(0, 2, 0)), None);
        assert_eq!(topology.msi_buses(Bdf::new(1, 0, 0)), None);
    }

    #[test]
    fn a_conventional_bridge_presents_its_own_id() {
        let model = Model::with(vec![
            (
                Bdf::new(0, 0, 0),
                ModelFunction::new(0x8086, 0x29C0, 0x060000),
            ),
            (Bdf::new(0, 6, 0), ModelFunction::bridge(0x1B36, 0x0001)),
        ]);
        number_buses(&model, 0);
        model
            .functions
            .borrow_mut()
            .insert(Bdf::new(1, 3, 0), edu());
        let functions = crate::enumerate(&model, 0..=1);
        let topology = Topology::discover(&model, &functions);
        assert_eq!(topology.dma_alias(Bdf::new(1, 3, 0)), Bdf::new(0, 6, 0));
        let mut seen = vec![];
        topology.for_each_dma_alias(Bdf::new(1, 3, 0), |id| seen.push(id));
        assert_eq!(seen, [Bdf::new(1, 3, 0), Bdf::new(0, 6, 0)]);
        // A conventional bridge's own id is exact: no bus range.
        assert_eq!(topology.msi_buses(Bdf::new(1, 3, 0)), None);
    }

    #[test]
    fn a_bus_number_loop_ends() {
        // A bridge that claims its own bus as secondary: no endless walk.
        let model = Model::with(vec![(
            Bdf::new(1, 0, 0),
            ModelFunction::bridge(0x1B36, 0x000E).with_pcie_port_type(7),
        )]);
        set_buses(&model, Bdf::new(1, 0, 0), 1, 1, 1);
        let functions = crate::enumerate(&model, 1..=1);
        let topology = Topology::discover(&model, &functions);
        assert_eq!(topology.dma_alias(Bdf::new(1, 0, 0)), Bdf::new(1, 0, 0));
    }

    #[test]
    fn memory_window_registers_hold_address_bits_31_20() {
        let model = Model::with(vec![(Bdf::new(0, 1, 0), ModelFunction::bridge(1, 2))]);
        let bridge = Bdf::new(0, 1, 0);
        open_memory_window(&model, bridge, Some((0x1010_0000, 0x1030_0000)));
        assert_eq!(model.read16(bridge, offsets::MEMORY_BASE), 0x1010);
        assert_eq!(model.read16(bridge, offsets::MEMORY_LIMIT), 0x1020);
        // The prefetchable window is closed: base above limit.
        assert!(
            model.read16(bridge, offsets::PREFETCHABLE_BASE)
                > model.read16(bridge, offsets::PREFETCHABLE_LIMIT)
        );
        assert!(
            model
                .command(bridge)
                .contains(Command::MEMORY_SPACE | Command::BUS_MASTER)
        );
        open_memory_window(&model, bridge, None);
        assert!(
            model.read16(bridge, offsets::MEMORY_BASE)
                > model.read16(bridge, offsets::MEMORY_LIMIT)
        );
    }

    #[test]
    fn a_bridge_has_two_bars_and_its_bus_numbers_are_not_probed_as_bars() {
        let model = Model::with(vec![(
            Bdf::new(0, 1, 0),
            ModelFunction::bridge(1, 2).with_mem32_bar(0, 0x100, false),
        )]);
        set_buses(&model, Bdf::new(0, 1, 0), 0, 1, 1);
        let bars = crate::bar::probe_all(&model, Bdf::new(0, 1, 0));
        assert_eq!(bars.len(), 1);
        assert_eq!(buses(&model, Bdf::new(0, 1, 0)), (1, 1));
    }
}
