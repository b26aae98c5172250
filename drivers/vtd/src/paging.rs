//! Paging-domain tables from `io-page-table`: the VT-d second-stage format
//! (VT-d 3.4 §9.8) and the first-stage x86-64 format (§9.7), in table pages
//! from the unit's DMA memory.

use alloc::boxed::Box;

use io_page_table::format::vtd_ss::{VtdSecondStage, VtdSsConfig};
use io_page_table::format::x86_64::{X86_64, X86Config};
use io_page_table::{Coherence, Format, FreedTables, MapError, PageTable, TableAlloc};
use iommu::{Gather, IommuError, Prot};
use iommu_kit::{DmaTableAlloc, Unlinked};
use os_services::DmaMemory;

use crate::regs::Cap;

/// Which page-table format a paging domain needs on this unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    /// VT-d 3.4 §9.8 second-stage format with `levels` levels (3 or 4,
    /// from CAP.SAGAW).
    SecondStage {
        /// 3 or 4.
        levels: u8,
    },
    /// VT-d 3.4 §9.7 first-stage (x86-64, 4-level) format; QEMU treats every
    /// request as a user request, so every entry needs U/S = 1.
    FirstStage,
}

/// A paging domain's I/O page table. The formats live in `io-page-table`;
/// the unit only needs the root and the map/unmap gathers.
pub trait DomainTable: Send + Sync {
    /// Physical address of the top-level table.
    fn root(&self) -> u64;
    /// Maps `len` bytes at `iova` to `phys`
    /// (`io_page_table::PageTable::map_shared`).
    ///
    /// # Safety
    ///
    /// No concurrent call touches `[iova, iova + len)`.
    unsafe fn map(&self, iova: u64, phys: u64, len: u64, prot: Prot) -> Result<Gather, IommuError>;
    /// An error means nothing was unmapped. The table pages it unlinks wait
    /// in [`Self::unlinked`] for the flush that covers them.
    ///
    /// # Safety
    ///
    /// No concurrent call touches `[iova, iova + len)`.
    unsafe fn unmap(&self, iova: u64, len: u64) -> Result<Gather, IommuError>;
    /// The table pages unmaps unlinked, by range; `None` for tables that
    /// unlink none.
    fn unlinked(&self) -> Option<&Unlinked> {
        None
    }
    /// Returns pages of [`Self::unlinked`] once their invalidation completed.
    fn release(&self, freed: FreedTables) {
        let _ = freed;
    }
    /// The hardware's walk for `iova`, level by level
    /// (`io_page_table::PageTable::walk_to`); tables the unit cannot show
    /// visit nothing.
    fn walk_to(&self, iova: u64, visit: &mut dyn FnMut(&io_page_table::WalkStep)) {
        let _ = (iova, visit);
    }
    /// The leaves the hardware marked written (see
    /// `io_page_table::PageTable::read_dirty`); tables without dirty state
    /// refuse.
    fn read_dirty(
        &mut self,
        iova: u64,
        len: u64,
        keep: bool,
        dirty: &mut dyn FnMut(u64, u64),
    ) -> Result<Gather, IommuError> {
        let _ = (iova, len, keep, dirty);
        Err(IommuError::Unsupported)
    }
}

/// Creates an empty table of a format (None: format not available).
pub type TableFactory = fn(TableFormat) -> Option<Box<dyn DomainTable>>;

/// A domain's `io-page-table` table and the table pages its unmaps unlinked,
/// held until the invalidation that covers them has completed.
struct IoTable<T> {
    table: T,
    unlinked: Unlinked,
}

fn table_prot(prot: Prot) -> io_page_table::Prot {
    let mut out = io_page_table::Prot::empty();
    if prot.read {
        out |= io_page_table::Prot::READ;
    }
    if prot.write {
        out |= io_page_table::Prot::WRITE;
    }
    out
}

impl<F, A> DomainTable for IoTable<PageTable<F, A>>
where
    F: Format + Send + Sync,
    A: TableAlloc + Send + Sync,
{
    fn root(&self) -> u64 {
        self.table.root_phys()
    }

    unsafe fn map(&self, iova: u64, phys: u64, len: u64, prot: Prot) -> Result<Gather, IommuError> {
        // SAFETY: the caller keeps concurrent ranges disjoint.
        unsafe { self.table.map_shared(iova, phys, len, table_prot(prot)) }.map_err(|err| match err
        {
            MapError::NoMemory => IommuError::NoMemory,
            _ => IommuError::Invalid,
        })
    }

    unsafe fn unmap(&self, iova: u64, len: u64) -> Result<Gather, IommuError> {
        // A range that splits a leaf or is malformed changes nothing: the
        // caller must see it, or it would release pages still mapped.
        // SAFETY: the caller keeps concurrent ranges disjoint.
        let unmapped =
            unsafe { self.table.unmap_shared(iova, len) }.map_err(|_| IommuError::Invalid)?;
        self.unlinked.push(&unmapped.gather, unmapped.freed);
        Ok(unmapped.gather)
    }

    fn unlinked(&self) -> Option<&Unlinked> {
        Some(&self.unlinked)
    }

    fn release(&self, freed: FreedTables) {
        self.table.release(freed);
    }

    fn walk_to(&self, iova: u64, visit: &mut dyn FnMut(&io_page_table::WalkStep)) {
        self.table.walk_to(iova, visit);
    }

    fn read_dirty(
        &mut self,
        iova: u64,
        len: u64,
        keep: bool,
        dirty: &mut dyn FnMut(u64, u64),
    ) -> Result<Gather, IommuError> {
        self.table
            .read_dirty(iova, len, keep, dirty)
            .map_err(|_| IommuError::Invalid)
    }
}

/// A new, empty table of `format` for a unit with `cap`, whose walks snoop
/// or not (`Hardware::page_walks_snoop`), naming physical addresses below
/// 2^`output_bits` (the DMAR's host address width). `flush_cache` writes
/// table lines back when walks do not snoop.
pub fn new_table<'a>(
    format: TableFormat,
    cap: Cap,
    walks_snoop: bool,
    output_bits: u32,
    dma: &'a (dyn DmaMemory + Sync),
    flush_cache: fn(*const u8, usize),
) -> Result<Box<dyn DomainTable + 'a>, IommuError> {
    let (coherence, clean) = if walks_snoop {
        (Coherence::Coherent, None)
    } else {
        (Coherence::NonCoherent, Some(flush_cache))
    };
    let alloc = DmaTableAlloc::new(dma, clean);
    Ok(match format {
        TableFormat::SecondStage { levels } => {
            let format = VtdSecondStage::new(VtdSsConfig {
                levels: u32::from(levels),
                sllps: cap.second_stage_large_pages(),
                snoop: false,
                output_bits,
            })
            .map_err(|_| IommuError::Unsupported)?;
            let table =
                PageTable::new(format, alloc, coherence).map_err(|_| IommuError::NoMemory)?;
            Box::new(IoTable {
                table,
                unlinked: Unlinked::default(),
            })
        }
        TableFormat::FirstStage => {
            let format = X86_64::new(X86Config {
                levels: 4,
                // QEMU treats every DMA as a user access (fault 0x81 otherwise).
                user: true,
                nx: false,
                leaf_1g: cap.first_stage_1g_pages(),
                output_bits,
            })
            .map_err(|_| IommuError::Unsupported)?;
            let table =
                PageTable::new(format, alloc, coherence).map_err(|_| IommuError::NoMemory)?;
            Box::new(IoTable {
                table,
                unlinked: Unlinked::default(),
            })
        }
    })
}
