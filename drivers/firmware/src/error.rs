//! The one error type of every parser in this crate.

use core::fmt;

/// Why a firmware table was rejected. `what` names the structure or field at fault and
/// `offset` is a byte offset into the table (or DTB) being parsed, for diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareError {
    /// The input ends before a structure that must be there.
    Truncated {
        /// The structure or field at fault.
        what: &'static str,
        /// Byte offset into the input.
        offset: usize,
    },
    /// A magic number or signature does not match (DTB magic, ACPI signature, RSDP).
    BadSignature {
        /// The structure or field at fault.
        what: &'static str,
    },
    /// The checksum of an ACPI structure does not sum to zero.
    BadChecksum {
        /// The structure or field at fault.
        what: &'static str,
    },
    /// A length or count field is too small, too large, or not a multiple of the unit.
    BadLength {
        /// The structure or field at fault.
        what: &'static str,
        /// Byte offset into the input.
        offset: usize,
        /// The length found.
        length: usize,
    },
    /// A structure is present but its content violates the spec.
    Malformed {
        /// The structure or field at fault.
        what: &'static str,
        /// Byte offset into the input.
        offset: usize,
    },
    /// A format version this parser does not understand.
    UnsupportedVersion {
        /// The structure or field at fault.
        what: &'static str,
        /// The version found.
        version: u32,
    },
    /// An address plus a size, or a base plus a count, wraps around.
    Overflow {
        /// The structure or field at fault.
        what: &'static str,
    },
    /// Two ranges that must be disjoint overlap.
    Overlap {
        /// The structure or field at fault.
        what: &'static str,
    },
    /// A node nests deeper than the parser allows.
    TooDeep {
        /// The parser's limit.
        limit: usize,
    },
    /// More items than the parser allows (keeps work on hostile input bounded).
    TooMany {
        /// The structure or field at fault.
        what: &'static str,
        /// The parser's limit.
        limit: usize,
    },
    /// A table or node that the caller needs does not exist.
    Missing {
        /// The structure or field at fault.
        what: &'static str,
    },
}

impl fmt::Display for FirmwareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { what, offset } => {
                write!(f, "{what}: truncated at offset {offset:#x}")
            }
            Self::BadSignature { what } => write!(f, "{what}: bad signature"),
            Self::BadChecksum { what } => write!(f, "{what}: bad checksum"),
            Self::BadLength {
                what,
                offset,
                length,
            } => {
                write!(f, "{what}: bad length {length:#x} at offset {offset:#x}")
            }
            Self::Malformed { what, offset } => {
                write!(f, "{what}: malformed at offset {offset:#x}")
            }
            Self::UnsupportedVersion { what, version } => {
                write!(f, "{what}: unsupported version {version}")
            }
            Self::Overflow { what } => write!(f, "{what}: address arithmetic overflows"),
            Self::Overlap { what } => write!(f, "{what}: overlapping ranges"),
            Self::TooDeep { limit } => write!(f, "device tree nests deeper than {limit}"),
            Self::TooMany { what, limit } => write!(f, "{what}: more than {limit}"),
            Self::Missing { what } => write!(f, "{what}: not present"),
        }
    }
}

impl core::error::Error for FirmwareError {}
