//! ACPI: RSDP → RSDT/XSDT walk (ACPI 6.5 §5.2.5–§5.2.8) and the tables an IOMMU
//! kernel needs: MCFG (PCI Firmware Spec 3.3 §4.1.2), DMAR (Intel VT-d spec ch. 8) and
//! IVRS (AMD IOMMU spec §5.2), plus the MADT (ACPI 6.5 §5.2.12) for the I/O APICs.
//!
//! The pure parsers take a whole table (header included) and verify its checksum;
//! [`discover`] reads the tables out of physical memory through a [`PhysMemory`].

pub mod dmar;
pub mod fadt;
pub mod ivrs;
pub mod madt;
pub mod mcfg;
mod sdt;

use alloc::vec;
use alloc::vec::Vec;

pub use dmar::{Dmar, parse_dmar};
pub use fadt::{Fadt, parse_fadt};
pub use ivrs::{Ivrs, parse_ivrs};
pub use madt::{Madt, parse_madt};
pub use mcfg::{EcamRegion, parse_mcfg};
pub use sdt::{SDT_HEADER_SIZE, SdtHeader, checked_table};

use crate::FirmwareError;
use crate::bytes::{le32, le64, u8_at};

/// How [`discover`] reads physical memory: the kernel reads through its identity map
/// ([`IdentityMapped`]), host tests through a memory image.
pub trait PhysMemory {
    /// Copies `buf.len()` bytes from physical address `phys` into `buf`; fails if any
    /// of it is not readable memory.
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), FirmwareError>;
}

/// Physical memory mapped at a fixed virtual offset (0 for an identity map).
#[derive(Debug, Clone, Copy)]
pub struct IdentityMapped {
    virt_offset: u64,
    /// Only physical addresses below this are read.
    limit: u64,
}

impl IdentityMapped {
    /// # Safety
    /// Every physical address in `0..limit` must be mapped readable at virtual address
    /// `phys + virt_offset` for as long as this value is used. Reads go only where the
    /// RSDP and the tables point; since corrupt tables may point anywhere below
    /// `limit`, plain byte loads from any of it must be harmless (no read-sensitive
    /// MMIO, or a `limit` that excludes it).
    pub unsafe fn new(virt_offset: u64, limit: u64) -> Self {
        Self { virt_offset, limit }
    }
}

impl PhysMemory for IdentityMapped {
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), FirmwareError> {
        let end = phys
            .checked_add(buf.len() as u64)
            .ok_or(FirmwareError::Overflow {
                what: "physical read",
            })?;
        if end > self.limit {
            return Err(FirmwareError::Missing {
                what: "physical memory",
            });
        }
        let virt = phys
            .checked_add(self.virt_offset)
            .ok_or(FirmwareError::Overflow {
                what: "physical read",
            })?;
        let virt = usize::try_from(virt).map_err(|_| FirmwareError::Overflow {
            what: "physical read",
        })?;
        // SAFETY: `phys..end` lies below `limit`, which the constructor's contract makes
        // readable, side-effect-free memory at `phys + virt_offset`; `buf` is a distinct
        // Rust allocation, so the ranges cannot overlap. Byte copies need no alignment.
        unsafe { core::ptr::copy_nonoverlapping(virt as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}

/// Reads a byte slice of the given physical range (used by tests and small images).
impl PhysMemory for [(u64, &[u8])] {
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), FirmwareError> {
        for &(base, bytes) in self {
            let Some(offset) = phys.checked_sub(base) else {
                continue;
            };
            let Ok(offset) = usize::try_from(offset) else {
                continue;
            };
            if let Some(src) = crate::bytes::slice(bytes, offset, buf.len()) {
                buf.copy_from_slice(src);
                return Ok(());
            }
        }
        Err(FirmwareError::Missing {
            what: "physical memory",
        })
    }
}

/// ACPI 6.5 §5.2.5.3 RSDP structure offsets.
mod rsdp {
    pub const SIGNATURE: &[u8; 8] = b"RSD PTR ";
    /// Revision 0 (ACPI 1.0) covers only the first 20 bytes.
    pub const V1_SIZE: usize = 20;
    pub const V2_SIZE: usize = 36;
    /// Later revisions may grow the structure; anything beyond a page is corrupt.
    pub const MAX_SIZE: usize = 4096;
    pub const REVISION: usize = 15;
    pub const RSDT_ADDRESS: usize = 16;
    pub const LENGTH: usize = 20;
    pub const XSDT_ADDRESS: usize = 24;
}

/// Tables larger than this are refused rather than copied (the largest real DMAR/IVRS
/// tables are a few KiB; a DSDT is never read here).
pub const MAX_TABLE_SIZE: usize = 1 << 20;

/// A table listed by the RSDT/XSDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableInfo {
    /// The table's signature.
    pub signature: [u8; 4],
    /// Where it is.
    pub phys: u64,
    /// Its length.
    pub length: u32,
}

/// What [`discover`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiInfo {
    /// 0: ACPI 1.0 (RSDT); 2: XSDT.
    pub rsdp_revision: u8,
    /// Physical address of the root table walked (XSDT when present, else RSDT).
    pub root_table: u64,
    /// Every table the RSDT/XSDT lists.
    pub tables: Vec<TableInfo>,
    /// MCFG: PCI configuration windows.
    pub ecam: Vec<EcamRegion>,
    /// DMAR: Intel VT-d.
    pub dmar: Option<Dmar>,
    /// IVRS: AMD-Vi.
    pub ivrs: Option<Ivrs>,
    /// FADT: power management (the S5 sleep type).
    pub fadt: Option<Fadt>,
    /// MADT: the interrupt controllers.
    pub madt: Option<Madt>,
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, &b| acc.wrapping_add(b))
}

fn read_vec(
    mem: &(impl PhysMemory + ?Sized),
    phys: u64,
    len: usize,
) -> Result<Vec<u8>, FirmwareError> {
    let mut buf = vec![0u8; len];
    mem.read(phys, &mut buf)?;
    Ok(buf)
}

/// Reads a whole table: its header first to learn and bound the length.
fn read_table(mem: &(impl PhysMemory + ?Sized), phys: u64) -> Result<Vec<u8>, FirmwareError> {
    let header = read_vec(mem, phys, SDT_HEADER_SIZE)?;
    let length = le32(&header, sdt::LENGTH).ok_or(FirmwareError::Truncated {
        what: "SDT header",
        offset: 0,
    })? as usize;
    if !(SDT_HEADER_SIZE..=MAX_TABLE_SIZE).contains(&length) {
        return Err(FirmwareError::BadLength {
            what: "SDT length",
            offset: sdt::LENGTH,
            length,
        });
    }
    read_vec(mem, phys, length)
}

/// Validates the RSDP at `rsdp_phys` and returns (revision, root table address, entry size).
fn read_rsdp(
    mem: &(impl PhysMemory + ?Sized),
    rsdp_phys: u64,
) -> Result<(u8, u64, usize), FirmwareError> {
    let v1 = read_vec(mem, rsdp_phys, rsdp::V1_SIZE)?;
    if &v1[..8] != rsdp::SIGNATURE {
        return Err(FirmwareError::BadSignature { what: "RSDP" });
    }
    if sum(&v1) != 0 {
        return Err(FirmwareError::BadChecksum { what: "RSDP" });
    }
    let revision = u8_at(&v1, rsdp::REVISION).unwrap_or(0);
    let rsdt = le32(&v1, rsdp::RSDT_ADDRESS).map(u64::from).unwrap_or(0);
    if revision >= 2 {
        let v2 = read_vec(mem, rsdp_phys, rsdp::V2_SIZE)?;
        let length = le32(&v2, rsdp::LENGTH).unwrap_or(0) as usize;
        if !(rsdp::V2_SIZE..=rsdp::MAX_SIZE).contains(&length) {
            return Err(FirmwareError::BadLength {
                what: "RSDP length",
                offset: rsdp::LENGTH,
                length,
            });
        }
        // ACPI 6.5 §5.2.5.3: the extended checksum covers the whole structure.
        if sum(&read_vec(mem, rsdp_phys, length)?) != 0 {
            return Err(FirmwareError::BadChecksum {
                what: "RSDP extended",
            });
        }
        let xsdt = le64(&v2, rsdp::XSDT_ADDRESS).unwrap_or(0);
        if xsdt != 0 {
            return Ok((revision, xsdt, 8));
        }
    }
    if rsdt == 0 {
        return Err(FirmwareError::Missing { what: "RSDT" });
    }
    Ok((revision, rsdt, 4))
}

/// Finds and parses the IOMMU-relevant tables starting from the RSDP's physical address.
///
/// Only the first table of each signature is parsed. A table that fails to parse
/// fails discovery: a kernel must not guess at IOMMU topology.
pub fn discover(
    rsdp_phys: u64,
    mem: &(impl PhysMemory + ?Sized),
) -> Result<AcpiInfo, FirmwareError> {
    let (rsdp_revision, root_table, entry_size) = read_rsdp(mem, rsdp_phys)?;
    let root_signature = if entry_size == 8 { b"XSDT" } else { b"RSDT" };
    let root = read_table(mem, root_table)?;
    let (_, root) = checked_table(&root, root_signature)?;
    let entries = &root[SDT_HEADER_SIZE..];
    if !entries.len().is_multiple_of(entry_size) {
        return Err(FirmwareError::BadLength {
            what: "RSDT/XSDT entries",
            offset: SDT_HEADER_SIZE,
            length: entries.len(),
        });
    }
    let mut info = AcpiInfo {
        rsdp_revision,
        root_table,
        tables: Vec::new(),
        ecam: Vec::new(),
        dmar: None,
        ivrs: None,
        fadt: None,
        madt: None,
    };
    let mut have_mcfg = false;
    for (i, entry) in entries.chunks_exact(entry_size).enumerate() {
        let phys = if entry_size == 8 {
            le64(entry, 0)
        } else {
            le32(entry, 0).map(u64::from)
        }
        .ok_or(FirmwareError::Truncated {
            what: "RSDT/XSDT entry",
            offset: SDT_HEADER_SIZE + i * entry_size,
        })?;
        let header = read_vec(mem, phys, SDT_HEADER_SIZE)?;
        let header = SdtHeader::parse(&header)?;
        info.tables.push(TableInfo {
            signature: header.signature,
            phys,
            length: header.length,
        });
        match &header.signature {
            b"MCFG" if !have_mcfg => {
                info.ecam = parse_mcfg(&read_table(mem, phys)?)?;
                have_mcfg = true;
            }
            b"DMAR" if info.dmar.is_none() => {
                info.dmar = Some(parse_dmar(&read_table(mem, phys)?)?)
            }
            b"FACP" if info.fadt.is_none() => {
                info.fadt = Some(parse_fadt(&read_table(mem, phys)?)?)
            }
            b"IVRS" if info.ivrs.is_none() => {
                info.ivrs = Some(parse_ivrs(&read_table(mem, phys)?)?)
            }
            b"APIC" if info.madt.is_none() => {
                info.madt = Some(parse_madt(&read_table(mem, phys)?)?)
            }
            _ => {}
        }
    }
    Ok(info)
}

/// Scans `area` (the BIOS read-only area 0xE0000–0xFFFFF, ACPI 6.5 §5.2.5.1) for an
/// RSDP on a 16-byte boundary with a valid checksum; returns its offset in `area`.
pub fn find_rsdp(area: &[u8]) -> Option<usize> {
    (0..area.len().saturating_sub(rsdp::V1_SIZE - 1))
        .step_by(16)
        .find(|&offset| {
            let candidate = &area[offset..offset + rsdp::V1_SIZE];
            &candidate[..8] == rsdp::SIGNATURE && sum(candidate) == 0
        })
}

#[cfg(test)]
mod tests;
