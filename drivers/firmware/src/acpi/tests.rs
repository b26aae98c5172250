use super::dmar::*;
use super::ivrs::*;
use super::madt::*;
use super::*;
use alloc::vec;
use proptest::prelude::*;

const VTD_DMAR: &[u8] = include_bytes!("../../fixtures/q35-vtd-DMAR.bin");
const VTD_MCFG: &[u8] = include_bytes!("../../fixtures/q35-vtd-MCFG.bin");
const VTD_APIC: &[u8] = include_bytes!("../../fixtures/q35-vtd-APIC.bin");
const VTD_IMAGE: &[u8] = include_bytes!("../../fixtures/q35-vtd-image.bin");
const AMD_IVRS: &[u8] = include_bytes!("../../fixtures/q35-amdvi-IVRS.bin");
const AMD_MCFG: &[u8] = include_bytes!("../../fixtures/q35-amdvi-MCFG.bin");
const AMD_IMAGE: &[u8] = include_bytes!("../../fixtures/q35-amdvi-image.bin");

/// Decodes the sparse image written by `fixtures/extract_acpi.py`: the RSDP address,
/// then (address, length, bytes) segments.
fn load_image(image: &[u8]) -> (u64, Vec<(u64, Vec<u8>)>) {
    let rsdp = u64::from_le_bytes(image[..8].try_into().unwrap());
    let mut segments = Vec::new();
    let mut at = 8;
    while at < image.len() {
        let addr = u64::from_le_bytes(image[at..at + 8].try_into().unwrap());
        let len = u64::from_le_bytes(image[at + 8..at + 16].try_into().unwrap()) as usize;
        segments.push((addr, image[at + 16..at + 16 + len].to_vec()));
        at += 16 + len;
    }
    (rsdp, segments)
}

fn discover_image(image: &[u8]) -> Result<AcpiInfo, FirmwareError> {
    let (rsdp, segments) = load_image(image);
    let mem: Vec<(u64, &[u8])> = segments.iter().map(|(a, b)| (*a, b.as_slice())).collect();
    discover(rsdp, mem.as_slice())
}

fn q35_ecam() -> Vec<EcamRegion> {
    vec![EcamRegion {
        base: 0xb000_0000,
        segment: 0,
        bus_start: 0,
        bus_end: 255,
    }]
}

fn endpoint(bus: u8, device: u8, function: u8) -> DeviceScope {
    DeviceScope {
        scope_type: DeviceScopeType::PciEndpoint,
        flags: 0,
        enumeration_id: 0,
        start_bus: bus,
        path: vec![PathEntry { device, function }],
    }
}

#[test]
fn qemu_mcfg() {
    assert_eq!(parse_mcfg(VTD_MCFG).unwrap(), q35_ecam());
    assert_eq!(parse_mcfg(AMD_MCFG).unwrap(), q35_ecam());
    let ecam = q35_ecam()[0];
    assert_eq!(ecam.config_address(0, 4, 0), Some(0xb002_0000));
    assert_eq!(ecam.config_address(1, 0x1f, 7), Some(0xb01f_f000));
    assert_eq!(ecam.config_address(0, 32, 0), None);
    assert_eq!(ecam.window(), Some((0xb000_0000, 0x1000_0000)));
}

#[test]
fn qemu_dmar() {
    let dmar = parse_dmar(VTD_DMAR).unwrap();
    assert_eq!(&dmar.header.signature, b"DMAR");
    assert_eq!(dmar.header.revision, 1);
    assert_eq!(&dmar.header.oem_id, b"BOCHS ");
    assert_eq!(dmar.host_address_width, 0x2f);
    assert_eq!(dmar.address_width(), 48);
    assert_eq!(dmar.flags, DmarFlags(0x01));
    assert!(
        dmar.flags.intr_remap()
            && !dmar.flags.x2apic_opt_out()
            && !dmar.flags.dma_ctrl_platform_opt_in()
    );
    let ioapic = DeviceScope {
        scope_type: DeviceScopeType::IoApic,
        flags: 0,
        enumeration_id: 0,
        start_bus: 0xff,
        path: vec![PathEntry {
            device: 0,
            function: 0,
        }],
    };
    assert_eq!(
        dmar.drhds,
        vec![Drhd {
            flags: 0,
            size: 0,
            segment: 0,
            register_base: 0xfed9_0000,
            scopes: vec![
                ioapic,
                endpoint(0, 0, 0),
                endpoint(0, 4, 0),
                endpoint(0, 5, 0),
                endpoint(0, 0x1f, 0),
                endpoint(0, 0x1f, 2),
                endpoint(0, 0x1f, 3),
            ],
        }]
    );
    assert!(!dmar.drhds[0].include_pci_all());
    assert_eq!(dmar.drhds[0].register_size(), 4096);
    assert!(
        dmar.rmrrs.is_empty()
            && dmar.atsrs.is_empty()
            && dmar.satcs.is_empty()
            && dmar.rhsas.is_empty()
    );
    assert!(dmar.unknown_types.is_empty());
    // edu at 00:04.0 is listed; 00:06.0 is not and no unit has INCLUDE_PCI_ALL.
    assert_eq!(
        dmar.drhd_for(0, 0, 4, 0).map(|d| d.register_base),
        Some(0xfed9_0000)
    );
    assert_eq!(dmar.drhd_for(0, 0, 6, 0), None);
}

#[test]
fn qemu_ivrs() {
    let ivrs = parse_ivrs(AMD_IVRS).unwrap();
    assert_eq!(ivrs.header.revision, 1);
    assert_eq!(ivrs.iv_info, IvInfo(0x0000_2801));
    assert!(ivrs.iv_info.efr_supported());
    assert_eq!(ivrs.iv_info.pa_size(), 40);
    let devices: Vec<DeviceEntry> = [0x0000, 0x0008, 0x0020, 0x0028, 0x00f8, 0x00fa, 0x00fb]
        .iter()
        .map(|&id| DeviceEntry {
            target: DeviceTarget::Device(id),
            setting: DteSetting(0),
            alias: None,
            extended: None,
        })
        .chain([DeviceEntry {
            target: DeviceTarget::Special {
                variety: SpecialVariety::IoApic,
                handle: 0,
                device_id: 0x00a0,
            },
            setting: DteSetting(0),
            alias: None,
            extended: None,
        }])
        .collect();
    let common = Ivhd {
        ivhd_type: IvhdType::Type10,
        flags: 0xd1,
        iommu_device_id: 0x0008,
        capability_offset: 0x40,
        base_address: 0xfed8_0000,
        segment: 0,
        iommu_info: 0,
        feature_info: 0x44,
        efr: None,
        efr2: None,
        devices,
    };
    let type11 = Ivhd {
        ivhd_type: IvhdType::Type11,
        flags: 0x11,
        feature_info: 0,
        efr: Some(0x29d3),
        efr2: Some(0),
        ..common.clone()
    };
    assert_eq!(ivrs.ivhds, vec![common, type11.clone()]);
    assert!(ivrs.ivmds.is_empty() && ivrs.unknown_types.is_empty());
    let preferred: Vec<&Ivhd> = ivrs.preferred_ivhds().collect();
    assert_eq!(preferred, vec![&type11]);
    assert_eq!(
        type11.entry_for(0x0020).map(|e| &e.target),
        Some(&DeviceTarget::Device(0x0020))
    );
    assert_eq!(type11.entry_for(0x0030), None);
}

#[test]
fn discover_vtd_image() {
    let info = discover_image(VTD_IMAGE).unwrap();
    assert_eq!(info.rsdp_revision, 0);
    assert_eq!(info.root_table, 0x0ffe_2346);
    let signatures: Vec<&[u8; 4]> = info.tables.iter().map(|t| &t.signature).collect();
    assert_eq!(
        signatures,
        vec![b"FACP", b"APIC", b"HPET", b"MCFG", b"DMAR", b"WAET"]
    );
    assert_eq!(
        info.tables[4],
        TableInfo {
            signature: *b"DMAR",
            phys: 0x0ffe_22a6,
            length: 120
        }
    );
    assert_eq!(info.ecam, q35_ecam());
    assert_eq!(info.dmar, Some(parse_dmar(VTD_DMAR).unwrap()));
    assert_eq!(info.ivrs, None);
    assert_eq!(info.madt, Some(parse_madt(VTD_APIC).unwrap()));
}

#[test]
fn discover_amdvi_image() {
    let info = discover_image(AMD_IMAGE).unwrap();
    assert_eq!(info.ecam, q35_ecam());
    assert_eq!(info.dmar, None);
    assert_eq!(info.ivrs, Some(parse_ivrs(AMD_IVRS).unwrap()));
}

#[test]
fn qemu_madt() {
    let madt = parse_madt(VTD_APIC).unwrap();
    assert_eq!(madt.local_apic_address, 0xfee0_0000);
    assert_eq!(madt.flags, 1);
    assert_eq!(
        madt.local_apics,
        vec![LocalApic {
            processor_uid: 0,
            apic_id: 0,
            flags: 1
        }]
    );
    // The I/O APIC whose ID the DMAR IOAPIC scope (enumeration ID 0) names.
    assert_eq!(
        madt.io_apics,
        vec![IoApic {
            id: 0,
            address: 0xfec0_0000,
            gsi_base: 0
        }]
    );
    let overrides: Vec<(u8, u32, u16)> = madt
        .overrides
        .iter()
        .map(|o| (o.source, o.gsi, o.flags))
        .collect();
    assert_eq!(
        overrides,
        vec![
            (0, 2, 0),
            (5, 5, 0xd),
            (9, 9, 0xd),
            (10, 10, 0xd),
            (11, 11, 0xd)
        ]
    );
    assert_eq!(madt.other_types, vec![4]);
}

#[test]
fn malformed_madt() {
    let body = |structures: &[u8]| {
        let mut b = 0xfee0_0000u32.to_le_bytes().to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(structures);
        table(b"APIC", &b)
    };
    let ioapic = |id: u8, addr: u32| {
        let mut s = vec![1, 12, id, 0];
        s.extend_from_slice(&addr.to_le_bytes());
        s.extend_from_slice(&0u32.to_le_bytes());
        s
    };
    assert!(parse_madt(&body(&ioapic(0, 0xfec0_0000))).is_ok());
    assert!(matches!(
        parse_madt(&body(&[1, 0])),
        Err(FirmwareError::BadLength {
            what: "MADT structure",
            ..
        })
    ));
    assert!(matches!(
        parse_madt(&body(&[1, 1])),
        Err(FirmwareError::BadLength {
            what: "MADT structure",
            ..
        })
    ));
    assert!(matches!(
        parse_madt(&body(&[1, 8, 0, 0, 0, 0, 0, 0])),
        Err(FirmwareError::BadLength {
            what: "MADT I/O APIC",
            ..
        })
    ));
    assert!(matches!(
        parse_madt(&body(&[1, 40, 0, 0])),
        Err(FirmwareError::BadLength {
            what: "MADT structure",
            ..
        })
    ));
    assert!(matches!(
        parse_madt(&body(&[1])),
        Err(FirmwareError::Truncated { what: "MADT", .. })
    ));
    assert_eq!(
        parse_madt(&body(
            &[ioapic(0, 0xfec0_0000), ioapic(0, 0xfec0_1000)].concat()
        )),
        Err(FirmwareError::Overlap {
            what: "MADT I/O APICs"
        })
    );
    // A local APIC address override replaces the 32-bit field.
    let mut over = vec![5, 12, 0, 0];
    over.extend_from_slice(&0x1_fee0_0000u64.to_le_bytes());
    assert_eq!(
        parse_madt(&body(&over)).unwrap().local_apic_address,
        0x1_fee0_0000
    );
}

/// Rebuilds the q35 image as ACPI 2.0+: an RSDP revision 2 pointing at an XSDT with
/// the RSDT's entries widened to 64 bits.
fn acpi2_image(mutate_rsdp: impl FnOnce(&mut Vec<u8>)) -> (u64, Vec<(u64, Vec<u8>)>) {
    let (_, mut segments) = load_image(VTD_IMAGE);
    let rsdt = segments[1].1.clone();
    let xsdt_body: Vec<u8> = rsdt[36..]
        .chunks_exact(4)
        .flat_map(|e| u64::from(u32::from_le_bytes(e.try_into().unwrap())).to_le_bytes())
        .collect();
    let xsdt = table(b"XSDT", &xsdt_body);
    let xsdt_phys = 0x1000u64;
    let mut rsdp = b"RSD PTR ".to_vec();
    rsdp.push(0); // checksum
    rsdp.extend_from_slice(b"TESTOE");
    rsdp.push(2); // revision
    rsdp.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    rsdp.extend_from_slice(&36u32.to_le_bytes());
    rsdp.extend_from_slice(&xsdt_phys.to_le_bytes());
    rsdp.extend_from_slice(&[0; 4]); // extended checksum + reserved
    let sum = |b: &[u8]| b.iter().fold(0u8, |a, &x| a.wrapping_add(x));
    rsdp[8] = 0u8.wrapping_sub(sum(&rsdp[..20]));
    rsdp[32] = 0u8.wrapping_sub(sum(&rsdp));
    mutate_rsdp(&mut rsdp);
    segments[0] = (0xf_0000, rsdp);
    segments[1] = (xsdt_phys, xsdt);
    (0xf_0000, segments)
}

fn discover_segments(rsdp: u64, segments: &[(u64, Vec<u8>)]) -> Result<AcpiInfo, FirmwareError> {
    let mem: Vec<(u64, &[u8])> = segments.iter().map(|(a, b)| (*a, b.as_slice())).collect();
    discover(rsdp, mem.as_slice())
}

#[test]
fn discover_through_an_xsdt() {
    let (rsdp, segments) = acpi2_image(|_| {});
    let info = discover_segments(rsdp, &segments).unwrap();
    assert_eq!(info.rsdp_revision, 2);
    assert_eq!(info.root_table, 0x1000);
    assert_eq!(info.tables.len(), 6);
    assert_eq!(info.dmar, Some(parse_dmar(VTD_DMAR).unwrap()));
    assert_eq!(info.ecam, q35_ecam());
    // Extended checksum wrong (the first 20 bytes still sum to zero).
    let (rsdp, segments) = acpi2_image(|r| r[33] = 1);
    assert_eq!(
        discover_segments(rsdp, &segments),
        Err(FirmwareError::BadChecksum {
            what: "RSDP extended"
        })
    );
    // Length smaller than the 2.0 structure, and absurdly large.
    for bad_length in [20u32, 0x10_0000] {
        let (rsdp, segments) = acpi2_image(|r| {
            r[20..24].copy_from_slice(&bad_length.to_le_bytes());
            r[8] = 0;
            let s = r[..20].iter().fold(0u8, |a, &x| a.wrapping_add(x));
            r[8] = 0u8.wrapping_sub(s);
        });
        assert!(matches!(
            discover_segments(rsdp, &segments),
            Err(FirmwareError::BadLength {
                what: "RSDP length",
                ..
            })
        ));
    }
    // No XSDT and no RSDT.
    let (rsdp, segments) = acpi2_image(|r| {
        r[24..32].fill(0);
        r[32] = 0;
        let s = r.iter().fold(0u8, |a, &x| a.wrapping_add(x));
        r[32] = 0u8.wrapping_sub(s);
    });
    assert_eq!(
        discover_segments(rsdp, &segments),
        Err(FirmwareError::Missing { what: "RSDT" })
    );
}

#[test]
fn find_rsdp_in_bios_area() {
    let (rsdp, segments) = load_image(VTD_IMAGE);
    let mut area = vec![0u8; 0x2_0000];
    let rsdp_bytes = &segments[0].1;
    let offset = (rsdp - 0xe_0000) as usize;
    area[offset..offset + rsdp_bytes.len()].copy_from_slice(rsdp_bytes);
    // A decoy with the signature but a wrong checksum comes first.
    area[0x100..0x108].copy_from_slice(b"RSD PTR ");
    assert_eq!(find_rsdp(&area), Some(offset));
    assert_eq!(find_rsdp(&area[..offset]), None);
    assert_eq!(find_rsdp(&[]), None);
}

#[test]
fn discover_rejects_bad_rsdp_and_root() {
    let (rsdp, mut segments) = load_image(VTD_IMAGE);
    let run = |segments: &Vec<(u64, Vec<u8>)>| {
        let mem: Vec<(u64, &[u8])> = segments.iter().map(|(a, b)| (*a, b.as_slice())).collect();
        discover(rsdp, mem.as_slice())
    };
    // Not an RSDP at all, and an unmapped address.
    assert_eq!(
        discover(rsdp + 16, [(rsdp, &segments[0].1[..])].as_slice()),
        Err(FirmwareError::Missing {
            what: "physical memory"
        })
    );
    let orig = segments.clone();
    segments[0].1[0] = b'X';
    assert_eq!(
        run(&segments),
        Err(FirmwareError::BadSignature { what: "RSDP" })
    );
    segments = orig.clone();
    segments[0].1[8] ^= 1; // checksum
    assert_eq!(
        run(&segments),
        Err(FirmwareError::BadChecksum { what: "RSDP" })
    );
    // RSDT length that is not header + whole entries (checksum kept valid).
    segments = orig.clone();
    let rsdt = &mut segments[1].1;
    rsdt[4] -= 1;
    fix_checksum(rsdt);
    assert!(matches!(
        run(&segments),
        Err(FirmwareError::BadLength {
            what: "RSDT/XSDT entries",
            ..
        })
    ));
    // An RSDT entry pointing nowhere.
    segments = orig.clone();
    let rsdt = &mut segments[1].1;
    rsdt[36..40].copy_from_slice(&0x1234_0000u32.to_le_bytes());
    fix_checksum(rsdt);
    assert_eq!(
        run(&segments),
        Err(FirmwareError::Missing {
            what: "physical memory"
        })
    );
    // A listed table whose length is absurd.
    segments = orig;
    let dmar = segments
        .iter_mut()
        .find(|(_, b)| b.starts_with(b"DMAR"))
        .unwrap();
    dmar.1[4..8].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    assert!(matches!(
        run(&segments),
        Err(FirmwareError::BadLength {
            what: "SDT length",
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------
// Hand-built tables.

/// A table with a correct header length and checksum around `body`.
fn table(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(1);
    t.push(0);
    t.extend_from_slice(b"TESTOE");
    t.extend_from_slice(b"TESTTBL ");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(b"TEST");
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    fix_checksum(&mut t);
    t
}

fn fix_checksum(t: &mut [u8]) {
    if t.len() < 10 {
        return;
    }
    t[9] = 0;
    let len = (u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize).min(t.len());
    let sum = t[..len].iter().fold(0u8, |a, &b| a.wrapping_add(b));
    t[9] = 0u8.wrapping_sub(sum);
}

fn mcfg(entries: &[(u64, u16, u8, u8)]) -> Vec<u8> {
    let mut body = vec![0u8; 8];
    for &(base, segment, start, end) in entries {
        body.extend_from_slice(&base.to_le_bytes());
        body.extend_from_slice(&segment.to_le_bytes());
        body.extend_from_slice(&[start, end, 0, 0, 0, 0]);
    }
    table(b"MCFG", &body)
}

#[test]
fn sdt_checks() {
    let good = mcfg(&[(0xb000_0000, 0, 0, 255)]);
    assert!(parse_mcfg(&good).is_ok());
    assert!(matches!(
        parse_mcfg(&good[..30]),
        Err(FirmwareError::Truncated {
            what: "SDT header",
            ..
        })
    ));
    assert!(matches!(
        parse_mcfg(&good[..good.len() - 1]),
        Err(FirmwareError::Truncated {
            what: "SDT length",
            ..
        })
    ));
    let mut bad = good.clone();
    bad[20] ^= 0x40;
    assert_eq!(
        parse_mcfg(&bad),
        Err(FirmwareError::BadChecksum { what: "SDT" })
    );
    assert_eq!(
        parse_mcfg(&table(b"MCFX", &[0; 8])),
        Err(FirmwareError::BadSignature {
            what: "SDT signature"
        })
    );
    let mut short = good.clone();
    short[4..8].copy_from_slice(&20u32.to_le_bytes());
    fix_checksum(&mut short);
    assert_eq!(
        parse_mcfg(&short),
        Err(FirmwareError::BadLength {
            what: "SDT length",
            offset: 4,
            length: 20
        })
    );
    // Trailing bytes beyond `length` are not part of the table.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0xff; 7]);
    assert_eq!(parse_mcfg(&padded), parse_mcfg(&good));
}

#[test]
fn malformed_mcfg() {
    assert!(matches!(
        parse_mcfg(&table(b"MCFG", &[0; 4])),
        Err(FirmwareError::Truncated { what: "MCFG", .. })
    ));
    assert!(matches!(
        parse_mcfg(&table(b"MCFG", &[0; 8 + 15])),
        Err(FirmwareError::BadLength {
            what: "MCFG entries",
            ..
        })
    ));
    assert!(matches!(
        parse_mcfg(&mcfg(&[(0, 0, 5, 4)])),
        Err(FirmwareError::Malformed {
            what: "MCFG bus range",
            ..
        })
    ));
    assert_eq!(
        parse_mcfg(&mcfg(&[(u64::MAX - 0xfffff, 0, 0, 0)])),
        Err(FirmwareError::Overflow { what: "MCFG entry" })
    );
    assert_eq!(
        parse_mcfg(&mcfg(&[
            (0xb000_0000, 0, 0, 127),
            (0xc000_0000, 0, 100, 255)
        ])),
        Err(FirmwareError::Overlap {
            what: "MCFG bus ranges"
        })
    );
    // Same buses on another segment are fine.
    assert_eq!(
        parse_mcfg(&mcfg(&[(0xb000_0000, 0, 0, 255), (0xc000_0000, 1, 0, 255)]))
            .unwrap()
            .len(),
        2
    );
    assert_eq!(parse_mcfg(&mcfg(&[])).unwrap(), vec![]);
}

fn scope(kind: u8, enumeration_id: u8, bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
    let mut s = vec![kind, (6 + 2 * path.len()) as u8, 0, 0, enumeration_id, bus];
    for &(d, f) in path {
        s.extend_from_slice(&[d, f]);
    }
    s
}

fn remapping(kind: u16, fixed: &[u8], scopes: &[u8]) -> Vec<u8> {
    let mut s = kind.to_le_bytes().to_vec();
    s.extend_from_slice(&((4 + fixed.len() + scopes.len()) as u16).to_le_bytes());
    s.extend_from_slice(fixed);
    s.extend_from_slice(scopes);
    s
}

fn drhd(flags: u8, segment: u16, base: u64, scopes: &[u8]) -> Vec<u8> {
    let mut fixed = vec![flags, 0];
    fixed.extend_from_slice(&segment.to_le_bytes());
    fixed.extend_from_slice(&base.to_le_bytes());
    remapping(0, &fixed, scopes)
}

fn rmrr(segment: u16, base: u64, limit: u64, scopes: &[u8]) -> Vec<u8> {
    let mut fixed = vec![0, 0];
    fixed.extend_from_slice(&segment.to_le_bytes());
    fixed.extend_from_slice(&base.to_le_bytes());
    fixed.extend_from_slice(&limit.to_le_bytes());
    remapping(1, &fixed, scopes)
}

fn dmar(structures: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![0x26, DmarFlags::INTR_REMAP | DmarFlags::X2APIC_OPT_OUT];
    body.extend_from_slice(&[0; 10]);
    for s in structures {
        body.extend_from_slice(s);
    }
    table(b"DMAR", &body)
}

#[test]
fn hand_built_dmar_with_every_structure() {
    let bridge_path = scope(2, 0, 0, &[(0x1c, 0), (0, 0)]);
    let atsr = remapping(2, &[Atsr::ALL_PORTS, 0, 0, 0], &[]);
    let mut rhsa_fixed = vec![0u8; 4];
    rhsa_fixed.extend_from_slice(&0xfed9_1000u64.to_le_bytes());
    rhsa_fixed.extend_from_slice(&3u32.to_le_bytes());
    let rhsa = remapping(3, &rhsa_fixed, &[]);
    let andd = remapping(4, &[0, 0, 0, 7], b"\\_SB.PCI0.UAR0\0");
    let satc = remapping(5, &[1, 0, 0, 0], &scope(1, 0, 0, &[(2, 0)]));
    let unknown = remapping(0x77, &[0xaa; 8], &[]);
    let t = dmar(&[
        drhd(
            0,
            0,
            0xfed9_0000,
            &[scope(1, 0, 0, &[(4, 0)]), bridge_path.clone()].concat(),
        ),
        drhd(
            Drhd::INCLUDE_PCI_ALL,
            0,
            0xfed9_1000,
            &scope(3, 2, 0xf0, &[(0x1f, 0)]),
        ),
        rmrr(0, 0x000e_0000, 0x000f_ffff, &scope(1, 0, 0, &[(0x14, 0)])),
        atsr,
        rhsa,
        andd,
        satc,
        unknown,
    ]);
    let d = parse_dmar(&t).unwrap();
    assert_eq!(d.address_width(), 39);
    assert!(d.flags.intr_remap() && d.flags.x2apic_opt_out());
    assert_eq!(d.drhds.len(), 2);
    assert_eq!(
        d.drhds[0].scopes[1].scope_type,
        DeviceScopeType::PciSubHierarchy
    );
    assert_eq!(d.drhds[0].scopes[1].bdf(), None);
    // 00:1c.0 is a bridge with secondary bus 3, so the path ends at 03:00.0.
    let resolved = d.drhds[0].scopes[1]
        .resolve(|bus, dev, func| ((bus, dev, func) == (0, 0x1c, 0)).then_some(3));
    assert_eq!(resolved, Some((3, 0, 0)));
    assert_eq!(d.drhds[0].scopes[1].resolve(|_, _, _| None), None);
    assert_eq!(d.drhds[1].scopes[0].scope_type, DeviceScopeType::IoApic);
    assert_eq!(d.drhds[1].scopes[0].enumeration_id, 2);
    assert_eq!(
        d.drhd_for(0, 0, 4, 0).map(|u| u.register_base),
        Some(0xfed9_0000)
    );
    assert_eq!(
        d.drhd_for(0, 0, 9, 0).map(|u| u.register_base),
        Some(0xfed9_1000)
    );
    assert_eq!(
        d.rmrrs,
        vec![Rmrr {
            segment: 0,
            base: 0xe_0000,
            limit: 0xf_ffff,
            scopes: vec![endpoint(0, 0x14, 0)]
        }]
    );
    assert_eq!(
        d.atsrs,
        vec![Atsr {
            flags: Atsr::ALL_PORTS,
            segment: 0,
            scopes: vec![]
        }]
    );
    assert_eq!(
        d.rhsas,
        vec![Rhsa {
            register_base: 0xfed9_1000,
            proximity_domain: 3
        }]
    );
    assert_eq!(
        d.andds,
        vec![Andd {
            device_number: 7,
            object_name: "\\_SB.PCI0.UAR0".into()
        }]
    );
    assert_eq!(
        d.satcs,
        vec![Satc {
            flags: 1,
            segment: 0,
            scopes: vec![endpoint(0, 2, 0)]
        }]
    );
    assert_eq!(d.unknown_types, vec![0x77]);
}

fn dmar_err(structures: &[Vec<u8>]) -> FirmwareError {
    parse_dmar(&dmar(structures)).unwrap_err()
}

#[test]
fn malformed_dmar() {
    let ok_drhd = drhd(0, 0, 0xfed9_0000, &scope(1, 0, 0, &[(4, 0)]));
    // Header cut before the reserved bytes end.
    assert!(matches!(
        parse_dmar(&table(b"DMAR", &[0x2f, 1, 0, 0])),
        Err(FirmwareError::Truncated { .. })
    ));
    // A zero-length structure would loop forever.
    let mut zero = ok_drhd.clone();
    zero[2..4].copy_from_slice(&0u16.to_le_bytes());
    assert_eq!(
        dmar_err(&[zero]),
        FirmwareError::BadLength {
            what: "DMAR structure",
            offset: 48,
            length: 0
        }
    );
    // Length 3 (< the 4-byte type/length header).
    let mut three = ok_drhd.clone();
    three[2..4].copy_from_slice(&3u16.to_le_bytes());
    assert!(matches!(
        dmar_err(&[three]),
        FirmwareError::BadLength {
            what: "DMAR structure",
            ..
        }
    ));
    // A structure claiming to run past the table.
    let mut long = ok_drhd.clone();
    long[2..4].copy_from_slice(&200u16.to_le_bytes());
    assert!(matches!(
        dmar_err(&[long]),
        FirmwareError::BadLength {
            what: "DMAR structure",
            ..
        }
    ));
    // A DRHD shorter than its fixed part.
    assert!(matches!(
        dmar_err(&[remapping(0, &[0; 8], &[])]),
        FirmwareError::BadLength {
            what: "DMAR DRHD",
            ..
        }
    ));
    // Device scopes: zero length, odd path length, running past the DRHD, impossible device number.
    let mut scope0 = scope(1, 0, 0, &[(4, 0)]);
    scope0[1] = 0;
    assert!(matches!(
        dmar_err(&[drhd(0, 0, 0x1000, &scope0)]),
        FirmwareError::BadLength {
            what: "DMAR device scope",
            ..
        }
    ));
    let mut odd = scope(1, 0, 0, &[(4, 0)]);
    odd[1] = 7;
    odd.push(0);
    assert!(matches!(
        dmar_err(&[drhd(0, 0, 0x1000, &odd)]),
        FirmwareError::BadLength {
            what: "DMAR device scope",
            ..
        }
    ));
    let mut past = scope(1, 0, 0, &[(4, 0)]);
    past[1] = 10;
    assert!(matches!(
        dmar_err(&[drhd(0, 0, 0x1000, &past)]),
        FirmwareError::BadLength {
            what: "DMAR device scope",
            ..
        }
    ));
    assert!(matches!(
        dmar_err(&[drhd(0, 0, 0x1000, &scope(1, 0, 0, &[(32, 0)]))]),
        FirmwareError::Malformed {
            what: "DMAR device scope path",
            ..
        }
    ));
    // RMRR: limit below base, unaligned base, overlapping regions.
    assert!(matches!(
        dmar_err(&[rmrr(0, 0x2000, 0x1fff, &[])]),
        FirmwareError::Malformed {
            what: "DMAR RMRR range",
            ..
        }
    ));
    assert!(matches!(
        dmar_err(&[rmrr(0, 0x2001, 0x2fff, &[])]),
        FirmwareError::Malformed {
            what: "DMAR RMRR range",
            ..
        }
    ));
    assert_eq!(
        dmar_err(&[
            rmrr(0, 0x1_0000, 0x1_ffff, &[]),
            rmrr(0, 0x1_f000, 0x2_ffff, &[])
        ]),
        FirmwareError::Overlap {
            what: "DMAR RMRR ranges"
        }
    );
    // DRHD register sets overlapping, wrapping, or two INCLUDE_PCI_ALL units in a segment.
    assert_eq!(
        dmar_err(&[drhd(0, 0, 0xfed9_0000, &[]), drhd(0, 1, 0xfed9_0000, &[])]),
        FirmwareError::Overlap {
            what: "DMAR DRHD register ranges"
        }
    );
    assert_eq!(
        dmar_err(&[drhd(0, 0, u64::MAX - 0xfff, &[])]),
        FirmwareError::Overflow { what: "DMAR DRHD" }
    );
    assert!(matches!(
        dmar_err(&[drhd(1, 0, 0x1000, &[]), drhd(1, 0, 0x2000, &[])]),
        FirmwareError::Malformed {
            what: "DMAR: two INCLUDE_PCI_ALL units in one segment",
            ..
        }
    ));
    // RHSA too short.
    assert!(matches!(
        dmar_err(&[remapping(3, &[0; 8], &[])]),
        FirmwareError::BadLength {
            what: "DMAR RHSA",
            ..
        }
    ));
}

/// IVHD builder: header per type, then raw device-entry bytes.
fn ivhd(kind: u8, device_id: u16, base: u64, entries: &[u8]) -> Vec<u8> {
    let header = if kind == 0x10 { 24 } else { 40 };
    let mut b = vec![kind, 0x10];
    b.extend_from_slice(&((header + entries.len()) as u16).to_le_bytes());
    b.extend_from_slice(&device_id.to_le_bytes());
    b.extend_from_slice(&0x40u16.to_le_bytes());
    b.extend_from_slice(&base.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&0x1f00u16.to_le_bytes());
    b.extend_from_slice(&0x44u32.to_le_bytes());
    if kind != 0x10 {
        b.extend_from_slice(&0x1234_5678_9abc_def0u64.to_le_bytes());
        b.extend_from_slice(&7u64.to_le_bytes());
    }
    b.extend_from_slice(entries);
    b
}

fn ivmd(kind: u8, flags: u8, device: u16, aux: u16, start: u64, length: u64) -> Vec<u8> {
    let mut b = vec![kind, flags, 32, 0];
    b.extend_from_slice(&device.to_le_bytes());
    b.extend_from_slice(&aux.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&start.to_le_bytes());
    b.extend_from_slice(&length.to_le_bytes());
    b
}

fn ivrs(blocks: &[Vec<u8>]) -> Vec<u8> {
    let mut body = 0x0000_2801u32.to_le_bytes().to_vec();
    body.extend_from_slice(&[0; 8]);
    for b in blocks {
        body.extend_from_slice(b);
    }
    table(b"IVRS", &body)
}

fn ivrs_err(blocks: &[Vec<u8>]) -> FirmwareError {
    parse_ivrs(&ivrs(blocks)).unwrap_err()
}

#[test]
fn hand_built_ivrs_with_every_entry_kind() {
    let mut entries = Vec::new();
    entries.extend_from_slice(&[0x01, 0, 0, DteSetting::LINT0_PASS]); // all
    entries.extend_from_slice(&[0x00, 0, 0, 0]); // padding
    entries.extend_from_slice(&[0x03, 0x00, 0x01, 0x05]); // range 0100..
    entries.extend_from_slice(&[0x04, 0xff, 0x01, 0x00]); // ..01ff
    entries.extend_from_slice(&[0x42, 0x10, 0x00, 0x00, 0, 0x18, 0x00, 0]); // 0010 aliased as 0018
    entries.extend_from_slice(&[0x43, 0x00, 0x03, 0x00, 0, 0x08, 0x03, 0]); // range 0300.. as 0308
    entries.extend_from_slice(&[0x04, 0x07, 0x03, 0x00]);
    entries.extend_from_slice(&[0x46, 0x20, 0x00, 0x00, 1, 0, 0, 0]); // 0020, ext 1
    entries.extend_from_slice(&[0x47, 0x00, 0x04, 0x00, 1, 0, 0, 0]); // range 0400.. ext 1
    entries.extend_from_slice(&[0x04, 0x0f, 0x04, 0x00]);
    entries.extend_from_slice(&[0x48, 0, 0, 0xd7, 8, 0xa0, 0x00, 2]); // HPET 8 as 00a0
    entries.extend_from_slice(&[0x7f, 1, 2, 3, 4, 5, 6, 7]); // reserved 8-byte type
    let mut hid = vec![0xf0, 0x05, 0x00, 0x00];
    hid.extend_from_slice(b"AMDI0020");
    hid.extend_from_slice(b"\0\0\0\0\0\0\0\0");
    hid.extend_from_slice(&[2, 3]);
    hid.extend_from_slice(b"ID0");
    entries.extend_from_slice(&hid);
    let t = ivrs(&[
        ivhd(0x40, 0x0002, 0xfd20_0000, &entries),
        ivmd(
            0x20,
            Ivmd::UNITY | Ivmd::IR | Ivmd::IW,
            0,
            0,
            0x1000_0000,
            0x1000,
        ),
        ivmd(0x21, Ivmd::EXCLUSION_RANGE, 0x0020, 0, 0x2000_0000, 0x2000),
        ivmd(0x22, Ivmd::UNITY, 0x0100, 0x01ff, 0x3000_0000, 0x3000),
        vec![0x99, 0, 8, 0, 0, 0, 0, 0], // unknown block type, skipped
    ]);
    let parsed = parse_ivrs(&t).unwrap();
    let h = &parsed.ivhds[0];
    assert_eq!(h.ivhd_type, IvhdType::Type40);
    assert_eq!((h.efr, h.efr2), (Some(0x1234_5678_9abc_def0), Some(7)));
    let targets: Vec<&DeviceTarget> = h.devices.iter().map(|d| &d.target).collect();
    assert_eq!(
        targets,
        vec![
            &DeviceTarget::All,
            &DeviceTarget::Range {
                start: 0x100,
                end: 0x1ff
            },
            &DeviceTarget::Device(0x10),
            &DeviceTarget::Range {
                start: 0x300,
                end: 0x307
            },
            &DeviceTarget::Device(0x20),
            &DeviceTarget::Range {
                start: 0x400,
                end: 0x40f
            },
            &DeviceTarget::Special {
                variety: SpecialVariety::Hpet,
                handle: 8,
                device_id: 0xa0
            },
            &DeviceTarget::AcpiHid {
                device_id: 5,
                hid: *b"AMDI0020",
                cid: [0; 8],
                uid: AcpiUid::String(b"ID0".to_vec())
            },
        ]
    );
    assert_eq!(h.devices[1].setting, DteSetting(0x05));
    assert_eq!(h.devices[2].alias, Some(0x18));
    assert_eq!(h.devices[3].alias, Some(0x308));
    assert_eq!(h.devices[4].extended, Some(1));
    assert_eq!(h.devices[5].extended, Some(1));
    assert_eq!(h.devices[6].setting, DteSetting(0xd7));
    assert_eq!(h.devices[6].setting.sys_mgt(), 1);
    assert_eq!(
        h.entry_for(0x150).map(|e| e.setting),
        Some(DteSetting(0x05))
    );
    assert_eq!(
        h.entry_for(0x999).map(|e| e.setting),
        Some(DteSetting(DteSetting::LINT0_PASS))
    );
    assert_eq!(
        parsed.ivmds,
        vec![
            Ivmd {
                target: IvmdTarget::All,
                flags: 7,
                start: 0x1000_0000,
                length: 0x1000
            },
            Ivmd {
                target: IvmdTarget::Device(0x20),
                flags: 8,
                start: 0x2000_0000,
                length: 0x2000
            },
            Ivmd {
                target: IvmdTarget::Range {
                    start: 0x100,
                    end: 0x1ff
                },
                flags: 1,
                start: 0x3000_0000,
                length: 0x3000
            },
        ]
    );
    assert_eq!(parsed.unknown_types, vec![0x99]);
}

#[test]
fn malformed_ivrs() {
    let sel = |id: u16| [0x02, id as u8, (id >> 8) as u8, 0];
    let good = ivhd(0x11, 8, 0xfed8_0000, &sel(0x20));
    assert!(parse_ivrs(&ivrs(core::slice::from_ref(&good))).is_ok());
    // Zero-length and too-short blocks, and a block past the table end.
    let mut zero = good.clone();
    zero[2..4].copy_from_slice(&0u16.to_le_bytes());
    assert_eq!(
        ivrs_err(&[zero]),
        FirmwareError::BadLength {
            what: "IVRS block",
            offset: 48,
            length: 0
        }
    );
    let mut long = good.clone();
    long[2..4].copy_from_slice(&500u16.to_le_bytes());
    assert!(matches!(
        ivrs_err(&[long]),
        FirmwareError::BadLength {
            what: "IVRS block",
            ..
        }
    ));
    let mut short = good.clone();
    short[2..4].copy_from_slice(&24u16.to_le_bytes());
    assert!(matches!(
        ivrs_err(&[short[..24].to_vec()]),
        FirmwareError::BadLength { what: "IVHD", .. }
    ));
    // Device entry cut in the middle.
    assert!(matches!(
        ivrs_err(&[ivhd(0x10, 8, 0x1000, &[0x42, 0, 0, 0])]),
        FirmwareError::Truncated {
            what: "IVHD device entry",
            ..
        }
    ));
    // Range entries: start without end, end without start, end before start, start inside a range,
    // something else between start and end.
    let range_err = |entries: &[u8]| ivrs_err(&[ivhd(0x10, 8, 0x1000, entries)]);
    assert!(matches!(
        range_err(&[3, 0, 1, 0]),
        FirmwareError::Malformed {
            what: "IVHD range without end",
            ..
        }
    ));
    assert!(matches!(
        range_err(&[4, 0, 1, 0]),
        FirmwareError::Malformed {
            what: "IVHD range entry",
            ..
        }
    ));
    assert!(matches!(
        range_err(&[3, 0, 2, 0, 4, 0, 1, 0]),
        FirmwareError::Malformed {
            what: "IVHD range entry",
            ..
        }
    ));
    assert!(matches!(
        range_err(&[3, 0, 1, 0, 3, 0, 2, 0]),
        FirmwareError::Malformed {
            what: "IVHD range entry",
            ..
        }
    ));
    assert!(matches!(
        range_err(&[3, 0, 1, 0, 2, 5, 0, 0, 4, 0, 2, 0]),
        FirmwareError::Malformed {
            what: "IVHD range entry",
            ..
        }
    ));
    // Overlapping DeviceIDs in one IVHD.
    assert_eq!(
        range_err(&[3, 0, 1, 0, 4, 0xff, 1, 0, 2, 0x80, 1, 0]),
        FirmwareError::Overlap {
            what: "IVHD device entries"
        }
    );
    // Unknown variable-length type, and an F0h entry outside a 40h IVHD.
    assert!(matches!(
        range_err(&[0x90, 0, 0, 0]),
        FirmwareError::Malformed {
            what: "IVHD device entry type",
            ..
        }
    ));
    // F0h whose UID runs past the block.
    let mut hid = vec![0xf0, 5, 0, 0];
    hid.extend_from_slice(&[0; 16]);
    hid.extend_from_slice(&[2, 200]);
    assert!(matches!(
        ivrs_err(&[ivhd(0x40, 8, 0x1000, &hid)]),
        FirmwareError::Truncated {
            what: "IVHD device entry",
            ..
        }
    ));
    // Base address 0, and two IVHDs of one type for the same IOMMU.
    assert!(matches!(
        ivrs_err(&[ivhd(0x10, 8, 0, &[])]),
        FirmwareError::Malformed {
            what: "IVHD base address",
            ..
        }
    ));
    assert_eq!(
        ivrs_err(&[ivhd(0x10, 8, 0x1000, &[]), ivhd(0x10, 8, 0x2000, &[])]),
        FirmwareError::Overlap {
            what: "IVHD blocks of one type"
        }
    );
    // IVMD: too short, address wrap, backwards device range.
    assert!(matches!(
        ivrs_err(&[vec![0x20, 0, 8, 0, 0, 0, 0, 0]]),
        FirmwareError::BadLength { what: "IVMD", .. }
    ));
    assert_eq!(
        ivrs_err(&[ivmd(0x21, 1, 8, 0, u64::MAX, 2)]),
        FirmwareError::Overflow { what: "IVMD" }
    );
    assert!(matches!(
        ivrs_err(&[ivmd(0x22, 1, 9, 8, 0, 2)]),
        FirmwareError::Malformed {
            what: "IVMD device range",
            ..
        }
    ));
}

// ---------------------------------------------------------------------------------
// Robustness: arbitrary and mutated tables never panic. Mutations re-fix the checksum
// so they reach the structure parsers instead of stopping at the checksum.

fn mutate(
    base: &[u8],
    truncate: usize,
    flips: &[(usize, u8)],
    field: (usize, u16),
    fix: bool,
) -> Vec<u8> {
    let mut d = base.to_vec();
    for &(at, xor) in flips {
        let at = at % d.len();
        d[at] ^= xor;
    }
    // Rewrite one 16-bit field at an even offset (structure lengths, counts, IDs).
    let at = (field.0 % (d.len() / 2)) * 2;
    d[at..at + 2].copy_from_slice(&field.1.to_le_bytes());
    d.truncate(d.len() - truncate % d.len());
    if fix {
        // Keep the header consistent with the new size so the body parsers are reached.
        if d.len() >= 8 && !truncate.is_multiple_of(base.len()) {
            let len = d.len() as u32;
            d[4..8].copy_from_slice(&len.to_le_bytes());
        }
        fix_checksum(&mut d);
    }
    d
}

/// (truncate, byte flips, one rewritten 16-bit field, re-fix the checksum).
type Mutation = (usize, Vec<(usize, u8)>, (usize, u16), bool);

fn any_mutation() -> impl Strategy<Value = Mutation> {
    (
        prop_oneof![Just(0usize), any::<usize>()],
        proptest::collection::vec((any::<usize>(), 1..=255u8), 0..6),
        (
            any::<usize>(),
            prop_oneof![any::<u16>(), 0..16u16, Just(u16::MAX)],
        ),
        prop_oneof![Just(true), Just(true), Just(false)],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::test_cases()))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_mcfg(&data);
        let _ = parse_dmar(&data);
        let _ = parse_ivrs(&data);
        let _ = parse_madt(&data);
        let _ = find_rsdp(&data);
    }

    #[test]
    fn arbitrary_bodies_behind_valid_headers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_mcfg(&table(b"MCFG", &body));
        let _ = parse_dmar(&table(b"DMAR", &body));
        let _ = parse_ivrs(&table(b"IVRS", &body));
        let _ = parse_madt(&table(b"APIC", &body));
    }

    #[test]
    fn mutated_madt_never_panics((truncate, flips, field, fix) in any_mutation()) {
        let _ = parse_madt(&mutate(VTD_APIC, truncate, &flips, field, fix));
    }

    #[test]
    fn mutated_dmar_never_panics((truncate, flips, field, fix) in any_mutation()) {
        if let Ok(d) = parse_dmar(&mutate(VTD_DMAR, truncate, &flips, field, fix)) {
            for drhd in &d.drhds {
                prop_assert!(drhd.register_base.checked_add(drhd.register_size()).is_some());
            }
            for r in &d.rmrrs {
                prop_assert!(r.base <= r.limit);
            }
        }
    }

    #[test]
    fn mutated_ivrs_never_panics((truncate, flips, field, fix) in any_mutation()) {
        if let Ok(ivrs) = parse_ivrs(&mutate(AMD_IVRS, truncate, &flips, field, fix)) {
            for h in &ivrs.ivhds {
                for d in &h.devices {
                    if let DeviceTarget::Range { start, end } = d.target {
                        prop_assert!(start <= end);
                    }
                }
            }
        }
    }

    #[test]
    fn mutated_mcfg_never_panics((truncate, flips, field, fix) in any_mutation()) {
        if let Ok(regions) = parse_mcfg(&mutate(VTD_MCFG, truncate, &flips, field, fix)) {
            for r in regions {
                prop_assert!(r.bus_start <= r.bus_end);
                prop_assert!(r.config_address(r.bus_end, 31, 7).is_some());
            }
        }
    }

    #[test]
    fn mutated_images_never_panic(
        amd in any::<bool>(),
        segment in any::<usize>(),
        (truncate, flips, field, fix) in any_mutation(),
    ) {
        let (rsdp, mut segments) = load_image(if amd { AMD_IMAGE } else { VTD_IMAGE });
        let which = segment % segments.len();
        let mutated = mutate(&segments[which].1, truncate, &flips, field, fix && which > 0);
        segments[which].1 = mutated;
        let mem: Vec<(u64, &[u8])> = segments.iter().map(|(a, b)| (*a, b.as_slice())).collect();
        let _ = discover(rsdp, mem.as_slice());
    }
}

/// Guards the fuzzing harness itself: mutated fixtures must get past the header and
/// checksum often enough that the structure parsers are really exercised.
#[test]
fn mutations_reach_the_structure_parsers() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeSet;
    use std::string::ToString;
    let mut runner = TestRunner::deterministic();
    for (name, base) in [("dmar", VTD_DMAR), ("ivrs", AMD_IVRS)] {
        let mut accepted = 0;
        let mut kinds = BTreeSet::new();
        for _ in 0..2000 {
            let (truncate, flips, field, fix) =
                any_mutation().new_tree(&mut runner).unwrap().current();
            let d = mutate(base, truncate, &flips, field, fix);
            let result = if name == "dmar" {
                parse_dmar(&d).map(|_| ())
            } else {
                parse_ivrs(&d).map(|_| ())
            };
            match result {
                Ok(()) => accepted += 1,
                Err(e) => {
                    kinds.insert(
                        std::format!("{e:?}")
                            .split(' ')
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            }
        }
        assert!(
            accepted > 100,
            "{name}: only {accepted} of 2000 mutations parsed"
        );
        assert!(kinds.len() >= 5, "{name}: error kinds seen {kinds:?}");
    }
}

// ---------------------------------------------------------------------------------
// Round trips: a model of a table, encoded by hand, must parse back to the model.

fn encode_scope(s: &DeviceScope) -> Vec<u8> {
    let kind = match s.scope_type {
        DeviceScopeType::PciEndpoint => 1,
        DeviceScopeType::PciSubHierarchy => 2,
        DeviceScopeType::IoApic => 3,
        DeviceScopeType::MsiCapableHpet => 4,
        DeviceScopeType::AcpiNamespaceDevice => 5,
        DeviceScopeType::Reserved(r) => r,
    };
    let mut b = vec![
        kind,
        (6 + 2 * s.path.len()) as u8,
        s.flags,
        0,
        s.enumeration_id,
        s.start_bus,
    ];
    for hop in &s.path {
        b.extend_from_slice(&[hop.device, hop.function]);
    }
    b
}

fn scope_strategy() -> impl Strategy<Value = DeviceScope> {
    (
        prop_oneof![1..=5u8, 6..=255u8].prop_map(DeviceScopeType::from_raw),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        proptest::collection::vec(
            (0..32u8, 0..8u8).prop_map(|(device, function)| PathEntry { device, function }),
            0..4,
        ),
    )
        .prop_map(
            |(scope_type, flags, enumeration_id, start_bus, path)| DeviceScope {
                scope_type,
                flags,
                enumeration_id,
                start_bus,
                path,
            },
        )
}

/// Model of a DMAR: DRHDs on distinct pages, RMRRs on disjoint page ranges.
fn dmar_model() -> impl Strategy<Value = (u8, u8, Vec<Drhd>, Vec<Rmrr>)> {
    let drhds = proptest::collection::vec(
        (
            any::<u16>(),
            0..4u8,
            proptest::collection::vec(scope_strategy(), 0..4),
        ),
        0..4,
    )
    .prop_map(|units| {
        units
            .into_iter()
            .enumerate()
            .map(|(i, (segment, size, scopes))| Drhd {
                // Only the last unit may cover the rest of its segment.
                flags: 0,
                size,
                segment,
                register_base: 0xfed0_0000 + (i as u64) * 0x10_0000,
                scopes,
            })
            .collect::<Vec<_>>()
    });
    let rmrrs = proptest::collection::vec(
        (1..16u64, proptest::collection::vec(scope_strategy(), 0..3)),
        0..4,
    )
    .prop_map(|regions| {
        regions
            .into_iter()
            .enumerate()
            .map(|(i, (pages, scopes))| {
                let base = 0x1000_0000 + (i as u64) * 0x10_0000;
                Rmrr {
                    segment: 0,
                    base,
                    limit: base + pages * 0x1000 - 1,
                    scopes,
                }
            })
            .collect::<Vec<_>>()
    });
    (any::<u8>(), 0..8u8, drhds, rmrrs)
}

fn encode_dmar(haw: u8, flags: u8, drhds: &[Drhd], rmrrs: &[Rmrr]) -> Vec<u8> {
    let mut body = vec![haw, flags];
    body.extend_from_slice(&[0; 10]);
    for d in drhds {
        let scopes: Vec<u8> = d.scopes.iter().flat_map(encode_scope).collect();
        let mut s = drhd(d.flags, d.segment, d.register_base, &scopes);
        s[5] = d.size;
        body.extend_from_slice(&s);
    }
    for r in rmrrs {
        let scopes: Vec<u8> = r.scopes.iter().flat_map(encode_scope).collect();
        body.extend_from_slice(&rmrr(r.segment, r.base, r.limit, &scopes));
    }
    table(b"DMAR", &body)
}

/// Model of one IVHD's device entries on disjoint DeviceIDs.
fn ivhd_entries_model() -> impl Strategy<Value = Vec<DeviceEntry>> {
    proptest::collection::btree_set(any::<u16>(), 0..24)
        .prop_flat_map(|ids| {
            let ids: Vec<u16> = ids.into_iter().collect();
            let n = ids.len();
            (
                Just(ids),
                proptest::collection::vec((0..6u8, any::<u8>(), any::<u16>(), any::<u32>()), n),
            )
        })
        .prop_map(|(ids, shapes)| {
            let mut entries = Vec::new();
            let mut i = 0;
            while i < ids.len() {
                let (shape, setting, alias, ext) = shapes[i];
                let setting = DteSetting(setting);
                // Shapes 3..6 take this id and the next one as a range when there is one.
                let range_end = if shape >= 3 {
                    ids.get(i + 1).copied()
                } else {
                    None
                };
                let target = match range_end {
                    Some(end) => DeviceTarget::Range { start: ids[i], end },
                    None => DeviceTarget::Device(ids[i]),
                };
                let (alias, extended) = match shape % 3 {
                    1 => (Some(alias), None),
                    2 => (None, Some(ext)),
                    _ => (None, None),
                };
                entries.push(DeviceEntry {
                    target,
                    setting,
                    alias,
                    extended,
                });
                i += if range_end.is_some() { 2 } else { 1 };
            }
            entries
        })
}

fn encode_entries(entries: &[DeviceEntry]) -> Vec<u8> {
    let mut b = Vec::new();
    for e in entries {
        let (start, end) = match e.target {
            DeviceTarget::Device(id) => (id, None),
            DeviceTarget::Range { start, end } => (start, Some(end)),
            _ => unreachable!("model only makes devices and ranges"),
        };
        let [lo, hi] = start.to_le_bytes();
        let kind_offset = if end.is_some() { 1 } else { 0 };
        match (e.alias, e.extended) {
            (Some(alias), _) => {
                let [alo, ahi] = alias.to_le_bytes();
                b.extend_from_slice(&[0x42 + kind_offset, lo, hi, e.setting.0, 0, alo, ahi, 0]);
            }
            (None, Some(ext)) => {
                b.extend_from_slice(&[0x46 + kind_offset, lo, hi, e.setting.0]);
                b.extend_from_slice(&ext.to_le_bytes());
            }
            (None, None) => b.extend_from_slice(&[0x02 + kind_offset, lo, hi, e.setting.0]),
        }
        if let Some(end) = end {
            let [elo, ehi] = end.to_le_bytes();
            b.extend_from_slice(&[0x04, elo, ehi, 0]);
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::test_cases()))]

    #[test]
    fn dmar_round_trips((haw, flags, drhds, rmrrs) in dmar_model()) {
        let parsed = parse_dmar(&encode_dmar(haw, flags, &drhds, &rmrrs)).unwrap();
        prop_assert_eq!(parsed.host_address_width, haw);
        prop_assert_eq!(parsed.flags, DmarFlags(flags));
        prop_assert_eq!(parsed.drhds, drhds);
        prop_assert_eq!(parsed.rmrrs, rmrrs);
    }

    #[test]
    fn ivhd_device_entries_round_trip(entries in ivhd_entries_model(), kind in prop_oneof![Just(0x10u8), Just(0x11), Just(0x40)]) {
        let parsed = parse_ivrs(&ivrs(&[ivhd(kind, 2, 0xfed8_0000, &encode_entries(&entries))])).unwrap();
        prop_assert_eq!(&parsed.ivhds[0].devices, &entries);
        // entry_for agrees with a linear scan of the model.
        for e in &entries {
            let probe = match e.target { DeviceTarget::Device(id) | DeviceTarget::Range { end: id, .. } => id, _ => 0 };
            prop_assert_eq!(parsed.ivhds[0].entry_for(probe), Some(e));
        }
    }

    #[test]
    fn mcfg_round_trips(entries in proptest::collection::vec((0..0x100u64, any::<u16>(), any::<u8>(), any::<u8>()), 0..8)) {
        // One entry per segment, so bus ranges never overlap.
        let mut seen = std::collections::BTreeSet::new();
        let model: Vec<EcamRegion> = entries
            .into_iter()
            .filter(|e| seen.insert(e.1))
            .map(|(page, segment, a, b)| EcamRegion { base: page << 28, segment, bus_start: a.min(b), bus_end: a.max(b) })
            .collect();
        let raw: Vec<(u64, u16, u8, u8)> = model.iter().map(|r| (r.base, r.segment, r.bus_start, r.bus_end)).collect();
        prop_assert_eq!(parse_mcfg(&mcfg(&raw)).unwrap(), model);
    }
}
