//! What the kernel needs from an aarch64 device tree: RAM, reservations, console,
//! PSCI, the generic ECAM PCIe host with its `iommu-map`, the SMMUv3s and the GIC.
//!
//! Bindings followed (Linux `Documentation/devicetree/bindings/`): `pci/host-generic-pci`
//! and `pci/pci-iommu` / `pci/pci-msi` (maps), IEEE 1275 PCI bus binding §2.2.1 (the
//! three-cell PCI address), `iommu/arm,smmu-v3`, `interrupt-controller/arm,gic` and
//! `arm,gic-v3`, `arm/psci`, `serial/arm,pl011`, `reserved-memory`.

mod fdt;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

pub use fdt::{
    FDT_HEADER_SIZE, FDT_MAGIC, Fdt, MAX_DEPTH, MAX_DTB_SIZE, MAX_NODES, MAX_PROPERTIES_PER_NODE,
    NodeId, Property,
};

use crate::FirmwareError;
use crate::bytes::be32;
use crate::overlap;

/// Reads the total size of the DTB at `ptr` from its header (DTSpec §5.2 `totalsize`),
/// checking the magic first, so the caller can build the slice for [`Platform::parse`].
///
/// # Safety
/// `ptr` must be valid for reads of [`FDT_HEADER_SIZE`] bytes (any alignment).
pub unsafe fn dtb_size(ptr: *const u8) -> Result<usize, FirmwareError> {
    // SAFETY: the caller guarantees FDT_HEADER_SIZE readable bytes at `ptr`; u8 has no
    // alignment requirement and every bit pattern is a valid u8.
    let header = unsafe { core::slice::from_raw_parts(ptr, FDT_HEADER_SIZE) };
    fdt::total_size(header)
}

/// Parses the DTB at `ptr` (for example the address the boot loader passed in x0).
///
/// # Safety
/// `ptr` must be valid for reads of [`FDT_HEADER_SIZE`] bytes, and of the header's
/// `totalsize` bytes (at most [`MAX_DTB_SIZE`]) once that is known, for the duration
/// of the call, with no concurrent writes.
pub unsafe fn parse_at(ptr: *const u8) -> Result<Platform, FirmwareError> {
    // SAFETY: forwarded from this function's contract.
    let size = unsafe { dtb_size(ptr) }?;
    // SAFETY: the contract covers `size` readable bytes; dtb_size bounded `size` by
    // MAX_DTB_SIZE, and the slice does not outlive this call.
    let dtb = unsafe { core::slice::from_raw_parts(ptr, size) };
    Platform::parse(dtb)
}

/// The total size recorded in a DTB header held in a slice.
pub fn dtb_size_of(header: &[u8]) -> Result<usize, FirmwareError> {
    fdt::total_size(header)
}

/// A physical address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegion {
    /// First byte.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl MemRegion {
    fn new(base: u64, size: u64, what: &'static str) -> Result<Self, FirmwareError> {
        base.checked_add(size)
            .ok_or(FirmwareError::Overflow { what })?;
        Ok(Self { base, size })
    }

    /// One past the last byte (never overflows: checked at construction).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// Where a reserved range comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationSource {
    /// DTSpec §5.3 memory reservation block (`/memreserve/`).
    MemReserve,
    /// A child of `/reserved-memory` (DTSpec §3.5); `no_map` forbids mapping it at all.
    ReservedMemory {
        /// `no-map`: not even the kernel may map it.
        no_map: bool,
    },
}

/// RAM the kernel must not allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The memory.
    pub region: MemRegion,
    /// Where the reservation came from.
    pub source: ReservationSource,
}

/// The ARM PrimeCell PL011 UART (binding `serial/arm,pl011`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pl011 {
    /// Register base.
    pub base: u64,
    /// Size of the register block.
    pub size: u64,
    /// Its interrupt.
    pub interrupt: Option<GicInterrupt>,
}

/// PSCI conduit (binding `arm/psci`, property `method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsciMethod {
    /// HVC.
    Hvc,
    /// SMC.
    Smc,
}

/// GIC interrupt specifier, first cell (binding `arm,gic` / `arm,gic-v3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicInterruptKind {
    /// A shared peripheral interrupt.
    Spi,
    /// A private peripheral interrupt.
    Ppi,
    /// GICv3.1 extended SPI range.
    ExtendedSpi,
    /// GICv3.1 extended PPI range.
    ExtendedPpi,
}

/// A decoded three-cell GIC interrupt specifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicInterrupt {
    /// SPI or PPI.
    pub kind: GicInterruptKind,
    /// The number within its kind (SPI 74 is INTID 106).
    pub number: u32,
    /// Third cell: bits 3:0 trigger type (1 rising edge, 2 falling edge, 4 level high,
    /// 8 level low); for PPIs on GICv2 bits 15:8 are a CPU mask.
    pub flags: u32,
}

/// Binding `arm,gic`: trigger-type field of the third cell.
pub const GIC_TRIGGER_MASK: u32 = 0xf;
/// Flags cell: rising edge.
pub const GIC_EDGE_RISING: u32 = 1;
/// Flags cell: active-high level.
pub const GIC_LEVEL_HIGH: u32 = 4;

impl GicInterrupt {
    fn decode(cells: &[u32]) -> Result<Self, FirmwareError> {
        let &[kind, number, flags] = cells else {
            return Err(FirmwareError::BadLength {
                what: "GIC interrupt specifier",
                offset: 0,
                length: cells.len() * 4,
            });
        };
        let kind = match kind {
            0 => GicInterruptKind::Spi,
            1 => GicInterruptKind::Ppi,
            2 => GicInterruptKind::ExtendedSpi,
            3 => GicInterruptKind::ExtendedPpi,
            _ => {
                return Err(FirmwareError::Malformed {
                    what: "GIC interrupt type",
                    offset: 0,
                });
            }
        };
        let interrupt = Self {
            kind,
            number,
            flags,
        };
        interrupt.intid().ok_or(FirmwareError::Malformed {
            what: "GIC interrupt number",
            offset: 0,
        })?;
        Ok(interrupt)
    }

    /// The GIC INTID (GICv3 arch spec §2.2 "INTID ranges"), `None` if out of range.
    pub fn intid(&self) -> Option<u32> {
        let (first, count) = match self.kind {
            GicInterruptKind::Ppi => (16, 16),
            GicInterruptKind::Spi => (32, 988),
            GicInterruptKind::ExtendedPpi => (1056, 64),
            GicInterruptKind::ExtendedSpi => (4096, 1024),
        };
        (self.number < count).then(|| first + self.number)
    }

    /// Edge-triggered.
    pub fn is_edge(&self) -> bool {
        self.flags & GIC_TRIGGER_MASK == GIC_EDGE_RISING
    }
}

/// One SMMUv3 (binding `iommu/arm,smmu-v3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmmuV3 {
    /// Referenced by `iommu-map` / `iommus`.
    pub phandle: Option<u32>,
    /// Register base.
    pub base: u64,
    /// Size of the register block.
    pub size: u64,
    /// The event queue interrupt.
    pub eventq: Option<GicInterrupt>,
    /// The PRI queue interrupt.
    pub priq: Option<GicInterrupt>,
    /// The CMD_SYNC completion interrupt.
    pub cmdq_sync: Option<GicInterrupt>,
    /// The global error interrupt.
    pub gerror: Option<GicInterrupt>,
    /// A single line for every source, used by some implementations instead of the four.
    pub combined: Option<GicInterrupt>,
    /// Table walks and queue accesses snoop the CPU caches.
    pub dma_coherent: bool,
}

/// PCI address space code, bits 25:24 of the first cell of a PCI address
/// (IEEE 1275 PCI binding §2.2.1.1 `phys.hi`: `npt000ss bbbbbbbb dddddfff rrrrrrrr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciSpace {
    /// Configuration space.
    Config,
    /// I/O space.
    Io,
    /// 32-bit memory space.
    Mem32,
    /// 64-bit memory space.
    Mem64,
}

/// PCI binding `phys.hi` fields.
const PCI_PHYS_HI_SPACE_SHIFT: u32 = 24;
const PCI_PHYS_HI_SPACE_MASK: u32 = 0x3;
const PCI_PHYS_HI_PREFETCHABLE: u32 = 1 << 30;
const PCI_PHYS_HI_DEVFN_SHIFT: u32 = 8;
const PCI_PHYS_HI_BUS_SHIFT: u32 = 16;
/// A PCI address is three cells (phys.hi, phys.mid, phys.lo).
const PCI_ADDRESS_CELLS: u32 = 3;

/// One entry of a PCI host's `ranges`: a window of PCI space visible at `cpu_addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciRange {
    /// The address space.
    pub space: PciSpace,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Bus address of the start.
    pub pci_addr: u64,
    /// CPU address of the start.
    pub cpu_addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// One `iommu-map` or `msi-map` entry (bindings `pci/pci-iommu`, `pci/pci-msi`):
/// Requester IDs `rid_base .. rid_base + length` map to `target_base ..` on the
/// IOMMU / MSI controller with phandle `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapEntry {
    /// First requester ID (after the mask).
    pub rid_base: u32,
    /// The phandle of the IOMMU or MSI controller.
    pub target: u32,
    /// The ID the first requester maps to.
    pub target_base: u32,
    /// How many IDs.
    pub length: u32,
}

/// The highest PCI Requester ID plus one (bus:8, device:5, function:3).
const PCI_RID_SPACE: u64 = 1 << 16;

impl IdMapEntry {
    /// The (phandle, ID) that `rid` maps to through this entry.
    pub fn translate(&self, rid: u16) -> Option<(u32, u32)> {
        let offset = u32::from(rid).checked_sub(self.rid_base)?;
        if offset >= self.length {
            return None;
        }
        Some((self.target, self.target_base.checked_add(offset)?))
    }
}

/// Applies an id map to a Requester ID: the first entry covering `rid & mask` wins.
pub fn map_rid(map: &[IdMapEntry], mask: u32, rid: u16) -> Option<(u32, u32)> {
    let masked = (u32::from(rid) & mask) as u16;
    map.iter().find_map(|e| e.translate(masked))
}

/// One legacy INTx route from `interrupt-map` (IEEE 1275 PCI binding, "open firmware
/// recommended practice: interrupt mapping").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntxRoute {
    /// Bus number.
    pub bus: u8,
    /// Device number.
    pub device: u8,
    /// Function number.
    pub function: u8,
    /// 1 = INTA .. 4 = INTD.
    pub pin: u8,
    /// The interrupt controller's phandle.
    pub parent: u32,
    /// The parent's interrupt specifier cells (after its unit address).
    pub parent_specifier: Vec<u32>,
    /// The specifier decoded, when the parent is a three-cell GIC.
    pub gic: Option<GicInterrupt>,
}

/// A generic ECAM PCIe host bridge (binding `pci/host-generic-pci`, compatible
/// `pci-host-ecam-generic`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcieHost {
    /// `linux,pci-domain` (0 when absent).
    pub segment: u16,
    /// ECAM window base.
    pub ecam_base: u64,
    /// Its size.
    pub ecam_size: u64,
    /// First bus.
    pub bus_start: u8,
    /// Clamped to what the ECAM window covers (1 MiB per bus).
    pub bus_end: u8,
    /// The host bridge's windows (`ranges`).
    pub ranges: Vec<PciRange>,
    /// `iommu-map`: requester ID to StreamID.
    pub iommu_map: Vec<IdMapEntry>,
    /// `iommu-map-mask`.
    pub iommu_map_mask: u32,
    /// `msi-map`: requester ID to MSI controller DeviceID.
    pub msi_map: Vec<IdMapEntry>,
    /// `msi-map-mask`.
    pub msi_map_mask: u32,
    /// `interrupt-map-mask`.
    pub interrupt_map_mask: [u32; 4],
    /// `interrupt-map`: INTx routing.
    pub interrupt_map: Vec<IntxRoute>,
    /// `dma-coherent`: devices' DMA snoops.
    pub dma_coherent: bool,
}

/// ECAM (PCIe base spec §7.2.2): 1 MiB of configuration space per bus.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;

impl PcieHost {
    /// The IOMMU (phandle, StreamID) for a Requester ID, from `iommu-map`.
    pub fn iommu_for_rid(&self, rid: u16) -> Option<(u32, u32)> {
        map_rid(&self.iommu_map, self.iommu_map_mask, rid)
    }

    /// The MSI controller (phandle, DeviceID) for a Requester ID, from `msi-map`.
    pub fn msi_for_rid(&self, rid: u16) -> Option<(u32, u32)> {
        map_rid(&self.msi_map, self.msi_map_mask, rid)
    }

    /// The first window of the given space.
    pub fn window(&self, space: PciSpace) -> Option<&PciRange> {
        self.ranges.iter().find(|r| r.space == space)
    }
}

/// GIC architecture version of the interrupt controller node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicVersion {
    /// GICv2.
    V2,
    /// GICv3.
    V3,
}

/// An MSI frame under the GIC: a GICv2m frame (`arm,gic-v2m-frame`) or a GICv3 ITS
/// (`arm,gic-v3-its`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiFrame {
    /// Its phandle.
    pub phandle: Option<u32>,
    /// Register base.
    pub base: u64,
    /// Size of the register block.
    pub size: u64,
}

/// The interrupt controller (bindings `arm,gic` and `arm,gic-v3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gic {
    /// GICv2 or GICv3.
    pub version: GicVersion,
    /// Its phandle.
    pub phandle: Option<u32>,
    /// The distributor's registers.
    pub distributor: MemRegion,
    /// GICv2 CPU interface (GICC).
    pub cpu_interface: Option<MemRegion>,
    /// GICv3 redistributor regions.
    pub redistributors: Vec<MemRegion>,
    /// GICv2m MSI frames.
    pub v2m_frames: Vec<MsiFrame>,
    /// GICv3 ITSes.
    pub its: Vec<MsiFrame>,
}

/// Compatible strings of GICv2-architecture distributors (binding `arm,gic`).
const GIC_V2_COMPATIBLES: &[&str] = &[
    "arm,gic-400",
    "arm,cortex-a15-gic",
    "arm,cortex-a9-gic",
    "arm,cortex-a7-gic",
    "arm,arm11mp-gic",
    "arm,pl390",
    "arm,arm1176jzf-devchip-gic",
    "qcom,msm-8660-qgic",
    "qcom,msm-qgic2",
];

/// A CPU the device tree lists (DTSpec §3.8: a child of `/cpus` whose
/// `device_type` is "cpu").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    /// `reg`: the CPU's MPIDR affinity fields (ARM binding `arm/cpus`), what
    /// PSCI CPU_ON names it by.
    pub mpidr: u64,
    /// `enable-method` is "psci": it is started by PSCI CPU_ON.
    pub psci: bool,
}

/// More CPUs than this are refused (bounded work on hostile input; far above
/// any `virt` machine).
pub const MAX_CPUS: usize = 512;

/// Everything the kernel takes from the device tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// The CPUs, in tree order (the boot CPU is one of them).
    pub cpus: Vec<Cpu>,
    /// RAM (`/memory`).
    pub memory: Vec<MemRegion>,
    /// Memory that must not be used.
    pub reserved: Vec<Reservation>,
    /// `/chosen/bootargs`: the kernel command line.
    pub bootargs: Option<String>,
    /// `/chosen/stdout-path` as written (may carry `:options`).
    pub stdout_path: Option<String>,
    /// The PL011 console.
    pub uart: Option<Pl011>,
    /// How PSCI is called.
    pub psci: Option<PsciMethod>,
    /// PCIe host bridges.
    pub pcie: Vec<PcieHost>,
    /// SMMUv3s.
    pub smmus: Vec<SmmuV3>,
    /// The interrupt controller.
    pub gic: Option<Gic>,
}

impl Platform {
    /// Parses a DTB; `dtb` may extend past the header's `totalsize`.
    pub fn parse(dtb: &[u8]) -> Result<Self, FirmwareError> {
        let fdt = Fdt::parse(dtb)?;
        let chosen = fdt.find_path("/chosen");
        let bootargs = match chosen {
            Some(c) => fdt.str_property(c, "bootargs")?.map(ToString::to_string),
            None => None,
        };
        let stdout_path = match chosen {
            Some(c) => fdt.str_property(c, "stdout-path")?.map(ToString::to_string),
            None => None,
        };
        Ok(Self {
            cpus: cpus(&fdt)?,
            memory: memory(&fdt)?,
            reserved: reservations(&fdt)?,
            uart: uart(&fdt, stdout_path.as_deref())?,
            bootargs,
            stdout_path,
            psci: psci(&fdt)?,
            pcie: pcie_hosts(&fdt)?,
            smmus: smmus(&fdt)?,
            gic: gic(&fdt)?,
        })
    }

    /// The first PCIe host bridge.
    pub fn pcie_host(&self) -> Option<&PcieHost> {
        self.pcie.first()
    }

    /// The SMMU with the given phandle (as found in `iommu-map`).
    pub fn smmu_by_phandle(&self, phandle: u32) -> Option<&SmmuV3> {
        self.smmus.iter().find(|s| s.phandle == Some(phandle))
    }
}

fn enabled_compatible<'f>(
    fdt: &'f Fdt<'_>,
    compatible: &'f str,
) -> impl Iterator<Item = NodeId> + 'f {
    fdt.nodes()
        .filter(move |&n| fdt.is_compatible(n, compatible) && fdt.is_enabled(n))
}

fn regions(
    fdt: &Fdt<'_>,
    node: NodeId,
    what: &'static str,
) -> Result<Vec<MemRegion>, FirmwareError> {
    fdt.reg(node)?
        .into_iter()
        .map(|(base, size)| MemRegion::new(base, size, what))
        .collect()
}

fn first_region(
    fdt: &Fdt<'_>,
    node: NodeId,
    what: &'static str,
) -> Result<MemRegion, FirmwareError> {
    regions(fdt, node, what)?
        .first()
        .copied()
        .ok_or(FirmwareError::Missing { what })
}

/// DTSpec §3.4 `/memory` nodes: children of the root with `device_type = "memory"`.
fn memory(fdt: &Fdt<'_>) -> Result<Vec<MemRegion>, FirmwareError> {
    let mut memory = Vec::new();
    for node in fdt.children(fdt.root()) {
        if fdt.str_property(node, "device_type")? == Some("memory") && fdt.is_enabled(node) {
            memory.extend(
                regions(fdt, node, "memory reg")?
                    .into_iter()
                    .filter(|r| r.size != 0),
            );
        }
    }
    check_disjoint(&memory, "memory")?;
    Ok(memory)
}

fn check_disjoint(regions: &[MemRegion], what: &'static str) -> Result<(), FirmwareError> {
    let spans = regions
        .iter()
        .filter_map(|r| Some((0, r.base, overlap::last(r.base, r.size)?)))
        .collect();
    if overlap::any_overlap(spans) {
        return Err(FirmwareError::Overlap { what });
    }
    Ok(())
}

/// `/memreserve/` entries plus `/reserved-memory` children with a `reg`.
fn reservations(fdt: &Fdt<'_>) -> Result<Vec<Reservation>, FirmwareError> {
    let mut reserved = Vec::new();
    for &(base, size) in fdt.reservations() {
        reserved.push(Reservation {
            region: MemRegion::new(base, size, "memreserve")?,
            source: ReservationSource::MemReserve,
        });
    }
    if let Some(parent) = fdt.find_path("/reserved-memory") {
        for child in fdt.children(parent) {
            if !fdt.is_enabled(child) {
                continue;
            }
            let no_map = fdt.property(child, "no-map").is_some();
            for region in regions(fdt, child, "reserved-memory reg")? {
                reserved.push(Reservation {
                    region,
                    source: ReservationSource::ReservedMemory { no_map },
                });
            }
        }
    }
    Ok(reserved)
}

/// The PL011 named by `/chosen/stdout-path` (a path or an `/aliases` name, DTSpec
/// §3.6), else the first enabled PL011.
fn uart(fdt: &Fdt<'_>, stdout_path: Option<&str>) -> Result<Option<Pl011>, FirmwareError> {
    const PL011: &str = "arm,pl011";
    let chosen_node = stdout_path.and_then(|path| {
        let path = path.split(':').next().unwrap_or(path);
        if path.starts_with('/') {
            fdt.find_path(path)
        } else {
            let aliases = fdt.find_path("/aliases")?;
            let alias = fdt.properties(aliases).iter().find(|p| p.name == path)?;
            let target = match alias.value.split_last() {
                Some((0, text)) => core::str::from_utf8(text).ok()?,
                _ => return None,
            };
            fdt.find_path(target)
        }
    });
    let node = match chosen_node.filter(|&n| fdt.is_compatible(n, PL011)) {
        Some(n) => Some(n),
        None => enabled_compatible(fdt, PL011).next(),
    };
    let Some(node) = node else { return Ok(None) };
    let region = first_region(fdt, node, "pl011 reg")?;
    let interrupt = interrupts(fdt, node)?.first().copied();
    Ok(Some(Pl011 {
        base: region.base,
        size: region.size,
        interrupt,
    }))
}

/// DTSpec §3.7-3.8 and the `arm/cpus` binding: `/cpus` with `#address-cells`
/// 1 or 2 and a `reg` of that many cells in every `cpu` child (none without
/// `/cpus`).
fn cpus(fdt: &Fdt<'_>) -> Result<Vec<Cpu>, FirmwareError> {
    let Some(parent) = fdt.find_path("/cpus") else {
        return Ok(Vec::new());
    };
    let cells = match fdt.u32_property(parent, "#address-cells")? {
        Some(cells @ (1 | 2)) => cells as usize,
        Some(_) => {
            return Err(FirmwareError::Malformed {
                what: "/cpus #address-cells",
                offset: 0,
            });
        }
        None => {
            return Err(FirmwareError::Missing {
                what: "/cpus #address-cells",
            });
        }
    };
    let mut cpus = Vec::new();
    for node in fdt.children(parent) {
        if fdt.str_property(node, "device_type")? != Some("cpu") {
            continue;
        }
        if cpus.len() == MAX_CPUS {
            return Err(FirmwareError::TooMany {
                what: "cpus",
                limit: MAX_CPUS,
            });
        }
        let reg = fdt
            .property(node, "reg")
            .ok_or(FirmwareError::Missing { what: "cpu reg" })?;
        let words = be32_cells(reg, "cpu reg")?;
        if words.len() != cells {
            return Err(FirmwareError::BadLength {
                what: "cpu reg",
                offset: 0,
                length: reg.len(),
            });
        }
        let mpidr = words
            .iter()
            .fold(0u64, |acc, &w| (acc << 32) | u64::from(w));
        let psci = fdt.str_property(node, "enable-method")? == Some("psci");
        cpus.push(Cpu { mpidr, psci });
    }
    Ok(cpus)
}

/// Binding `arm/psci`: any `arm,psci*` node; `method` selects the conduit.
fn psci(fdt: &Fdt<'_>) -> Result<Option<PsciMethod>, FirmwareError> {
    let node = fdt.nodes().find(|&n| {
        fdt.string_list(n, "compatible")
            .any(|c| c.starts_with("arm,psci"))
            && fdt.is_enabled(n)
    });
    let Some(node) = node else { return Ok(None) };
    match fdt.str_property(node, "method")? {
        Some("hvc") => Ok(Some(PsciMethod::Hvc)),
        Some("smc") => Ok(Some(PsciMethod::Smc)),
        Some(_) => Err(FirmwareError::Malformed {
            what: "psci method",
            offset: 0,
        }),
        None => Err(FirmwareError::Missing {
            what: "psci method",
        }),
    }
}

fn be32_cells(value: &[u8], what: &'static str) -> Result<Vec<u32>, FirmwareError> {
    if !value.len().is_multiple_of(4) {
        return Err(FirmwareError::BadLength {
            what,
            offset: 0,
            length: value.len(),
        });
    }
    Ok(value.chunks_exact(4).filter_map(|c| be32(c, 0)).collect())
}

/// `interrupts` of `node`, decoded as three-cell GIC specifiers (binding `arm,gic`).
fn interrupts(fdt: &Fdt<'_>, node: NodeId) -> Result<Vec<GicInterrupt>, FirmwareError> {
    let Some(value) = fdt.property(node, "interrupts") else {
        return Ok(Vec::new());
    };
    let parent = fdt.interrupt_parent(node)?.ok_or(FirmwareError::Missing {
        what: "interrupt-parent",
    })?;
    let cells = fdt
        .u32_property(parent, "#interrupt-cells")?
        .ok_or(FirmwareError::Missing {
            what: "#interrupt-cells",
        })?;
    if cells != 3 {
        return Err(FirmwareError::Malformed {
            what: "#interrupt-cells of a GIC",
            offset: 0,
        });
    }
    let raw = be32_cells(value, "interrupts")?;
    if !raw.len().is_multiple_of(3) {
        return Err(FirmwareError::BadLength {
            what: "interrupts",
            offset: 0,
            length: value.len(),
        });
    }
    raw.chunks_exact(3).map(GicInterrupt::decode).collect()
}

fn smmus(fdt: &Fdt<'_>) -> Result<Vec<SmmuV3>, FirmwareError> {
    let mut smmus = Vec::new();
    for node in enabled_compatible(fdt, "arm,smmu-v3") {
        let region = first_region(fdt, node, "smmu-v3 reg")?;
        let irqs = interrupts(fdt, node)?;
        let names: Vec<&str> = fdt.string_list(node, "interrupt-names").collect();
        let named = |wanted: &str| {
            names
                .iter()
                .position(|&n| n == wanted)
                .and_then(|i| irqs.get(i).copied())
        };
        smmus.push(SmmuV3 {
            phandle: fdt.phandle(node)?,
            base: region.base,
            size: region.size,
            eventq: named("eventq"),
            priq: named("priq"),
            cmdq_sync: named("cmdq-sync"),
            gerror: named("gerror"),
            combined: named("combined"),
            dma_coherent: fdt.property(node, "dma-coherent").is_some(),
        });
    }
    Ok(smmus)
}

fn id_map(
    fdt: &Fdt<'_>,
    node: NodeId,
    name: &'static str,
) -> Result<Vec<IdMapEntry>, FirmwareError> {
    let Some(value) = fdt.property(node, name) else {
        return Ok(Vec::new());
    };
    // bindings pci/pci-iommu and pci/pci-msi: (rid-base, phandle, target-base, length).
    let cells = be32_cells(value, name)?;
    if cells.is_empty() || !cells.len().is_multiple_of(4) {
        return Err(FirmwareError::BadLength {
            what: name,
            offset: 0,
            length: value.len(),
        });
    }
    let mut entries: Vec<IdMapEntry> = Vec::new();
    for (i, c) in cells.chunks_exact(4).enumerate() {
        let entry = IdMapEntry {
            rid_base: c[0],
            target: c[1],
            target_base: c[2],
            length: c[3],
        };
        let offset = i * 16;
        if entry.length == 0 {
            return Err(FirmwareError::BadLength {
                what: name,
                offset,
                length: 0,
            });
        }
        if u64::from(entry.rid_base) + u64::from(entry.length) > PCI_RID_SPACE {
            return Err(FirmwareError::Malformed { what: name, offset });
        }
        entry
            .target_base
            .checked_add(entry.length - 1)
            .ok_or(FirmwareError::Overflow { what: name })?;
        entries.push(entry);
    }
    let spans = entries
        .iter()
        .map(|e| {
            let first = u64::from(e.rid_base);
            (0, first, first + u64::from(e.length) - 1)
        })
        .collect();
    if overlap::any_overlap(spans) {
        return Err(FirmwareError::Overlap { what: name });
    }
    Ok(entries)
}

fn pci_ranges(fdt: &Fdt<'_>, node: NodeId) -> Result<Vec<PciRange>, FirmwareError> {
    let Some(value) = fdt.property(node, "ranges") else {
        return Ok(Vec::new());
    };
    let parent = fdt.parent(node).ok_or(FirmwareError::Malformed {
        what: "pci host at the root",
        offset: 0,
    })?;
    if fdt.address_cells(node)? != PCI_ADDRESS_CELLS {
        return Err(FirmwareError::Malformed {
            what: "pci #address-cells",
            offset: 0,
        });
    }
    // (phys.hi, phys.mid+lo, cpu address, size); phys.hi is one cell, the rest up to two.
    let layout = [1, 2, fdt.address_cells(parent)?, fdt.size_cells(node)?];
    let mut ranges: Vec<PciRange> = Vec::new();
    for entry in fdt::cell_tuples(value, &layout, "pci ranges")? {
        let hi = entry[0] as u32;
        let space = match (hi >> PCI_PHYS_HI_SPACE_SHIFT) & PCI_PHYS_HI_SPACE_MASK {
            0 => PciSpace::Config,
            1 => PciSpace::Io,
            2 => PciSpace::Mem32,
            _ => PciSpace::Mem64,
        };
        let range = PciRange {
            space,
            prefetchable: hi & PCI_PHYS_HI_PREFETCHABLE != 0,
            pci_addr: entry[1],
            cpu_addr: entry[2],
            size: entry[3],
        };
        if range.size == 0 {
            return Err(FirmwareError::BadLength {
                what: "pci ranges size",
                offset: 0,
                length: 0,
            });
        }
        range
            .cpu_addr
            .checked_add(range.size)
            .ok_or(FirmwareError::Overflow { what: "pci ranges" })?;
        range
            .pci_addr
            .checked_add(range.size)
            .ok_or(FirmwareError::Overflow { what: "pci ranges" })?;
        ranges.push(range);
    }
    let spans = ranges
        .iter()
        .filter_map(|r| Some((0, r.cpu_addr, overlap::last(r.cpu_addr, r.size)?)))
        .collect();
    if overlap::any_overlap(spans) {
        return Err(FirmwareError::Overlap { what: "pci ranges" });
    }
    Ok(ranges)
}

fn interrupt_map(fdt: &Fdt<'_>, node: NodeId) -> Result<([u32; 4], Vec<IntxRoute>), FirmwareError> {
    let mut mask = [u32::MAX; 4];
    if let Some(value) = fdt.property(node, "interrupt-map-mask") {
        let cells = be32_cells(value, "interrupt-map-mask")?;
        mask = cells
            .as_slice()
            .try_into()
            .map_err(|_| FirmwareError::BadLength {
                what: "interrupt-map-mask",
                offset: 0,
                length: value.len(),
            })?;
    }
    let Some(value) = fdt.property(node, "interrupt-map") else {
        return Ok((mask, Vec::new()));
    };
    if fdt.u32_property(node, "#interrupt-cells")? != Some(1) {
        return Err(FirmwareError::Malformed {
            what: "pci #interrupt-cells",
            offset: 0,
        });
    }
    let cells = be32_cells(value, "interrupt-map")?;
    let mut routes = Vec::new();
    let mut at = 0usize;
    // Each entry: child unit address (3) + child specifier (1) + parent phandle +
    // parent unit address (its #address-cells, default 0) + parent specifier.
    while at < cells.len() {
        let truncated = FirmwareError::Truncated {
            what: "interrupt-map",
            offset: at * 4,
        };
        let head = cells.get(at..at + 5).ok_or(truncated)?;
        let (hi, pin, phandle) = (head[0], head[3], head[4]);
        let parent = fdt.by_phandle(phandle).ok_or(FirmwareError::Missing {
            what: "interrupt-map parent",
        })?;
        let parent_address = fdt.u32_property(parent, "#address-cells")?.unwrap_or(0) as usize;
        let parent_cells =
            fdt.u32_property(parent, "#interrupt-cells")?
                .ok_or(FirmwareError::Missing {
                    what: "#interrupt-cells of interrupt-map parent",
                })? as usize;
        let start = (at + 5).checked_add(parent_address).ok_or(truncated)?;
        let end = start.checked_add(parent_cells).ok_or(truncated)?;
        let specifier = cells.get(start..end).ok_or(truncated)?;
        if !(1..=4).contains(&pin) {
            return Err(FirmwareError::Malformed {
                what: "interrupt-map pin",
                offset: at * 4,
            });
        }
        let gic = if parent_cells == 3 && fdt.property(parent, "interrupt-controller").is_some() {
            Some(GicInterrupt::decode(specifier)?)
        } else {
            None
        };
        routes.push(IntxRoute {
            bus: (hi >> PCI_PHYS_HI_BUS_SHIFT) as u8,
            device: ((hi >> PCI_PHYS_HI_DEVFN_SHIFT) as u8) >> 3,
            function: ((hi >> PCI_PHYS_HI_DEVFN_SHIFT) as u8) & 0x7,
            pin: pin as u8,
            parent: phandle,
            parent_specifier: specifier.to_vec(),
            gic,
        });
        at = end;
    }
    Ok((mask, routes))
}

fn pcie_hosts(fdt: &Fdt<'_>) -> Result<Vec<PcieHost>, FirmwareError> {
    let mut hosts = Vec::new();
    for node in enabled_compatible(fdt, "pci-host-ecam-generic") {
        let ecam = first_region(fdt, node, "pci ecam reg")?;
        let (bus_start, mut bus_end) = match fdt.property(node, "bus-range") {
            None => (0u32, 255u32),
            Some(value) => match be32_cells(value, "bus-range")?.as_slice() {
                &[start, end] => (start, end),
                _ => {
                    return Err(FirmwareError::BadLength {
                        what: "bus-range",
                        offset: 0,
                        length: value.len(),
                    });
                }
            },
        };
        if bus_start > bus_end || bus_end > 255 {
            return Err(FirmwareError::Malformed {
                what: "bus-range",
                offset: 0,
            });
        }
        // host-generic-pci: the ECAM window covers bus-range starting at its first bus;
        // buses beyond the window cannot be reached, so drop them rather than fault later.
        let buses_covered = ecam.size / ECAM_BUS_SIZE;
        if buses_covered == 0 {
            return Err(FirmwareError::BadLength {
                what: "pci ecam size",
                offset: 0,
                length: ecam.size as usize,
            });
        }
        if u64::from(bus_end - bus_start) >= buses_covered {
            bus_end = bus_start + (buses_covered - 1) as u32;
        }
        let segment = match fdt.u32_property(node, "linux,pci-domain")? {
            None => 0,
            Some(d) => u16::try_from(d).map_err(|_| FirmwareError::Malformed {
                what: "linux,pci-domain",
                offset: 0,
            })?,
        };
        let (interrupt_map_mask, interrupt_map) = interrupt_map(fdt, node)?;
        hosts.push(PcieHost {
            segment,
            ecam_base: ecam.base,
            ecam_size: ecam.size,
            bus_start: bus_start as u8,
            bus_end: bus_end as u8,
            ranges: pci_ranges(fdt, node)?,
            iommu_map: id_map(fdt, node, "iommu-map")?,
            iommu_map_mask: fdt
                .u32_property(node, "iommu-map-mask")?
                .unwrap_or(u32::MAX),
            msi_map: id_map(fdt, node, "msi-map")?,
            msi_map_mask: fdt.u32_property(node, "msi-map-mask")?.unwrap_or(u32::MAX),
            interrupt_map_mask,
            interrupt_map,
            dma_coherent: fdt.property(node, "dma-coherent").is_some(),
        });
    }
    Ok(hosts)
}

fn msi_frames(
    fdt: &Fdt<'_>,
    gic: NodeId,
    compatible: &str,
) -> Result<Vec<MsiFrame>, FirmwareError> {
    let mut frames = Vec::new();
    for child in fdt.children(gic) {
        if fdt.is_compatible(child, compatible) && fdt.is_enabled(child) {
            let region = first_region(fdt, child, "gic msi frame reg")?;
            frames.push(MsiFrame {
                phandle: fdt.phandle(child)?,
                base: region.base,
                size: region.size,
            });
        }
    }
    Ok(frames)
}

fn gic(fdt: &Fdt<'_>) -> Result<Option<Gic>, FirmwareError> {
    let node = fdt.nodes().find(|&n| {
        fdt.property(n, "interrupt-controller").is_some()
            && fdt.is_enabled(n)
            && (fdt.is_compatible(n, "arm,gic-v3")
                || GIC_V2_COMPATIBLES.iter().any(|c| fdt.is_compatible(n, c)))
    });
    let Some(node) = node else { return Ok(None) };
    let regs = regions(fdt, node, "gic reg")?;
    let distributor = *regs.first().ok_or(FirmwareError::Missing {
        what: "gic distributor reg",
    })?;
    let phandle = fdt.phandle(node)?;
    if fdt.is_compatible(node, "arm,gic-v3") {
        // arm,gic-v3: reg = GICD, then `#redistributor-regions` GICR regions, then optional GICC/GICH/GICV.
        let count = fdt
            .u32_property(node, "#redistributor-regions")?
            .unwrap_or(1) as usize;
        let redistributors = regs
            .get(
                1..count.checked_add(1).ok_or(FirmwareError::Overflow {
                    what: "#redistributor-regions",
                })?,
            )
            .ok_or(FirmwareError::Missing {
                what: "gic-v3 redistributor reg",
            })?
            .to_vec();
        Ok(Some(Gic {
            version: GicVersion::V3,
            phandle,
            distributor,
            cpu_interface: None,
            redistributors,
            v2m_frames: msi_frames(fdt, node, "arm,gic-v2m-frame")?,
            its: msi_frames(fdt, node, "arm,gic-v3-its")?,
        }))
    } else {
        // arm,gic: reg = GICD, GICC, then optional GICH/GICV.
        let cpu_interface = *regs.get(1).ok_or(FirmwareError::Missing {
            what: "gic cpu interface reg",
        })?;
        Ok(Some(Gic {
            version: GicVersion::V2,
            phandle,
            distributor,
            cpu_interface: Some(cpu_interface),
            redistributors: Vec::new(),
            v2m_frames: msi_frames(fdt, node, "arm,gic-v2m-frame")?,
            its: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests;
