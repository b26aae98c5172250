use super::*;
use alloc::vec;
use proptest::prelude::*;

const VIRT_SMMUV3_GICV3: &[u8] = include_bytes!("../../fixtures/virt-smmuv3-gicv3.dtb");
const VIRT91_SMMUV3_GICV3: &[u8] = include_bytes!("../../fixtures/virt91-smmuv3-gicv3.dtb");
const VIRT_GICV3: &[u8] = include_bytes!("../../fixtures/virt-gicv3.dtb");
const VIRT_SMMUV3_GICV2: &[u8] = include_bytes!("../../fixtures/virt-smmuv3-gicv2.dtb");
const VIRT_SMMUV3_GICV2_BOOTARGS: &[u8] =
    include_bytes!("../../fixtures/virt-smmuv3-gicv2-bootargs.dtb");
const FIXTURES: &[&[u8]] = &[
    VIRT_SMMUV3_GICV3,
    VIRT91_SMMUV3_GICV3,
    VIRT_GICV3,
    VIRT_SMMUV3_GICV2,
    VIRT_SMMUV3_GICV2_BOOTARGS,
];

const SMMU_PHANDLE: u32 = 0x8004;
const GIC_PHANDLE: u32 = 0x8002;
const MSI_PHANDLE: u32 = 0x8003;

fn spi_edge(number: u32) -> GicInterrupt {
    GicInterrupt {
        kind: GicInterruptKind::Spi,
        number,
        flags: GIC_EDGE_RISING,
    }
}

fn check_common_virt(p: &Platform) {
    assert_eq!(
        p.memory,
        vec![MemRegion {
            base: 0x4000_0000,
            size: 256 << 20
        }]
    );
    assert!(p.reserved.is_empty());
    assert_eq!(p.stdout_path.as_deref(), Some("/pl011@9000000"));
    assert_eq!(
        p.uart,
        Some(Pl011 {
            base: 0x0900_0000,
            size: 0x1000,
            interrupt: Some(GicInterrupt {
                kind: GicInterruptKind::Spi,
                number: 1,
                flags: GIC_LEVEL_HIGH
            }),
        })
    );
    assert_eq!(p.psci, Some(PsciMethod::Hvc));
    // QEMU's default -smp 1: one CPU, MPIDR affinity 0; QEMU writes an
    // enable-method only when there are CPUs to start.
    assert_eq!(
        p.cpus,
        vec![Cpu {
            mpidr: 0,
            psci: false
        }]
    );
    assert_eq!(p.pcie.len(), 1);
    let pci = p.pcie_host().unwrap();
    assert_eq!(pci.segment, 0);
    assert_eq!(
        (pci.ecam_base, pci.ecam_size),
        (0x40_1000_0000, 0x1000_0000)
    );
    assert_eq!((pci.bus_start, pci.bus_end), (0, 255));
    assert!(pci.dma_coherent);
    assert_eq!(
        pci.ranges,
        vec![
            PciRange {
                space: PciSpace::Io,
                prefetchable: false,
                pci_addr: 0,
                cpu_addr: 0x3eff_0000,
                size: 0x1_0000
            },
            PciRange {
                space: PciSpace::Mem32,
                prefetchable: false,
                pci_addr: 0x1000_0000,
                cpu_addr: 0x1000_0000,
                size: 0x2eff_0000,
            },
            PciRange {
                space: PciSpace::Mem64,
                prefetchable: false,
                pci_addr: 0x80_0000_0000,
                cpu_addr: 0x80_0000_0000,
                size: 0x80_0000_0000,
            },
        ]
    );
    assert_eq!(
        pci.msi_map,
        vec![IdMapEntry {
            rid_base: 0,
            target: MSI_PHANDLE,
            target_base: 0,
            length: 0x1_0000
        }]
    );
    assert_eq!(pci.msi_for_rid(0x0008), Some((MSI_PHANDLE, 0x0008)));
    // QEMU virt: 4 devices x 4 pins, swizzled onto SPIs 3..6, level high.
    assert_eq!(pci.interrupt_map_mask, [0x1800, 0, 0, 7]);
    assert_eq!(pci.interrupt_map.len(), 16);
    let route = |device: u8, pin: u8| {
        pci.interrupt_map
            .iter()
            .find(|r| r.device == device && r.pin == pin)
            .and_then(|r| r.gic)
    };
    let spi_level = |number| GicInterrupt {
        kind: GicInterruptKind::Spi,
        number,
        flags: GIC_LEVEL_HIGH,
    };
    assert_eq!(route(0, 1), Some(spi_level(3)));
    assert_eq!(route(1, 1), Some(spi_level(4)));
    assert_eq!(route(1, 4), Some(spi_level(3)));
    assert_eq!(route(3, 2), Some(spi_level(3)));
    assert!(
        pci.interrupt_map
            .iter()
            .all(|r| r.parent == GIC_PHANDLE && r.bus == 0 && r.function == 0)
    );
}

fn check_smmu(p: &Platform) {
    assert_eq!(
        p.smmus,
        vec![SmmuV3 {
            phandle: Some(SMMU_PHANDLE),
            base: 0x0905_0000,
            size: 0x2_0000,
            eventq: Some(spi_edge(74)),
            priq: Some(spi_edge(75)),
            cmdq_sync: Some(spi_edge(76)),
            gerror: Some(spi_edge(77)),
            combined: None,
            dma_coherent: true,
        }]
    );
    assert_eq!(p.smmus[0].eventq.unwrap().intid(), Some(106));
    let pci = p.pcie_host().unwrap();
    assert_eq!(
        pci.iommu_map,
        vec![IdMapEntry {
            rid_base: 0,
            target: SMMU_PHANDLE,
            target_base: 0,
            length: 0x1_0000
        }]
    );
    // edu at 00:01.0 and 00:02.0: StreamID = RID.
    assert_eq!(pci.iommu_for_rid(0x0008), Some((SMMU_PHANDLE, 0x0008)));
    assert_eq!(pci.iommu_for_rid(0x0010), Some((SMMU_PHANDLE, 0x0010)));
    assert_eq!(pci.iommu_for_rid(0xffff), Some((SMMU_PHANDLE, 0xffff)));
    assert!(p.smmu_by_phandle(SMMU_PHANDLE).is_some());
}

fn check_gicv3(p: &Platform) {
    assert_eq!(
        p.gic,
        Some(Gic {
            version: GicVersion::V3,
            phandle: Some(GIC_PHANDLE),
            distributor: MemRegion {
                base: 0x0800_0000,
                size: 0x1_0000
            },
            cpu_interface: None,
            redistributors: vec![MemRegion {
                base: 0x080a_0000,
                size: 0xf6_0000
            }],
            v2m_frames: vec![],
            its: vec![MsiFrame {
                phandle: Some(MSI_PHANDLE),
                base: 0x0808_0000,
                size: 0x2_0000
            }],
        })
    );
}

#[test]
fn virt_smmuv3_gicv3() {
    let p = Platform::parse(VIRT_SMMUV3_GICV3).unwrap();
    check_common_virt(&p);
    check_smmu(&p);
    check_gicv3(&p);
    assert_eq!(p.bootargs, None);
}

#[test]
fn virt91_smmuv3_gicv3_is_laid_out_like_virt() {
    let p = Platform::parse(VIRT91_SMMUV3_GICV3).unwrap();
    check_common_virt(&p);
    check_smmu(&p);
    check_gicv3(&p);
}

#[test]
fn virt_without_iommu_has_no_smmu_and_no_iommu_map() {
    let p = Platform::parse(VIRT_GICV3).unwrap();
    check_common_virt(&p);
    check_gicv3(&p);
    assert!(p.smmus.is_empty());
    assert!(p.pcie_host().unwrap().iommu_map.is_empty());
    assert_eq!(p.pcie_host().unwrap().iommu_for_rid(8), None);
}

#[test]
fn virt_gicv2_has_cpu_interface_and_v2m_frame() {
    for dtb in [VIRT_SMMUV3_GICV2, VIRT_SMMUV3_GICV2_BOOTARGS] {
        let p = Platform::parse(dtb).unwrap();
        check_common_virt(&p);
        check_smmu(&p);
        assert_eq!(
            p.gic,
            Some(Gic {
                version: GicVersion::V2,
                phandle: Some(GIC_PHANDLE),
                distributor: MemRegion {
                    base: 0x0800_0000,
                    size: 0x1_0000
                },
                cpu_interface: Some(MemRegion {
                    base: 0x0801_0000,
                    size: 0x1_0000
                }),
                redistributors: vec![],
                v2m_frames: vec![MsiFrame {
                    phandle: Some(MSI_PHANDLE),
                    base: 0x0802_0000,
                    size: 0x1000
                }],
                its: vec![],
            })
        );
    }
}

#[test]
fn bootargs_come_from_chosen() {
    let p = Platform::parse(VIRT_SMMUV3_GICV2_BOOTARGS).unwrap();
    assert_eq!(p.bootargs.as_deref(), Some("console=ttyAMA0 iommu.test=1"));
}

#[test]
fn dtb_size_reads_the_header() {
    for dtb in FIXTURES {
        // SAFETY: every fixture is longer than the 40-byte header.
        assert_eq!(unsafe { dtb_size(dtb.as_ptr()) }, Ok(dtb.len()));
    }
    let mut bad = VIRT_GICV3.to_vec();
    bad[0] ^= 1;
    // SAFETY: as above.
    assert_eq!(
        unsafe { dtb_size(bad.as_ptr()) },
        Err(FirmwareError::BadSignature { what: "DTB magic" })
    );
}

#[test]
fn trailing_bytes_after_totalsize_are_ignored() {
    let mut padded = VIRT_SMMUV3_GICV3.to_vec();
    padded.resize(padded.len() + 4096, 0xa5);
    assert_eq!(
        Platform::parse(&padded).unwrap(),
        Platform::parse(VIRT_SMMUV3_GICV3).unwrap()
    );
}

// ---------------------------------------------------------------------------------
// Hand-built trees.

/// A minimal DTB writer (DTSpec §5) for hand-made and malformed trees.
#[derive(Default)]
struct Builder {
    structure: Vec<u8>,
    strings: Vec<u8>,
    reservations: Vec<(u64, u64)>,
}

impl Builder {
    fn begin(&mut self, name: &str) -> &mut Self {
        self.token(1);
        self.structure.extend_from_slice(name.as_bytes());
        self.structure.push(0);
        self.pad();
        self
    }
    fn end(&mut self) -> &mut Self {
        self.token(2);
        self
    }
    fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let offset = match self
            .strings
            .windows(name.len() + 1)
            .position(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0)
        {
            Some(o) => o,
            None => {
                let o = self.strings.len();
                self.strings.extend_from_slice(name.as_bytes());
                self.strings.push(0);
                o
            }
        };
        self.token(3);
        self.structure
            .extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.structure
            .extend_from_slice(&(offset as u32).to_be_bytes());
        self.structure.extend_from_slice(value);
        self.pad();
        self
    }
    fn cells(&mut self, name: &str, cells: &[u32]) -> &mut Self {
        let bytes: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.prop(name, &bytes)
    }
    fn string(&mut self, name: &str, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.prop(name, &bytes)
    }
    fn token(&mut self, t: u32) {
        self.structure.extend_from_slice(&t.to_be_bytes());
    }
    fn pad(&mut self) {
        while !self.structure.len().is_multiple_of(4) {
            self.structure.push(0);
        }
    }
    fn finish(&mut self) -> Vec<u8> {
        self.token(9);
        let rsv_off = 40usize;
        let rsv_len = (self.reservations.len() + 1) * 16;
        let struct_off = rsv_off + rsv_len;
        let strings_off = struct_off + self.structure.len();
        let total = strings_off + self.strings.len();
        let mut out = Vec::new();
        for v in [
            FDT_MAGIC,
            total as u32,
            struct_off as u32,
            strings_off as u32,
            rsv_off as u32,
            17,
            16,
            0,
            self.strings.len() as u32,
            self.structure.len() as u32,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        for &(a, s) in self.reservations.iter().chain([(0, 0)].iter()) {
            out.extend_from_slice(&a.to_be_bytes());
            out.extend_from_slice(&s.to_be_bytes());
        }
        out.extend_from_slice(&self.structure);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A small board: root (2/2 cells), memory, gic v3, psci smc, and a pcie node whose
/// properties the caller adds.
fn board(pcie_props: impl FnOnce(&mut Builder)) -> Vec<u8> {
    let mut b = Builder::default();
    b.reservations.push((0x4000_0000, 0x1000));
    b.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2])
        .cells("interrupt-parent", &[1]);
    b.begin("memory@40000000")
        .string("device_type", "memory")
        .cells("reg", &[0, 0x4000_0000, 0, 0x1000_0000])
        .end();
    b.begin("memory@80000000")
        .string("device_type", "memory")
        .cells("reg", &[0, 0x8000_0000, 0, 0x1000_0000])
        .end();
    b.begin("reserved-memory")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2])
        .prop("ranges", &[]);
    b.begin("fw@48000000")
        .cells("reg", &[0, 0x4800_0000, 0, 0x10_0000])
        .prop("no-map", &[])
        .end();
    b.begin("pool@49000000")
        .cells("reg", &[0, 0x4900_0000, 0, 0x20_0000])
        .end();
    b.end();
    b.begin("psci")
        .string("compatible", "arm,psci-1.0")
        .string("method", "smc")
        .end();
    b.begin("chosen")
        .string("bootargs", "hello")
        .string("stdout-path", "serial1:115200n8")
        .end();
    b.begin("aliases").string("serial1", "/uart@9100000").end();
    b.begin("uart@9000000")
        .prop("compatible", b"arm,pl011\0arm,primecell\0")
        .cells("reg", &[0, 0x0900_0000, 0, 0x1000])
        .end();
    b.begin("uart@9100000")
        .prop("compatible", b"arm,pl011\0arm,primecell\0")
        .cells("reg", &[0, 0x0910_0000, 0, 0x1000])
        .end();
    b.begin("intc@8000000")
        .string("compatible", "arm,gic-v3")
        .prop("interrupt-controller", &[])
        .cells("#interrupt-cells", &[3])
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[1])
        .cells("ranges", &[0, 0, 0x0800_0000, 0x20_0000])
        .cells("#redistributor-regions", &[2])
        .cells("phandle", &[1])
        .cells(
            "reg",
            &[
                0,
                0x0800_0000,
                0,
                0x1_0000,
                0,
                0x080a_0000,
                0,
                0x2_0000,
                0,
                0x0810_0000,
                0,
                0x2_0000,
            ],
        );
    // The ITS sits at offset 0x80000 of the GIC's bus: translated through `ranges`.
    b.begin("its@80000")
        .string("compatible", "arm,gic-v3-its")
        .cells("reg", &[0x8_0000, 0x2_0000])
        .cells("phandle", &[2])
        .end();
    b.end();
    b.begin("pcie@10000000")
        .string("compatible", "pci-host-ecam-generic")
        .string("device_type", "pci")
        .cells("#address-cells", &[3])
        .cells("#size-cells", &[2])
        .cells("#interrupt-cells", &[1]);
    pcie_props(&mut b);
    b.end();
    b.end();
    b.finish()
}

fn good_pcie(b: &mut Builder) {
    b.cells("reg", &[0, 0x3f00_0000, 0, 0x100_0000])
        .cells("bus-range", &[0, 0xff])
        .cells("linux,pci-domain", &[2])
        .cells(
            "ranges",
            &[0x4200_0000, 0, 0x2000_0000, 0, 0x2000_0000, 0, 0x1000_0000],
        )
        .cells("iommu-map", &[0, 7, 0x100, 0x80, 0x100, 7, 0x2000, 0x100])
        .cells("iommu-map-mask", &[0xfff8]);
}

#[test]
fn hand_built_board() {
    let p = Platform::parse(&board(good_pcie)).unwrap();
    assert_eq!(
        p.memory,
        vec![
            MemRegion {
                base: 0x4000_0000,
                size: 0x1000_0000
            },
            MemRegion {
                base: 0x8000_0000,
                size: 0x1000_0000
            }
        ]
    );
    assert_eq!(
        p.reserved,
        vec![
            Reservation {
                region: MemRegion {
                    base: 0x4000_0000,
                    size: 0x1000
                },
                source: ReservationSource::MemReserve
            },
            Reservation {
                region: MemRegion {
                    base: 0x4800_0000,
                    size: 0x10_0000
                },
                source: ReservationSource::ReservedMemory { no_map: true },
            },
            Reservation {
                region: MemRegion {
                    base: 0x4900_0000,
                    size: 0x20_0000
                },
                source: ReservationSource::ReservedMemory { no_map: false },
            },
        ]
    );
    assert_eq!(p.bootargs.as_deref(), Some("hello"));
    assert_eq!(p.psci, Some(PsciMethod::Smc));
    // stdout-path is an alias with options: the second UART, not the first.
    assert_eq!(p.uart.map(|u| u.base), Some(0x0910_0000));
    let gic = p.gic.unwrap();
    assert_eq!(gic.redistributors.len(), 2);
    assert_eq!(
        gic.its,
        vec![MsiFrame {
            phandle: Some(2),
            base: 0x0808_0000,
            size: 0x2_0000
        }]
    );
    let pci = &p.pcie[0];
    assert_eq!(pci.segment, 2);
    // A 16 MiB ECAM window only reaches 16 buses.
    assert_eq!((pci.bus_start, pci.bus_end), (0, 15));
    assert_eq!(
        pci.ranges,
        vec![PciRange {
            space: PciSpace::Mem32,
            prefetchable: true,
            pci_addr: 0x2000_0000,
            cpu_addr: 0x2000_0000,
            size: 0x1000_0000
        }]
    );
    assert_eq!(pci.iommu_for_rid(0x0008), Some((7, 0x108)));
    // The mask drops the function number.
    assert_eq!(pci.iommu_for_rid(0x000f), Some((7, 0x108)));
    assert_eq!(pci.iommu_for_rid(0x0100), Some((7, 0x2000)));
    assert_eq!(pci.iommu_for_rid(0x0200), None);
}

fn parse_board(pcie: impl FnOnce(&mut Builder)) -> Result<Platform, FirmwareError> {
    Platform::parse(&board(pcie))
}

#[test]
fn malformed_pcie_properties_are_rejected() {
    let base = |b: &mut Builder| {
        b.cells("reg", &[0, 0x3f00_0000, 0, 0x100_0000]);
    };
    // Overlapping iommu-map RID ranges.
    assert_eq!(
        parse_board(|b| {
            base(b);
            b.cells("iommu-map", &[0, 7, 0, 0x100, 0x80, 7, 0x1000, 0x100]);
        }),
        Err(FirmwareError::Overlap { what: "iommu-map" })
    );
    // A RID range past 0xffff.
    assert_eq!(
        parse_board(|b| {
            base(b);
            b.cells("iommu-map", &[0xff00, 7, 0, 0x200]);
        }),
        Err(FirmwareError::Malformed {
            what: "iommu-map",
            offset: 0
        })
    );
    // Zero length.
    assert_eq!(
        parse_board(|b| {
            base(b);
            b.cells("msi-map", &[0, 7, 0, 0]);
        }),
        Err(FirmwareError::BadLength {
            what: "msi-map",
            offset: 0,
            length: 0
        })
    );
    // Target IDs wrapping past u32::MAX.
    assert_eq!(
        parse_board(|b| {
            base(b);
            b.cells("iommu-map", &[0, 7, 0xffff_ff00, 0x200]);
        }),
        Err(FirmwareError::Overflow { what: "iommu-map" })
    );
    // Not a whole number of 4-cell entries.
    assert_eq!(
        parse_board(|b| {
            base(b);
            b.cells("iommu-map", &[0, 7, 0]);
        }),
        Err(FirmwareError::BadLength {
            what: "iommu-map",
            offset: 0,
            length: 12
        })
    );
    // Overlapping CPU windows in ranges.
    assert_eq!(
        parse_board(|b| {
            base(b);
            b.cells(
                "ranges",
                &[
                    0x0200_0000,
                    0,
                    0x1000_0000,
                    0,
                    0x1000_0000,
                    0,
                    0x1000_0000,
                    0x0300_0000,
                    0,
                    0x1800_0000,
                    0,
                    0x1800_0000,
                    0,
                    0x1000,
                ],
            );
        }),
        Err(FirmwareError::Overlap { what: "pci ranges" })
    );
    // A window that wraps the address space.
    assert_eq!(
        parse_board(|b| {
            base(b);
            b.cells(
                "ranges",
                &[0x0300_0000, 0, 0, 0xffff_ffff, 0xffff_0000, 0, 0x2_0000],
            );
        }),
        Err(FirmwareError::Overflow { what: "pci ranges" })
    );
    // ranges with a length that is not a multiple of the 7-cell entry.
    assert_eq!(
        parse_board(|b| {
            base(b);
            b.cells("ranges", &[0x0300_0000, 0, 0, 0, 0]);
        }),
        Err(FirmwareError::BadLength {
            what: "pci ranges",
            offset: 0,
            length: 20
        })
    );
    // bus-range backwards.
    assert_eq!(
        parse_board(|b| {
            base(b);
            b.cells("bus-range", &[5, 4]);
        }),
        Err(FirmwareError::Malformed {
            what: "bus-range",
            offset: 0
        })
    );
    // An ECAM window smaller than one bus.
    assert_eq!(
        parse_board(|b| {
            b.cells("reg", &[0, 0x3f00_0000, 0, 0x1000]);
        }),
        Err(FirmwareError::BadLength {
            what: "pci ecam size",
            offset: 0,
            length: 0x1000
        })
    );
    // reg wrapping around.
    assert_eq!(
        parse_board(|b| {
            b.cells("reg", &[0xffff_ffff, 0xfff0_0000, 0, 0x100_0000]);
        }),
        Err(FirmwareError::Overflow {
            what: "pci ecam reg"
        })
    );
    // interrupt-map entry cut short, and one naming a phandle that does not exist.
    assert!(matches!(
        parse_board(|b| {
            base(b);
            b.cells("interrupt-map", &[0, 0, 0, 1, 1, 0, 3]);
        }),
        Err(FirmwareError::Truncated {
            what: "interrupt-map",
            ..
        })
    ));
    assert_eq!(
        parse_board(|b| {
            base(b);
            b.cells("interrupt-map", &[0, 0, 0, 1, 99, 0, 3, 4]);
        }),
        Err(FirmwareError::Missing {
            what: "interrupt-map parent"
        })
    );
}

#[test]
fn malformed_structure_is_rejected() {
    // Unbalanced END_NODE.
    let mut b = Builder::default();
    b.begin("").end().end();
    assert!(matches!(
        Fdt::parse(&b.finish()),
        Err(FirmwareError::Malformed {
            what: "DTB second root node",
            ..
        }) | Err(FirmwareError::Malformed {
            what: "DTB unbalanced END_NODE",
            ..
        })
    ));
    // END while a node is open.
    let mut b = Builder::default();
    b.begin("").begin("a");
    assert!(matches!(
        Fdt::parse(&b.finish()),
        Err(FirmwareError::Malformed {
            what: "DTB END inside a node",
            ..
        })
    ));
    // A property after a child node.
    let mut b = Builder::default();
    b.begin("").begin("a").end().cells("x", &[1]).end();
    assert!(matches!(
        Fdt::parse(&b.finish()),
        Err(FirmwareError::Malformed {
            what: "DTB property after a child node",
            ..
        })
    ));
    // Nesting deeper than the limit.
    let mut b = Builder::default();
    b.begin("");
    for _ in 0..fdt::MAX_DEPTH {
        b.begin("n");
    }
    for _ in 0..=fdt::MAX_DEPTH {
        b.end();
    }
    assert_eq!(
        Fdt::parse(&b.finish()).unwrap_err(),
        FirmwareError::TooDeep {
            limit: fdt::MAX_DEPTH
        }
    );
    // A property value running past the structure block.
    let mut dtb = board(good_pcie);
    let first_prop = 40 + 32 + 8; // header, 2 reservation entries, BEGIN_NODE "" (token + 4 name bytes)
    dtb[first_prop + 4..first_prop + 8].copy_from_slice(&0x7fff_0000u32.to_be_bytes());
    assert!(matches!(
        Platform::parse(&dtb),
        Err(FirmwareError::BadLength {
            what: "DTB property value",
            ..
        })
    ));
}

#[test]
fn malformed_header_is_rejected() {
    let good = board(good_pcie);
    assert!(matches!(
        Fdt::parse(&good[..39]),
        Err(FirmwareError::Truncated { .. })
    ));
    assert!(matches!(
        Fdt::parse(&good[..good.len() - 1]),
        Err(FirmwareError::Truncated {
            what: "DTB totalsize",
            ..
        })
    ));
    let set = |field: usize, value: u32| {
        let mut d = good.clone();
        d[field..field + 4].copy_from_slice(&value.to_be_bytes());
        Fdt::parse(&d).map(|_| ())
    };
    assert_eq!(
        set(0, 0xd00d_feee),
        Err(FirmwareError::BadSignature { what: "DTB magic" })
    );
    assert_eq!(
        set(4, 8),
        Err(FirmwareError::BadLength {
            what: "DTB totalsize",
            offset: 4,
            length: 8
        })
    );
    assert_eq!(
        set(24, 18),
        Err(FirmwareError::UnsupportedVersion {
            what: "DTB",
            version: 17
        })
    );
    assert!(matches!(
        set(8, 0xffff_fff0),
        Err(FirmwareError::BadLength {
            what: "DTB structure block",
            ..
        })
    ));
    assert!(matches!(
        set(36, 0xffff_fff0),
        Err(FirmwareError::BadLength {
            what: "DTB structure block",
            ..
        })
    ));
    assert!(matches!(
        set(32, 0xffff_fff0),
        Err(FirmwareError::BadLength {
            what: "DTB strings block",
            ..
        })
    ));
    assert!(matches!(
        set(16, 4),
        Err(FirmwareError::Malformed {
            what: "DTB memory reservation block",
            ..
        })
    ));
    // A memreserve entry wrapping around.
    let mut d = good.clone();
    d[40..48].copy_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(
        Fdt::parse(&d).unwrap_err(),
        FirmwareError::Overflow {
            what: "DTB memory reservation"
        }
    );
}

#[test]
fn node_and_property_limits() {
    let mut b = Builder::default();
    b.begin("");
    for _ in 0..fdt::MAX_NODES {
        b.begin("n").end();
    }
    b.end();
    assert_eq!(
        Fdt::parse(&b.finish()).unwrap_err(),
        FirmwareError::TooMany {
            what: "DTB nodes",
            limit: fdt::MAX_NODES
        }
    );
    let mut b = Builder::default();
    b.begin("");
    for _ in 0..=fdt::MAX_PROPERTIES_PER_NODE {
        b.prop("p", &[]);
    }
    b.end();
    assert_eq!(
        Fdt::parse(&b.finish()).unwrap_err(),
        FirmwareError::TooMany {
            what: "DTB properties of one node",
            limit: fdt::MAX_PROPERTIES_PER_NODE
        }
    );
}

#[test]
fn a_huge_iommu_map_is_checked_in_reasonable_time() {
    // 65536 one-RID windows (1 MiB of cells): a pairwise overlap check would take 2^31 steps.
    let cells: Vec<u32> = (0..0x1_0000u32)
        .flat_map(|rid| [rid, 7, rid ^ 0x5555, 1])
        .collect();
    let p = parse_board(|b| {
        b.cells("reg", &[0, 0x3f00_0000, 0, 0x100_0000])
            .cells("iommu-map", &cells);
    })
    .unwrap();
    assert_eq!(p.pcie[0].iommu_map.len(), 0x1_0000);
    assert_eq!(p.pcie[0].iommu_for_rid(0x1234), Some((7, 0x1234 ^ 0x5555)));
    let mut overlapping = cells.clone();
    overlapping.extend_from_slice(&[0xffff, 7, 0, 1]);
    assert_eq!(
        parse_board(|b| {
            b.cells("reg", &[0, 0x3f00_0000, 0, 0x100_0000])
                .cells("iommu-map", &overlapping);
        }),
        Err(FirmwareError::Overlap { what: "iommu-map" })
    );
}

#[test]
fn overlapping_memory_nodes_are_rejected() {
    let mut b = Builder::default();
    b.begin("")
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[1]);
    b.begin("memory@0")
        .string("device_type", "memory")
        .cells("reg", &[0, 0x2000, 0x1000, 0x1000])
        .end();
    b.end();
    assert_eq!(
        Platform::parse(&b.finish()),
        Err(FirmwareError::Overlap { what: "memory" })
    );
}

#[test]
fn reg_outside_parent_ranges_is_rejected() {
    let mut b = Builder::default();
    b.begin("")
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[1]);
    b.begin("bus")
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[1])
        .cells("ranges", &[0, 0x1000_0000, 0x1000]);
    b.begin("uart@2000")
        .string("compatible", "arm,pl011")
        .cells("reg", &[0x2000, 0x100])
        .end();
    b.end().end();
    assert_eq!(
        Platform::parse(&b.finish()),
        Err(FirmwareError::Malformed {
            what: "reg outside the parent's ranges",
            offset: 0
        })
    );
}

// ---------------------------------------------------------------------------------
// Robustness: arbitrary and mutated blobs never panic.

fn mutate(base: &[u8], truncate: usize, flips: &[(usize, u8)], field: (usize, u32)) -> Vec<u8> {
    let mut d = base.to_vec();
    for &(at, xor) in flips {
        let at = at % d.len();
        d[at] ^= xor;
    }
    // Rewrite one aligned 32-bit word (header fields, tokens, property lengths).
    let at = (field.0 % (d.len() / 4)) * 4;
    d[at..at + 4].copy_from_slice(&field.1.to_be_bytes());
    d.truncate(d.len() - truncate % d.len());
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::test_cases()))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Platform::parse(&data);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_magic_never_panic(mut data in proptest::collection::vec(any::<u8>(), 40..1024)) {
        data[..4].copy_from_slice(&FDT_MAGIC.to_be_bytes());
        let _ = Platform::parse(&data);
    }

    #[test]
    fn mutated_fixtures_never_panic(
        which in 0..FIXTURES.len(),
        truncate in prop_oneof![Just(0usize), any::<usize>()],
        flips in proptest::collection::vec((any::<usize>(), 1..=255u8), 0..8),
        field in (any::<usize>(), prop_oneof![any::<u32>(), 0..64u32, Just(u32::MAX), Just(1), Just(2), Just(3), Just(9)]),
    ) {
        let data = mutate(FIXTURES[which], truncate, &flips, field);
        if let Ok(p) = Platform::parse(&data) {
            // Whatever was accepted must be internally consistent.
            for r in p.memory.iter().chain(p.reserved.iter().map(|r| &r.region)) {
                prop_assert!(r.base.checked_add(r.size).is_some());
            }
            for pci in &p.pcie {
                prop_assert!(pci.bus_start <= pci.bus_end);
                for e in pci.iommu_map.iter().chain(pci.msi_map.iter()) {
                    prop_assert!(u64::from(e.rid_base) + u64::from(e.length) <= 0x1_0000);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::test_cases()))]

    /// iommu-map model: disjoint RID windows; lookups agree with a linear scan.
    #[test]
    fn iommu_map_round_trips(
        windows in proptest::collection::btree_set(0..256u32, 1..8),
        lens in proptest::collection::vec(1..=256u32, 8),
        targets in proptest::collection::vec((1..4u32, any::<u16>()), 8),
        rids in proptest::collection::vec(any::<u16>(), 16),
    ) {
        // Window i starts at a multiple of 256 RIDs, so lengths up to 256 never overlap.
        let model: Vec<IdMapEntry> = windows
            .iter()
            .enumerate()
            .map(|(i, &w)| IdMapEntry {
                rid_base: w << 8,
                target: targets[i].0,
                target_base: u32::from(targets[i].1),
                length: lens[i],
            })
            .collect();
        let cells: Vec<u32> = model.iter().flat_map(|e| [e.rid_base, e.target, e.target_base, e.length]).collect();
        let p = Platform::parse(&board(|b| {
            b.cells("reg", &[0, 0x3f00_0000, 0, 0x100_0000]).cells("iommu-map", &cells);
        }))
        .unwrap();
        let pci = &p.pcie[0];
        prop_assert_eq!(&pci.iommu_map, &model);
        for rid in rids {
            let expected = model.iter().find_map(|e| {
                let r = u32::from(rid);
                (r >= e.rid_base && r < e.rid_base + e.length).then(|| (e.target, e.target_base + (r - e.rid_base)))
            });
            prop_assert_eq!(pci.iommu_for_rid(rid), expected);
        }
    }
}

/// A tree of just `/cpus` with `address_cells` and one `cpu` child per reg
/// (each a list of cells), for the CPU parser.
fn cpus_tree(address_cells: Option<u32>, regs: &[&[u32]]) -> Vec<u8> {
    let mut b = Builder::default();
    b.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2]);
    b.begin("cpus");
    if let Some(cells) = address_cells {
        b.cells("#address-cells", &[cells])
            .cells("#size-cells", &[0]);
    }
    for (index, reg) in regs.iter().enumerate() {
        b.begin(&alloc::format!("cpu@{index}"))
            .string("device_type", "cpu")
            .string("enable-method", "psci");
        if !reg.is_empty() {
            b.cells("reg", reg);
        }
        b.end();
    }
    // A child that is no CPU is skipped.
    b.begin("cpu-map").end();
    b.end();
    b.end();
    b.finish()
}

/// DTSpec §3.7-3.8: every `cpu` under `/cpus` with a `reg` of
/// `#address-cells` cells (1 or 2); anything else is refused with its reason.
#[test]
fn cpus_are_read_from_slash_cpus_and_malformed_ones_refused() {
    let cpus = |tree: Vec<u8>| Platform::parse(&tree).map(|p| p.cpus);
    assert_eq!(
        cpus(cpus_tree(Some(1), &[&[0], &[1], &[0x100]])),
        Ok(vec![
            Cpu {
                mpidr: 0,
                psci: true
            },
            Cpu {
                mpidr: 1,
                psci: true
            },
            Cpu {
                mpidr: 0x100,
                psci: true
            },
        ])
    );
    assert_eq!(
        cpus(cpus_tree(Some(2), &[&[0x1, 0x0203]])),
        Ok(vec![Cpu {
            mpidr: 0x1_0000_0203,
            psci: true
        }])
    );
    assert_eq!(
        cpus(cpus_tree(Some(3), &[&[0, 0, 0]])),
        Err(FirmwareError::Malformed {
            what: "/cpus #address-cells",
            offset: 0
        })
    );
    assert_eq!(
        cpus(cpus_tree(None, &[&[0]])),
        Err(FirmwareError::Missing {
            what: "/cpus #address-cells"
        })
    );
    assert_eq!(
        cpus(cpus_tree(Some(1), &[&[0, 1]])),
        Err(FirmwareError::BadLength {
            what: "cpu reg",
            offset: 0,
            length: 8
        })
    );
    assert_eq!(
        cpus(cpus_tree(Some(1), &[&[]])),
        Err(FirmwareError::Missing { what: "cpu reg" })
    );
    let many: Vec<[u32; 1]> = (0..=MAX_CPUS as u32).map(|i| [i]).collect();
    let many: Vec<&[u32]> = many.iter().map(|r| &r[..]).collect();
    assert_eq!(
        cpus(cpus_tree(Some(1), &many)),
        Err(FirmwareError::TooMany {
            what: "cpus",
            limit: MAX_CPUS
        })
    );
}
