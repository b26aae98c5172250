//! ACPI 6.5 §5.2.6 System Description Table header, shared by every table here.

use crate::FirmwareError;
use crate::bytes::{bytes_at, le32, u8_at};

/// ACPI 6.5 §5.2.6: the header is 36 bytes.
pub const SDT_HEADER_SIZE: usize = 36;

pub(crate) const SIGNATURE: usize = 0;
pub(crate) const LENGTH: usize = 4;
const REVISION: usize = 8;
const CHECKSUM: usize = 9;
const OEM_ID: usize = 10;
const OEM_TABLE_ID: usize = 16;
const OEM_REVISION: usize = 24;
const CREATOR_ID: usize = 28;
const CREATOR_REVISION: usize = 32;

/// ACPI 6.5 §5.2.6 System Description Table Header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdtHeader {
    /// Signature.
    pub signature: [u8; 4],
    /// Length of the whole table in bytes, header included.
    pub length: u32,
    /// Revision of the table's format.
    pub revision: u8,
    /// Makes the whole table sum to zero.
    pub checksum: u8,
    /// OEM ID.
    pub oem_id: [u8; 6],
    /// OEM table ID.
    pub oem_table_id: [u8; 8],
    /// OEM revision.
    pub oem_revision: u32,
    /// ID of the tool that made the table.
    pub creator_id: [u8; 4],
    /// Its revision.
    pub creator_revision: u32,
}

impl SdtHeader {
    /// Decodes the 36-byte header at the start of `bytes` (no length or checksum check).
    pub fn parse(bytes: &[u8]) -> Result<Self, FirmwareError> {
        let t = |offset| FirmwareError::Truncated {
            what: "SDT header",
            offset,
        };
        Ok(Self {
            signature: bytes_at(bytes, SIGNATURE).ok_or(t(SIGNATURE))?,
            length: le32(bytes, LENGTH).ok_or(t(LENGTH))?,
            revision: u8_at(bytes, REVISION).ok_or(t(REVISION))?,
            checksum: u8_at(bytes, CHECKSUM).ok_or(t(CHECKSUM))?,
            oem_id: bytes_at(bytes, OEM_ID).ok_or(t(OEM_ID))?,
            oem_table_id: bytes_at(bytes, OEM_TABLE_ID).ok_or(t(OEM_TABLE_ID))?,
            oem_revision: le32(bytes, OEM_REVISION).ok_or(t(OEM_REVISION))?,
            creator_id: bytes_at(bytes, CREATOR_ID).ok_or(t(CREATOR_ID))?,
            creator_revision: le32(bytes, CREATOR_REVISION).ok_or(t(CREATOR_REVISION))?,
        })
    }
}

/// Checks a whole table: header present, expected signature, `length` within `bytes`
/// and at least the header, and all `length` bytes summing to zero (§5.2.6
/// `Checksum`). Returns the header and exactly the table's bytes (`bytes` may be longer).
pub fn checked_table<'a>(
    bytes: &'a [u8],
    signature: &[u8; 4],
) -> Result<(SdtHeader, &'a [u8]), FirmwareError> {
    let header = SdtHeader::parse(bytes)?;
    if &header.signature != signature {
        return Err(FirmwareError::BadSignature {
            what: "SDT signature",
        });
    }
    let length = header.length as usize;
    if length < SDT_HEADER_SIZE {
        return Err(FirmwareError::BadLength {
            what: "SDT length",
            offset: LENGTH,
            length,
        });
    }
    let table = bytes.get(..length).ok_or(FirmwareError::Truncated {
        what: "SDT length",
        offset: bytes.len(),
    })?;
    if table.iter().fold(0u8, |acc, &b| acc.wrapping_add(b)) != 0 {
        return Err(FirmwareError::BadChecksum { what: "SDT" });
    }
    Ok((header, table))
}
