//! The interrupt controller the device tree describes: a GICv2 with a GICv2m
//! MSI frame ([`v2`]), or a GICv3 ([`v3`]) with an ITS ([`its`]).
//!
//! The difference that matters for isolation is the MSI path. A GICv2m frame
//! raises whatever SPI number a device writes to its doorbell, so any device
//! that can reach the doorbell can raise any other device's interrupt. An ITS
//! translates a write by the DeviceID the interconnect attaches to it (the
//! PCI requester id, through the host bridge's `msi-map`) and an EventID to
//! the LPI the kernel mapped for that pair; a device can raise only its own.

mod its;
mod v2;
mod v3;

use core::ptr::NonNull;

use os_services::mmio::{Mmio, Reg32};

/// The interrupt controller is absent when the device tree described none
/// this kernel drives: interrupt users then get an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoInterruptController;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V2,
    V3,
}

static VERSION: spin::Once<Version> = spin::Once::new();

/// # Safety of the mappings
/// The boot map covers 0-1 GiB as Device memory, where QEMU `virt` puts the
/// GIC (0x0800_0000..), its v2m frame, ITS and redistributors.
fn map(base: u64, size: usize) -> Mmio {
    let base = NonNull::new(base as *mut u8).expect("GIC register block at 0");
    // SAFETY: see the function comment.
    unsafe { Mmio::new(base, size) }
}

/// The priority every interrupt the kernel enables gets (SPIs, PPIs, LPIs).
const DEFAULT_PRIORITY: u32 = 0xA0;

// The SMMU driver maps the page of GITS_TRANSLATER in every domain
// (`smmuv3::discovery::msi_doorbell`); it must be the register this ITS
// driver programs devices to write.
const _: () = assert!(its::TRANSLATER == smmuv3::discovery::ITS_TRANSLATER);

/// The register arrays GICv2 and GICv3 share (IHI 0048B §4.3, IHI 0069H
/// §12.9): one byte per interrupt (IPRIORITYR, ITARGETSR); two bits per
/// interrupt in ICFGR, bit 1 of the pair meaning edge-triggered; one bit per
/// interrupt in IGROUPR and in the write-1 ISENABLER/ICENABLER.
fn set_byte_field(regs: &Mmio, array_base: usize, intid: u32, value: u32) {
    let reg = Reg32(array_base + (intid as usize & !3));
    let shift = (intid % 4) * 8;
    let old = regs.read32(reg);
    regs.write32(reg, (old & !(0xFF << shift)) | (value << shift));
}

fn set_trigger(regs: &Mmio, array_base: usize, intid: u32, edge: bool) {
    let reg = Reg32(array_base + (intid as usize / 16) * 4);
    let bit = 1 << ((intid % 16) * 2 + 1);
    let old = regs.read32(reg);
    regs.write32(reg, if edge { old | bit } else { old & !bit });
}

fn set_bit(regs: &Mmio, array_base: usize, intid: u32, on: bool) {
    let reg = Reg32(array_base + (intid as usize / 32) * 4);
    let bit = 1 << (intid % 32);
    let old = regs.read32(reg);
    regs.write32(reg, if on { old | bit } else { old & !bit });
}

/// Writes `intid`'s bit alone to a write-1 array (ISENABLER, ICENABLER).
fn write_one(regs: &Mmio, array_base: usize, intid: u32) {
    regs.write32(
        Reg32(array_base + (intid as usize / 32) * 4),
        1 << (intid % 32),
    );
}

fn unmask_irqs() {
    // SAFETY: unmasking IRQs: the vectors and the GIC are set up.
    unsafe { core::arch::asm!("msr daifclr, #2") };
}

/// Brings up a GICv2 (and its v2m frame) and unmasks IRQs.
pub fn init_v2(distributor: u64, cpu_interface: u64, v2m_frame: Option<u64>) {
    v2::init(distributor, cpu_interface, v2m_frame);
    VERSION.call_once(|| Version::V2);
    unmask_irqs();
}

/// Brings up a GICv3 (distributor, this CPU's redistributor and system
/// register interface) and its ITS, and unmasks IRQs.
pub fn init_v3(distributor: u64, redistributor: u64, its: Option<u64>) -> Result<(), &'static str> {
    let processor = v3::init(distributor, redistributor)?;
    if let Some(base) = its {
        its::init(base, processor)?;
    }
    VERSION.call_once(|| Version::V3);
    unmask_irqs();
    Ok(())
}

fn version() -> Result<Version, NoInterruptController> {
    VERSION.get().copied().ok_or(NoInterruptController)
}

/// Brings up the running secondary CPU's part of the GIC (its CPU interface;
/// a GICv3's redistributor) and unmasks IRQs on it.
/// The interrupt controller, for the boot log.
pub fn name() -> &'static str {
    match VERSION.get() {
        Some(Version::V2) => "GICv2",
        Some(Version::V3) => "GICv3 (CPU interface as system registers)",
        None => "no GIC",
    }
}

pub fn init_this_cpu() -> Result<(), &'static str> {
    match version().map_err(|_| "no interrupt controller")? {
        Version::V2 => v2::init_this_cpu(),
        Version::V3 => v3::init_this_cpu()?,
    }
    unmask_irqs();
    Ok(())
}

/// Raises software-generated interrupt `intid` (0-15) on the CPU with
/// kernel index `cpu`.
pub fn send_sgi(cpu: usize, intid: u32) {
    match version() {
        Ok(Version::V2) => v2::send_sgi(cpu, intid),
        Ok(Version::V3) => v3::send_sgi(cpu, intid),
        Err(_) => {}
    }
}

/// Serialises the read-modify-write configuration of shared GIC registers
/// (priority, target and trigger bytes are packed four or sixteen to a
/// register): CPUs enabling interrupts at once would lose each other's
/// fields. Thread context only; handlers never configure.
static CONFIGURATION: spin::Mutex<()> = spin::Mutex::new(());

/// Configures interrupt `intid` (a PPI or an SPI; edge or level), routes it to
/// this CPU and enables it.
pub fn enable_spi(intid: u32, edge: bool) -> Result<(), NoInterruptController> {
    let _configuring = CONFIGURATION.lock();
    match version()? {
        Version::V2 => v2::enable_spi(intid, edge),
        Version::V3 => v3::enable(intid, edge),
    }
}

pub fn disable(intid: u32) {
    let _configuring = CONFIGURATION.lock();
    match version() {
        Ok(Version::V2) => v2::disable(intid),
        Ok(Version::V3) => v3::disable(intid),
        Err(_) => {}
    }
}

/// Handles one pending interrupt (called from the IRQ vector).
pub fn handle_irq() {
    match version() {
        Ok(Version::V2) => v2::handle_irq(),
        Ok(Version::V3) => v3::handle_irq(),
        Err(_) => {}
    }
}

/// The GICv2m frame's doorbell and the SPIs it can raise.
pub fn msi_spis() -> Option<(u64, core::ops::Range<u32>)> {
    (version().ok()? == Version::V2).then(v2::msi_spis)?
}

/// Whether MSIs go through an ITS (isolated per device) rather than a
/// GICv2m frame.
pub fn has_its() -> bool {
    its::get().is_some()
}

/// The first LPI INTID (GICv3 §1.2: LPIs start at 8192).
pub const FIRST_LPI: u32 = 8192;

/// Maps event 0 of ITS DeviceID `device` to LPI `intid` and enables it;
/// returns the doorbell address and data the device must write.
pub fn map_lpi(device: u32, intid: u32) -> Result<(u64, u32), &'static str> {
    let its = its::get().ok_or("no ITS")?;
    v3::configure_lpi(intid, true);
    its.map(device, intid)
}

/// Ends what [`map_lpi`] set up for `intid`.
pub fn unmap_lpi(intid: u32) {
    if let Some(its) = its::get() {
        v3::configure_lpi(intid, false);
        its.unmap(intid);
    }
}
