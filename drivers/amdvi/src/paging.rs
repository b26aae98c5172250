//! The I/O page tables of AMD-Vi paging domains: the AMD v1 format of
//! `io-page-table` (AMD IOMMU §2.2.3), in table pages from the unit's memory
//! through the kit's allocator adapter.

use io_page_table::{AmdV1, AmdV1Config, Coherence, PageTable};
use iommu::{IommuError, Prot};
use iommu_kit::DmaTableAlloc;
use os_services::DmaMemory;

/// Levels of paging domains' tables: 4 levels translate 48-bit IOVAs (§2.2.3:
/// 9 bits a level above the 12-bit page offset).
pub const PAGING_LEVELS: u32 = 4;
/// Output address bits of v1 leaves (§2.2.3: addresses in bits 51:12).
pub const OUTPUT_BITS: u32 = 52;

/// A paging domain's table.
pub type V1Table = PageTable<AmdV1, DmaTableAlloc<'static>>;

/// A new, empty table whose pages come from `memory`.
pub fn new_table(memory: &'static (dyn DmaMemory + Sync)) -> Result<V1Table, IommuError> {
    let format = AmdV1::new(AmdV1Config {
        levels: PAGING_LEVELS,
        output_bits: OUTPUT_BITS,
        // Pages between the native sizes, as Linux's v1 tables (QEMU decodes
        // Next Level 7).
        nl7_pages: true,
    })
    .map_err(|_| IommuError::Unsupported)?;
    // x86 IOMMUs snoop their table walks: nothing to clean.
    PageTable::new(
        format,
        DmaTableAlloc::new(memory, None),
        Coherence::Coherent,
    )
    .map_err(|_| IommuError::NoMemory)
}

/// The table's permission bits for a mapping; a mapping that allows nothing
/// is refused (a not-present entry already does that).
pub fn page_prot(prot: Prot) -> Result<io_page_table::Prot, IommuError> {
    let mut out = io_page_table::Prot::empty();
    if prot.read {
        out |= io_page_table::Prot::READ;
    }
    if prot.write {
        out |= io_page_table::Prot::WRITE;
    }
    if out.is_empty() {
        return Err(IommuError::Invalid);
    }
    Ok(out)
}
