//! Errors of the page-table operations. Every error leaves the tables exactly as they were.

use core::fmt;

/// Why a format configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The number of levels is not one the format defines.
    Levels,
    /// The input (IOVA) size is outside what the format and granule can translate.
    InputSize,
    /// The output (physical) address size is outside what the format can encode.
    OutputSize,
}

/// Why `map` refused; the tables are unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// `len` was zero.
    ZeroLength,
    /// `iova`, `phys` or `len` is not a multiple of the format's smallest page.
    Misaligned,
    /// The IOVA range leaves the format's input address space (or wraps).
    IovaOutOfRange,
    /// The physical range exceeds the configured output address size (or wraps).
    PhysOutOfRange,
    /// Neither READ nor WRITE, or both CACHE and MMIO.
    InvalidProt,
    /// Some page in the range is already mapped; `iova` is the first conflict found.
    AlreadyMapped {
        /// First IOVA of the range found mapped.
        iova: u64,
    },
    /// The table-page allocator ran out; nothing was linked.
    NoMemory,
}

/// Why `unmap` refused; the tables are unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmapError {
    /// `len` was zero.
    ZeroLength,
    /// `iova` or `len` is not a multiple of the format's smallest page.
    Misaligned,
    /// The range leaves the format's input address space (or wraps).
    IovaOutOfRange,
    /// The range starts or ends inside a larger leaf, which is never split.
    SplitsLeaf {
        /// First IOVA of the leaf that straddles the range boundary.
        leaf_iova: u64,
        /// Its size in bytes.
        leaf_size: u64,
    },
}

/// The table-page allocator could not provide a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocError;

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::ZeroLength => f.write_str("zero length"),
            MapError::Misaligned => f.write_str("misaligned iova, phys or length"),
            MapError::IovaOutOfRange => f.write_str("iova range outside the address space"),
            MapError::PhysOutOfRange => f.write_str("physical range beyond the output size"),
            MapError::InvalidProt => f.write_str("invalid protection"),
            MapError::AlreadyMapped { iova } => write!(f, "iova {iova:#x} already mapped"),
            MapError::NoMemory => f.write_str("out of table pages"),
        }
    }
}

impl fmt::Display for UnmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnmapError::ZeroLength => f.write_str("zero length"),
            UnmapError::Misaligned => f.write_str("misaligned iova or length"),
            UnmapError::IovaOutOfRange => f.write_str("iova range outside the address space"),
            UnmapError::SplitsLeaf {
                leaf_iova,
                leaf_size,
            } => write!(
                f,
                "range splits the {leaf_size:#x}-byte leaf at {leaf_iova:#x}"
            ),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigError::Levels => "unsupported number of levels",
            ConfigError::InputSize => "unsupported input address size",
            ConfigError::OutputSize => "unsupported output address size",
        })
    }
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("out of table pages")
    }
}

impl core::error::Error for ConfigError {}
impl core::error::Error for MapError {}
impl core::error::Error for UnmapError {}
impl core::error::Error for AllocError {}
