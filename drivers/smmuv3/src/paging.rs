//! The I/O page tables of SMMUv3 paging domains: the VMSAv8-64 (LPAE) format
//! of `io-page-table` at stage 1 or stage 2 (SMMUv3 §3.4, Arm ARM D8), in
//! table pages from the unit's memory through the kit's allocator adapter.

use io_page_table::{
    ArmConfig, ArmLpae, Coherence, Format, Granule as PtGranule, PageTable, Prot as PtProt,
    Stage as PtStage,
};
use iommu::{IommuError, IovaRange};
use iommu_kit::DmaTableAlloc;
use os_services::DmaMemory;

use crate::hardware::Features;
use crate::regs::Granule;

/// A paging domain's table.
pub type Table<'a> = PageTable<ArmLpae, DmaTableAlloc<'a>>;

/// Which stage a paging domain's table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingStage {
    /// Stage-1 tables, CD-tagged by ASID.
    Stage1,
    /// Stage-2 tables, STE-tagged by VMID.
    Stage2,
}

/// Input address bits of stage-1 tables (IDR5.VAX = 0: 48) and of stage-2
/// tables (covers RAM and the MSI doorbell; QEMU caps the IPA at the OAS).
pub const STAGE1_INPUT_BITS: u32 = 48;
/// Input bits of the stage-2 tables this driver builds.
pub const STAGE2_INPUT_BITS: u32 = 40;

/// The input (IOVA or IPA) bits of a table of `stage`.
pub fn input_bits(stage: PagingStage) -> u32 {
    match stage {
        PagingStage::Stage1 => STAGE1_INPUT_BITS,
        PagingStage::Stage2 => STAGE2_INPUT_BITS,
    }
}

/// The leaf sizes a table of `stage` with `granule` uses (Linux's
/// `pgsize_bitmap`): the granule and the block sizes above it.
pub fn page_sizes(
    features: &Features,
    stage: PagingStage,
    granule: Granule,
) -> Result<u64, IommuError> {
    Ok(format(features, stage, granule)?.geometry().page_sizes())
}

/// A new table of `stage` with `granule`, output bits from IDR5.OAS. Every
/// domain a device may signal from maps the MSI doorbell, IOVA = PA, as
/// Device memory (its reserved region).
/// `clean` is the cache clean of an SMMU whose walks do not snoop
/// (`Smmu::clean`): every table write is then written back.
pub fn new_table<'a>(
    features: &Features,
    stage: PagingStage,
    granule: Granule,
    dma: &'a (dyn DmaMemory + Sync),
    msi_doorbell: Option<IovaRange>,
    clean: Option<iommu_kit::CacheClean>,
) -> Result<Table<'a>, IommuError> {
    let format = format(features, stage, granule)?;
    let coherence = match clean {
        None => Coherence::Coherent,
        Some(_) => Coherence::NonCoherent,
    };
    let mut table = PageTable::new(format, DmaTableAlloc::new(dma, clean), coherence)
        .map_err(|_| IommuError::NoMemory)?;
    if let Some(doorbell) = msi_doorbell {
        let page = granule.size();
        let start = doorbell.start & !(page - 1);
        table
            .map(
                start,
                start,
                page,
                PtProt::WRITE | PtProt::MMIO | PtProt::NOEXEC,
            )
            .map_err(|_| IommuError::NoMemory)?;
    }
    Ok(table)
}

/// The table format of `stage` with `granule`; output bits from IDR5.OAS.
fn format(
    features: &Features,
    stage: PagingStage,
    granule: Granule,
) -> Result<ArmLpae, IommuError> {
    let output_bits = features
        .idr5()
        .output_bits()
        .ok_or(IommuError::Unsupported)?
        .min(48);
    let format = ArmLpae::new(ArmConfig {
        stage: match stage {
            PagingStage::Stage1 => PtStage::Stage1,
            PagingStage::Stage2 => PtStage::Stage2,
        },
        granule: pt_granule(granule),
        input_bits: input_bits(stage),
        output_bits,
        // One TLB entry per aligned run on SMMUs that honour the hint.
        contiguous: true,
    })
    .map_err(|_| IommuError::Unsupported)?;
    // With HTTU the stage-1 CD sets HD: writable leaves carry DBM, so that
    // their dirty state can be read (Linux `IO_PGTABLE_QUIRK_ARM_HD`).
    Ok(match stage {
        PagingStage::Stage1 if features.hardware_dirty() => format.with_hardware_dirty(),
        _ => format,
    })
}

/// The register encoding's granule for io-page-table's.
pub fn granule_of(granule: PtGranule) -> Granule {
    match granule {
        PtGranule::K4 => Granule::K4,
        PtGranule::K16 => Granule::K16,
        PtGranule::K64 => Granule::K64,
    }
}

/// io-page-table's granule for the register encoding's.
pub fn pt_granule(granule: Granule) -> PtGranule {
    match granule {
        Granule::K4 => PtGranule::K4,
        Granule::K16 => PtGranule::K16,
        Granule::K64 => PtGranule::K64,
    }
}
