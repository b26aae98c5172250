//! What the firmware says about an SMMUv3, from the device tree: the
//! `arm,smmu-v3` node (its registers, wired interrupts, coherency; Linux
//! `Documentation/devicetree/bindings/iommu/arm,smmu-v3.yaml`), the PCIe
//! host's `iommu-map` that gives each requester its StreamID
//! (`Documentation/devicetree/bindings/pci/pci-iommu.yaml`), and the MSI
//! doorbell page devices write through the SMMU (a GICv2m frame or the ITS's
//! GITS_TRANSLATER). VT-d's DMAR and AMD-Vi's IVRS are read in their drivers'
//! `discovery.rs` the same way; the parsing of the tables themselves is the
//! `firmware` crate's.

use firmware::devicetree::{GicInterrupt, Platform as DeviceTree, SmmuV3};
use iommu::IovaRange;

use crate::regs::REGISTER_SPAN;

/// Why a described SMMU cannot be driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscoveryError {
    /// No enabled `arm,smmu-v3` node.
    NoUnit,
    /// Register page 0 must be 64 KiB aligned and non-zero (§6.1: the
    /// register file is two 64 KiB pages).
    BadRegisterBase(u64),
    /// The node's `reg` is smaller than the two register pages.
    RegistersTooSmall(u64),
    /// The event queue or global error line is not described (the driver
    /// needs both; QEMU's SMMU has no MSIs, docs/QEMU.md §3).
    MissingInterrupt(&'static str),
}

/// One SMMU as the driver needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitDescription {
    /// Physical address of the register block.
    pub register_base: u64,
    /// Bytes of the register file the driver maps (page 0 and page 1).
    pub register_size: usize,
    /// How `iommu-map` entries name this SMMU.
    pub phandle: Option<u32>,
    /// The event queue's wired interrupt.
    pub eventq: GicInterrupt,
    /// The global error interrupt.
    pub gerror: GicInterrupt,
    /// Table walks and queue accesses snoop the CPU caches (`dma-coherent`).
    pub coherent: bool,
}

const REGISTER_PAGE: u64 = 0x1_0000;

impl UnitDescription {
    /// Checks a node against what the driver needs.
    pub fn from_node(node: &SmmuV3) -> Result<Self, DiscoveryError> {
        if node.base == 0 || !node.base.is_multiple_of(REGISTER_PAGE) {
            return Err(DiscoveryError::BadRegisterBase(node.base));
        }
        if node.size < REGISTER_SPAN as u64 {
            return Err(DiscoveryError::RegistersTooSmall(node.size));
        }
        Ok(Self {
            register_base: node.base,
            register_size: REGISTER_SPAN,
            phandle: node.phandle,
            eventq: node
                .eventq
                .ok_or(DiscoveryError::MissingInterrupt("eventq"))?,
            gerror: node
                .gerror
                .ok_or(DiscoveryError::MissingInterrupt("gerror"))?,
            coherent: node.dma_coherent,
        })
    }

    /// The StreamID of the PCI requester `requester`, through the first host
    /// bridge's `iommu-map`, if that map sends it to this SMMU.
    pub fn stream_id(&self, tree: &DeviceTree, requester: u16) -> Option<u32> {
        let (phandle, sid) = tree.pcie_host()?.iommu_for_rid(requester)?;
        (self.phandle == Some(phandle)).then_some(sid)
    }
}

/// The first SMMU the device tree describes, checked.
pub fn first_unit(tree: &DeviceTree) -> Result<UnitDescription, DiscoveryError> {
    UnitDescription::from_node(tree.smmus.first().ok_or(DiscoveryError::NoUnit)?)
}

/// GITS_TRANSLATER's offset in the ITS register frame (GICv3 IHI 0069H
/// §12.19.3): in the second 64 KiB frame.
pub const ITS_TRANSLATER: u64 = 0x1_0040;
/// The doorbell page every domain of a signalling device maps.
pub const MSI_DOORBELL_PAGE: u64 = 0x1000;

/// The MSI doorbell page PCI devices write to: the GICv2m frame, or the ITS
/// page holding GITS_TRANSLATER on GICv3. MSI writes go through the SMMU,
/// so every domain of a signalling device maps it.
pub fn msi_doorbell(tree: &DeviceTree) -> Option<IovaRange> {
    let gic = tree.gic.as_ref()?;
    let page = match (gic.v2m_frames.first(), gic.its.first()) {
        (Some(frame), _) => frame.base,
        (None, Some(its)) => its.base + (ITS_TRANSLATER & !(MSI_DOORBELL_PAGE - 1)),
        (None, None) => return None,
    };
    IovaRange::from_len(page, MSI_DOORBELL_PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware::devicetree::GicInterruptKind;

    fn spi(number: u32) -> Option<GicInterrupt> {
        Some(GicInterrupt {
            kind: GicInterruptKind::Spi,
            number,
            flags: 1,
        })
    }

    fn node() -> SmmuV3 {
        SmmuV3 {
            phandle: Some(0x8003),
            base: 0x0905_0000,
            size: 0x2_0000,
            eventq: spi(74),
            priq: None,
            cmdq_sync: None,
            gerror: spi(77),
            combined: None,
            dma_coherent: true,
        }
    }

    #[test]
    fn a_well_formed_node_is_taken_as_described() {
        let unit = UnitDescription::from_node(&node()).unwrap();
        assert_eq!(unit.register_base, 0x0905_0000);
        assert_eq!(unit.register_size, REGISTER_SPAN);
        assert!(unit.coherent);
    }

    #[test]
    fn malformed_nodes_are_refused_with_the_reason() {
        let mut bad = node();
        bad.base = 0x0905_1000;
        assert_eq!(
            UnitDescription::from_node(&bad),
            Err(DiscoveryError::BadRegisterBase(0x0905_1000))
        );
        let mut small = node();
        small.size = 0x1_0000;
        assert_eq!(
            UnitDescription::from_node(&small),
            Err(DiscoveryError::RegistersTooSmall(0x1_0000))
        );
        let mut deaf = node();
        deaf.gerror = None;
        assert_eq!(
            UnitDescription::from_node(&deaf),
            Err(DiscoveryError::MissingInterrupt("gerror"))
        );
    }
}
