//! AMD-Vi in QEMU (configuration `amdvi`: q35 + `amd-iommu,pt=off`, two edu devices),
//! what only AMD-Vi has: discovery from the IVRS, the command buffer and event log,
//! interrupt remapping, Next Level 7 pages, the command costs. The DMA matrix every
//! IOMMU shares is `dma_matrix.rs`. On machines without an IVRS every test reports
//! "not applicable".

use alloc::format;
use alloc::vec::Vec;
use core::time::Duration;

use ::iommu::{
    Access, DomainHandle, DomainKind, FaultRecord, Gather, HwInfo, IommuError, IommuUnit, Prot,
    ReservedKind,
};
use alloc::string::String;
use amdvi::AmdVi;
use amdvi::interrupt;
use amdvi::regs::{self};

use crate::iommu::amdvi::{self as glue, Absent};
use crate::memory::frames;
use crate::platform::Platform;
use crate::testing::{Outcome, Test, TestResult};

pub static TESTS: &[Test] = &[
    Test {
        name: "amdvi::unit_is_discovered_from_the_ivrs",
        run: unit_is_discovered_from_the_ivrs,
    },
    Test {
        name: "amdvi::bring_up_runs_the_command_buffer_and_event_log",
        run: bring_up_runs_the_command_buffer_and_event_log,
    },
    Test {
        name: "amdvi::illegal_command_does_not_wedge_the_command_buffer",
        run: illegal_command_does_not_wedge_the_command_buffer,
    },
    Test {
        name: "amdvi::unmapped_dma_is_recorded_as_io_page_fault",
        run: unmapped_dma_is_recorded_as_io_page_fault,
    },
    Test {
        name: "amdvi::edu_msi_arrives_through_its_irte",
        run: edu_msi_arrives_through_its_irte,
    },
    Test {
        name: "amdvi::aligned_unmap_flush_costs_one_invalidation_one_wait_one_tail_write",
        run: aligned_unmap_flush_costs_one_invalidation_one_wait_one_tail_write,
    },
    Test {
        name: "amdvi::demo_reports_the_command_costs",
        run: demo_reports_the_command_costs,
    },
    Test {
        name: "amdvi::next_level_7_page_carries_a_dma_and_goes_only_whole",
        run: next_level_7_page_carries_a_dma_and_goes_only_whole,
    },
    Test {
        name: "amdvi::every_ivhd_is_brought_up_blocking",
        run: every_ivhd_is_brought_up_blocking,
    },
    Test {
        name: "amdvi::the_demo_walk_reaches_the_page_it_mapped",
        run: the_demo_walk_reaches_the_page_it_mapped,
    },
];

/// The unit, or the reason the test does not apply / failed to start.
macro_rules! unit_or_skip {
    ($platform:expr) => {
        match glue::unit($platform) {
            Ok(unit) => unit,
            Err(Absent::NoIvrs) => {
                return Ok(Outcome::NotApplicable("no AMD-Vi IVRS on this machine"))
            }
            Err(other) => return Err(format!("AMD-Vi unit unusable: {other:?}")),
        }
    };
}

pub(super) fn edus() -> Vec<&'static crate::devices::PciDevice> {
    crate::devices::edus().collect()
}

pub(super) fn open(
    platform: &Platform,
    device: &crate::devices::PciDevice,
) -> Result<edu::Edu<'static>, alloc::string::String> {
    crate::devices::open_edu(platform, device).map_err(|err| format!("{err:?}"))
}

/// A frame filled with `byte`.
pub(super) fn filled_frame(byte: u8) -> Result<frames::Frames, &'static str> {
    let frame = frames::alloc().ok_or("no frame")?;
    // SAFETY: the frame was just allocated to the caller and is identity-mapped.
    unsafe { core::ptr::write_bytes(frame.as_mut_ptr(), byte, frame.len()) };
    Ok(frame)
}

/// True when every byte of `frame` still reads `byte` (volatile: a device may have
/// written it).
pub(super) fn frame_holds(frame: &frames::Frames, byte: u8) -> bool {
    // SAFETY: the frame belongs to the test; volatile reads of DMA-visible memory.
    (0..frame.len()).all(|i| unsafe { core::ptr::read_volatile(frame.as_mut_ptr().add(i)) } == byte)
}

fn unit_is_discovered_from_the_ivrs(platform: &Platform) -> TestResult {
    let unit = unit_or_skip!(platform);
    let unit = unit.write();
    let description = unit.hardware.description();
    ensure_eq!(
        description.mmio_base,
        0xFED8_0000,
        "register base from the IVHD"
    );
    for device in edus() {
        let id = device.function.bdf.requester_id();
        ensure!(
            description.translates(id),
            "IVHD does not list edu {} ({id:#x})",
            device.function.bdf
        );
    }
    // The live EFR matches the IVHD 11h image and is reported raw.
    ensure_eq!(
        Some(unit.hardware.extended_features().0),
        description.efr_image,
        "EFR register vs IVHD image"
    );
    match unit.hw_info() {
        HwInfo::AmdVi { efr, .. } => {
            ensure_eq!(efr, unit.hardware.extended_features().0, "hw_info EFR")
        }
        other => return Err(format!("hw_info: {other:?}")),
    }
    let edu_id = glue::device_id_of(edus()[0].function.bdf);
    let regions = unit.reserved_regions(edu_id);
    ensure!(
        regions
            .iter()
            .any(|r| r.kind == ReservedKind::Msi && r.range.start == 0xFEE0_0000),
        "interrupt window not reserved: {regions:?}"
    );
    Ok(Outcome::Passed)
}

fn bring_up_runs_the_command_buffer_and_event_log(platform: &Platform) -> TestResult {
    let unit = unit_or_skip!(platform);
    let unit = unit.write();
    // SAFETY: reading the status register the unit owns; reads have no side effects.
    let status = {
        let base = unit.hardware.description().mmio_base as *const u8;
        unsafe { core::ptr::read_volatile(base.add(0x2020).cast::<u64>()) }
    };
    let status = regs::Status::from_bits_retain(status);
    ensure!(
        status.contains(regs::Status::CMD_BUF_RUN | regs::Status::EVENT_LOG_RUN),
        "status {status:?}"
    );
    for device in edus() {
        let dte = unit
            .hardware
            .dte(device.function.bdf.requester_id())
            .ok_or("edu outside the device table")?;
        ensure!(
            dte.blocks_dma(),
            "edu {} DTE not blocked: {dte:x?}",
            device.function.bdf
        );
        ensure_eq!(
            dte.int_ctl(),
            amdvi::device_table::IntCtl::Abort as u8,
            "IntCtl of an unattached edu"
        );
    }
    // An empty batch is exactly one COMPLETION_WAIT and one tail write, and completes.
    let before = unit.hardware.counters();
    unit.hardware
        .run(&[])
        .map_err(|err| format!("COMPLETION_WAIT: {err:?}"))?;
    let cost = unit.hardware.counters().since(&before);
    ensure_eq!(
        (cost.commands, cost.completion_waits, cost.tail_writes),
        (1, 1, 1),
        "commands, waits, tail writes"
    );
    Ok(Outcome::Passed)
}

fn illegal_command_does_not_wedge_the_command_buffer(platform: &Platform) -> TestResult {
    let unit = unit_or_skip!(platform);
    let unit = unit.write();
    let before = unit.hardware.counters();
    let logged = unit
        .hardware
        .probe_event_log()
        .map_err(|err| format!("illegal command probe: {err:?}"))?;
    if logged {
        // The error was surfaced as IllegalCommand (or a recovered timeout) and counted.
        ensure!(
            unit.hardware.counters().since(&before).command_errors >= 1,
            "an illegal command the event log recorded was not counted as an error"
        );
    }
    // Whatever the IOMMU did with it, the next batch completes.
    for _ in 0..3 {
        unit.hardware
            .run(&[amdvi::command::Command::invalidate_all()])
            .map_err(|err| format!("command after the illegal one: {err:?}"))?;
    }
    Ok(Outcome::Passed)
}

fn unmapped_dma_is_recorded_as_io_page_fault(platform: &Platform) -> TestResult {
    let unit = unit_or_skip!(platform);
    let works = unit
        .write()
        .hardware
        .probe_event_log()
        .map_err(|err| format!("probe: {err:?}"))?;
    if !works {
        return Ok(Outcome::NotApplicable(
            "this IOMMU never writes its event log (QEMU 10.0.2, docs/QEMU.md §2)",
        ));
    }
    with_scenario(platform, |s, platform| {
        let device = edus()[0];
        let id = glue::device_id_of(device.function.bdf);
        let edu = open(platform, device)?;
        let domain = s.domain()?;
        s.attach(device, domain)?;
        let mut records: Vec<FaultRecord> = Vec::new();
        s.unit.write().drain_faults(&mut records);
        records.clear();
        let victim = s.frame(0xA5)?;
        dma_to_ram(&edu, victim.phys)?;
        if !frame_holds(&victim, 0xA5) {
            return Err("DMA to an unmapped IOVA landed".into());
        }
        s.unit.write().drain_domain_faults(domain, &mut records);
        let expected = records.iter().any(|r| {
            r.requester == id
                && r.access == Access::Write
                && r.iova & !0xFFF == victim.phys
                && r.reason == ::iommu::FaultReason::NotPresent
        });
        if !expected {
            return Err(format!(
                "no not-present write fault at {:#x} from {id:?} in the domain's queue: {records:?}",
                victim.phys
            ));
        }
        Ok(())
    })
}

fn demo_reports_the_command_costs(platform: &Platform) -> TestResult {
    let unit = unit_or_skip!(platform);
    let device = glue::device_id_of(edus()[0].function.bdf);
    let figures = {
        let mut unit = unit.write();
        let domain = unit
            .alloc_domain(DomainKind::Paging)
            .map_err(|err| format!("{err:?}"))?;
        let figures = crate::figures::amdvi::command_figures(&mut unit, device, domain);
        let _ = unit.free_domain(domain);
        figures?
    };
    let cost = |what: &str| {
        figures
            .iter()
            .find(|(name, _)| name.starts_with(what))
            .map(|(_, c)| {
                (
                    c.invalidate_devtab_entry,
                    c.invalidate_iommu_pages,
                    c.completion_waits,
                    c.tail_writes,
                )
            })
    };
    ensure_eq!(cost("attach"), Some((1, 0, 1, 1)), "attach");
    // QEMU's IOMMU advertises NpCache: a new mapping is invalidated like an unmap.
    ensure_eq!(cost("map"), Some((0, 1, 1, 1)), "map with NpCache");
    ensure_eq!(cost("unmap"), Some((0, 1, 1, 1)), "aligned 16-page unmap");
    ensure_eq!(cost("detach"), Some((1, 1, 1, 1)), "detach");
    let lines = crate::figures::amdvi::demo_lines(platform)?;
    ensure!(
        lines.contains("unmap of 16 aligned pages: 0 INVALIDATE_DEVTAB_ENTRY + 1 INVALIDATE_IOMMU_PAGES + 1 COMPLETION_WAIT = 2 commands, 1 tail write(s), 1 MMIO write(s)"),
        "demo output: {lines}"
    );
    Ok(Outcome::Passed)
}

fn note_interrupt() {}

fn edu_msi_arrives_through_its_irte(platform: &Platform) -> TestResult {
    let unit = unit_or_skip!(platform);
    let free_before = frames::free_count();
    let device = edus()[0];
    let id = device.function.bdf.requester_id();
    let edu = open(platform, device)?;
    let config = &platform.pci.ecam;
    let msi = pci::Msi::find(config, device.function.bdf).ok_or("edu has no MSI capability")?;
    let vector = crate::irq::alloc_vector(note_interrupt).ok_or("no free vector")?;
    let irq = u32::from(vector);
    let (compat_address, compat_data) = crate::irq::msi_message(vector);
    let wait = Duration::from_millis(200);
    let raise = |edu: &edu::Edu| {
        let seen = crate::irq::count(irq);
        edu.raise_interrupt(1);
        let delivered = crate::irq::wait_for(irq, seen, wait);
        edu.acknowledge_interrupt(1);
        delivered
    };

    // Unattached: IntCtl=abort, so even a well-formed compatibility MSI is dropped.
    msi.enable(config, compat_address, compat_data as u16);
    let leaked = raise(&edu);

    // Remapped: the device sends IRTE index 5; the IRTE names the vector.
    const INDEX: u16 = 5;
    let (address, data) = interrupt::remappable_msi(INDEX).ok_or("index")?;
    let target = interrupt::target_of_compat_msi(compat_address, compat_data);
    let setup = {
        let mut unit = unit.write();
        let before = unit.hardware.counters();
        let result = unit.hardware.remap_interrupt(id, INDEX, target);
        (result, unit.hardware.counters().since(&before))
    };
    msi.enable(config, address, data as u16);
    let remapped = setup.0.is_ok() && raise(&edu);

    // RemapEn=0 on that IRTE: aborted again.
    let disabled = unit.write().hardware.disable_interrupt(id, INDEX);
    let after_disable = raise(&edu);

    msi.disable(config);
    let blocked = unit.write().hardware.block_interrupts(id);
    crate::irq::free(irq);

    ensure!(!leaked, "an MSI got through a DTE with IntCtl=abort");
    setup.0.map_err(|err| format!("remap: {err:?}"))?;
    ensure_eq!(
        (
            setup.1.invalidate_devtab_entry,
            setup.1.invalidate_interrupt_table,
            setup.1.completion_waits
        ),
        (1, 1, 1),
        "remap: INVALIDATE_DEVTAB_ENTRY, INVALIDATE_INTERRUPT_TABLE, COMPLETION_WAIT"
    );
    ensure!(
        remapped,
        "no MSI on vector {vector:#x} through IRTE {INDEX}"
    );
    disabled.map_err(|err| format!("disable: {err:?}"))?;
    ensure!(!after_disable, "an MSI got through an IRTE with RemapEn=0");
    blocked.map_err(|err| format!("block: {err:?}"))?;
    ensure_eq!(frames::free_count(), free_before, "free frames");
    Ok(Outcome::Passed)
}

fn aligned_unmap_flush_costs_one_invalidation_one_wait_one_tail_write(
    platform: &Platform,
) -> TestResult {
    let unit = unit_or_skip!(platform);
    let mut unit = unit.write();
    let domain = unit
        .alloc_domain(DomainKind::Blocked)
        .map_err(|err| format!("{err:?}"))?;
    let mut result = Ok(Outcome::Passed);
    for k in [0u32, 4, 9] {
        let mut gather = Gather::default();
        let base = 0x4000_0000u64;
        for page in 0..(1u64 << k) {
            gather.add_leaf(base + page * 4096, 4096);
        }
        let before = unit.hardware.counters();
        if let Err(err) = unit.flush(domain, &gather) {
            result = Err(format!("flush 2^{k} pages: {err:?}"));
            break;
        }
        let cost = unit.hardware.counters().since(&before);
        let got = (
            cost.invalidate_iommu_pages,
            cost.completion_waits,
            cost.tail_writes,
            cost.commands,
            cost.mmio_writes,
        );
        if got != (1, 1, 1, 2, 1) {
            result = Err(format!(
                "2^{k}-page unmap: (INVALIDATE_IOMMU_PAGES, COMPLETION_WAIT, tail writes, commands, MMIO writes) = {got:?}"
            ));
            break;
        }
    }
    let _ = unit.free_domain(domain);
    result
}

// ---------------------------------------------------------------------------
// The DMA matrix through paging domains (AMD v1 tables from io-page-table).

pub(super) const PAGE: u64 = 4096;
pub(super) const READ_ONLY: Prot = Prot {
    read: true,
    write: false,
};
pub(super) const READ_WRITE: Prot = Prot {
    read: true,
    write: true,
};
/// IOVAs of the matrix: away from identity so that a bypass would miss its target.
pub(super) const IOVA_SOURCE: u64 = 0x1000_0000;
pub(super) const IOVA_TARGET: u64 = 0x2000_0000;

fn pattern(seed: u8) -> impl Iterator<Item = u8> {
    (0..PAGE as usize).map(move |i| (i as u8).wrapping_mul(31).wrapping_add(seed))
}

pub(super) fn fill_pattern(frame: &frames::Frames, seed: u8) {
    for (i, byte) in pattern(seed).enumerate() {
        // SAFETY: the frame belongs to the test; the first page is written.
        unsafe { core::ptr::write_volatile(frame.as_mut_ptr().add(i), byte) };
    }
}

pub(super) fn holds_pattern(frame: &frames::Frames, offset: usize, seed: u8) -> bool {
    // SAFETY: the frame belongs to the test; volatile reads of DMA-visible memory.
    pattern(seed)
        .enumerate()
        .all(|(i, b)| unsafe { core::ptr::read_volatile(frame.as_mut_ptr().add(offset + i)) } == b)
}

pub(super) fn refill(frame: &frames::Frames, byte: u8) {
    // SAFETY: the frame belongs to the test.
    unsafe { core::ptr::write_bytes(frame.as_mut_ptr(), byte, frame.len()) };
}

/// Domains, attachments, mappings and frames of one test, undone on drop (also when
/// the test fails half-way), so that later tests start from blocked devices.
pub(super) struct Scenario {
    pub(super) unit: &'static spin::RwLock<AmdVi>,
    domains: Vec<DomainHandle>,
    attached: Vec<::iommu::DeviceId>,
    mappings: Vec<(DomainHandle, u64, u64)>,
    pub(super) frames: Vec<frames::Frames>,
}

impl Scenario {
    fn new(unit: &'static spin::RwLock<AmdVi>) -> Self {
        Self {
            unit,
            domains: Vec::new(),
            attached: Vec::new(),
            mappings: Vec::new(),
            frames: Vec::new(),
        }
    }

    pub(super) fn domain(&mut self) -> Result<DomainHandle, String> {
        let domain = self
            .unit
            .write()
            .alloc_domain(DomainKind::Paging)
            .map_err(|err| format!("alloc_domain: {err:?}"))?;
        self.domains.push(domain);
        Ok(domain)
    }

    pub(super) fn attach(
        &mut self,
        device: &crate::devices::PciDevice,
        domain: DomainHandle,
    ) -> Result<(), String> {
        let id = glue::device_id_of(device.function.bdf);
        self.unit
            .write()
            .attach(id, domain)
            .map_err(|err| format!("attach {}: {err:?}", device.function.bdf))?;
        if !self.attached.contains(&id) {
            self.attached.push(id);
        }
        Ok(())
    }

    /// Maps and flushes what the unit says a new mapping owes (NpCache).
    pub(super) fn map(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<(), String> {
        let mut unit = self.unit.write();
        let gather = unit
            .map(domain, iova, phys, len, prot)
            .map_err(|err| format!("map {iova:#x}: {err:?}"))?;
        unit.flush(domain, &gather)
            .map_err(|err| format!("flush after map: {err:?}"))?;
        self.mappings.push((domain, iova, len));
        Ok(())
    }

    pub(super) fn unmap(
        &mut self,
        domain: DomainHandle,
        iova: u64,
        len: u64,
    ) -> Result<Gather, String> {
        self.mappings
            .retain(|m| !(m.0 == domain && m.1 == iova && m.2 == len));
        self.unit
            .write()
            .unmap(domain, iova, len)
            .map_err(|err| format!("unmap of {iova:#x}: {err:?}"))
    }

    pub(super) fn flush(&mut self, domain: DomainHandle, gather: &Gather) -> Result<(), String> {
        self.unit
            .write()
            .flush(domain, gather)
            .map_err(|err| format!("flush: {err:?}"))
    }

    /// `size` bytes of frames aligned to `size` (a power of two), filled with 0xA5.
    pub(super) fn aligned_block(&mut self, size: u64) -> Result<frames::Frames, String> {
        let block = frames::alloc_contiguous((size / PAGE) as usize, size as usize)
            .ok_or(format!("no {size:#x}-aligned run of {size:#x} bytes"))?;
        self.frames.push(block);
        refill(&block, 0xA5);
        Ok(block)
    }

    pub(super) fn frame(&mut self, fill: u8) -> Result<frames::Frames, String> {
        let frame = filled_frame(fill)?;
        self.frames.push(frame);
        Ok(frame)
    }

    /// A frame holding `pattern(seed)`, mapped read-only at `iova`, read by `edu`
    /// into its buffer.
    pub(super) fn load_buffer(
        &mut self,
        edu: &edu::Edu,
        domain: DomainHandle,
        iova: u64,
        seed: u8,
    ) -> Result<(), String> {
        let source = self.frame(0)?;
        fill_pattern(&source, seed);
        self.map(domain, iova, source.phys, PAGE, READ_ONLY)?;
        edu.dma(edu::Direction::ToDevice, iova, 0, PAGE as usize)
            .map_err(|err| format!("DMA to device: {err:?}"))
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let mut unit = self.unit.write();
        for id in self.attached.drain(..) {
            unit.detach(id);
        }
        for (domain, iova, len) in self.mappings.drain(..) {
            if let Ok(gather) = unit.unmap(domain, iova, len) {
                let _ = unit.flush(domain, &gather);
            }
        }
        for domain in self.domains.drain(..) {
            let _ = unit.free_domain(domain);
        }
        for frame in self.frames.drain(..) {
            frames::free(frame);
        }
    }
}

/// Runs `body` with a scenario and checks that nothing leaked afterwards.
pub(super) fn with_scenario(
    platform: &Platform,
    body: impl FnOnce(&mut Scenario, &Platform) -> Result<(), String>,
) -> TestResult {
    let unit = unit_or_skip!(platform);
    let free_before = frames::free_count();
    let result = {
        let mut scenario = Scenario::new(unit);
        body(&mut scenario, platform)
    };
    result?;
    ensure_eq!(
        frames::free_count(),
        free_before,
        "free frames after the scenario"
    );
    Ok(Outcome::Passed)
}

pub(super) fn dma_to_ram(edu: &edu::Edu, iova: u64) -> Result<(), String> {
    edu.dma(edu::Direction::ToRam, iova, 0, PAGE as usize)
        .map_err(|err| format!("DMA to RAM at {iova:#x}: {err:?}"))
}

/// A 32 KiB page between the native sizes: one Next Level 7 PTE replicated in
/// eight level-1 entries (AMD IOMMU §2.2.3), which QEMU decodes by its address
/// bits. A DMA into any part lands at its offset; an unmap of a part changes
/// nothing; the whole page unmapped and flushed blocks the DMA.
fn next_level_7_page_carries_a_dma_and_goes_only_whole(platform: &Platform) -> TestResult {
    const SIZE: u64 = 32 << 10;
    // 32 KiB-aligned, not 64 KiB-aligned: exactly one 32 KiB page.
    const IOVA: u64 = 0x5000_8000;
    with_scenario(platform, |s, platform| {
        let device = edus()[0];
        let edu = open(platform, device)?;
        let domain = s.domain()?;
        s.attach(device, domain)?;
        s.load_buffer(&edu, domain, IOVA_SOURCE, 0x77)?;
        let block = s.aligned_block(SIZE)?;
        s.map(domain, IOVA, block.phys, SIZE, READ_WRITE)?;
        for part in 0..SIZE / PAGE {
            let leaf = s
                .unit
                .write()
                .translation(domain, IOVA + part * PAGE)
                .ok_or("no leaf")?;
            let next_level = (leaf.pte >> 9) & 7;
            ensure_eq!(
                (next_level, leaf.leaf_iova, leaf.leaf_size),
                (7, IOVA, SIZE),
                "leaf of part {part} (Next Level, page, size)"
            );
        }
        let offset = 0x5000;
        dma_to_ram(&edu, IOVA + offset)?;
        if !holds_pattern(&block, offset as usize, 0x77) {
            return Err("DMA into the Next Level 7 page did not land at its offset".into());
        }
        let cut = s.unit.write().unmap(domain, IOVA + SIZE - PAGE, PAGE);
        ensure_eq!(
            cut,
            Err(IommuError::Invalid),
            "an unmap of a part is refused, changing nothing"
        );
        refill(&block, 0xA5);
        dma_to_ram(&edu, IOVA + SIZE - PAGE)?;
        if !holds_pattern(&block, (SIZE - PAGE) as usize, 0x77) {
            return Err("the page stopped translating after a refused unmap of a part".into());
        }
        let gather = s.unmap(domain, IOVA, SIZE)?;
        ensure_eq!(
            (gather.start, gather.last),
            (IOVA, IOVA + SIZE - 1),
            "gather of the whole page"
        );
        s.flush(domain, &gather)?;
        refill(&block, 0xA5);
        dma_to_ram(&edu, IOVA + offset)?;
        if !frame_holds(&block, 0xA5) {
            return Err("DMA landed after the page was unmapped and flushed".into());
        }
        Ok(())
    })
}

/// Every IOMMU the IVRS describes is brought up, not only the first: one left
/// as firmware left it would let the DMA behind it go wherever firmware
/// pointed it. Each translates (IommuEn) and the iommufd core holds one
/// handle per unit; each function is named for the IVHD that lists it. (QEMU
/// builds one IVHD; which unit a device belongs to with several is the
/// host-tested `amdvi::discovery::unit_for`.)
fn every_ivhd_is_brought_up_blocking(platform: &Platform) -> TestResult {
    let crate::platform::Firmware::Acpi(info) = &platform.firmware;
    let Some(ivrs) = &info.ivrs else {
        return Ok(Outcome::NotApplicable("no AMD-Vi IVRS on this machine"));
    };
    let described = amdvi::discovery::describe(ivrs).map_err(|err| format!("{err:?}"))?;
    let units = glue::units(platform).map_err(|absent| format!("{absent:?}"))?;
    ensure_eq!(units.len(), described.len(), "units up");
    for (index, unit) in units.iter().enumerate() {
        let control = unit.write().hardware.control();
        ensure!(
            control.contains(regs::Control::IOMMU_EN),
            "unit {index} translates (Control {control:?})"
        );
    }
    for device in crate::devices::all() {
        let bdf = device.function.bdf;
        let expected = amdvi::discovery::unit_for(&described, 0, bdf.requester_id())
            .map(|unit| (::iommu::UnitId(unit as u32), glue::device_id_of(bdf)));
        ensure_eq!(
            glue::endpoint(platform, bdf),
            expected,
            format!("unit of {bdf}")
        );
    }
    crate::iommufd_service::prepare();
    ensure_eq!(
        crate::iommufd_service::unit_count(),
        described.len(),
        "units the iommufd core holds"
    );
    Ok(Outcome::Passed)
}

/// The demo's lesson (`figures::walk`): the hardware's walk to a mapped
/// page, read back level by level from the unit's own tables, ends in that
/// page at the byte asked about.
fn the_demo_walk_reaches_the_page_it_mapped(platform: &Platform) -> TestResult {
    let crate::platform::Firmware::Acpi(info) = &platform.firmware;
    if info.ivrs.is_none() {
        return Ok(Outcome::NotApplicable("no AMD-Vi IVRS on this machine"));
    }
    let unit = crate::iommu::amdvi::unit(platform)
        .map_err(|_| alloc::string::String::from("no AMD-Vi unit"))?;
    let text = crate::figures::walk::lesson(&mut *unit.write(), |unit, domain, iova, visit| {
        unit.walk_mapping(domain, iova, visit)
    })?;
    crate::figures::walk::check(&text)?;
    Ok(Outcome::Passed)
}
