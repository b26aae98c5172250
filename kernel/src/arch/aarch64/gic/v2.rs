//! The GICv2 distributor and CPU interface (Arm GIC Architecture Specification
//! v2, IHI 0048B, §4.3 and §4.4) and the GICv2m MSI frame (Arm Server Base
//! System Architecture, GICv2m appendix): an MSI is a write of the SPI number
//! to the frame's MSI_SETSPI_NS register.

use core::sync::atomic::{AtomicU8, Ordering};

use os_services::mmio::{Mmio, Reg32};

use crate::arch::MAX_CPUS;

use super::{DEFAULT_PRIORITY, NoInterruptController, set_byte_field, set_trigger, write_one};

/// IHI 0048B §4.3 distributor registers.
const GICD_CTLR: Reg32 = Reg32(0x000);
const GICD_ISENABLER: usize = 0x100;
const GICD_ICENABLER: usize = 0x180;
const GICD_IPRIORITYR: usize = 0x400;
const GICD_ITARGETSR: usize = 0x800;
const GICD_ICFGR: usize = 0xC00;
/// GICD_SGIR (§4.3.15): CPUTargetList in bits 23:16 (TargetListFilter 0:
/// the listed CPU interfaces), SGIINTID in bits 3:0.
const GICD_SGIR: Reg32 = Reg32(0xF00);
const SGIR_TARGET_LIST_SHIFT: u32 = 16;
const SGIR_INTID_MASK: u32 = 0xF;
const GICD_CTLR_ENABLE: u32 = 1;
const DISTRIBUTOR_SIZE: usize = 0x1000;

/// IHI 0048B §4.4 CPU interface registers.
const GICC_CTLR: Reg32 = Reg32(0x000);
const GICC_PMR: Reg32 = Reg32(0x004);
const GICC_IAR: Reg32 = Reg32(0x00C);
const GICC_EOIR: Reg32 = Reg32(0x010);
const GICC_CTLR_ENABLE: u32 = 1;
const CPU_INTERFACE_SIZE: usize = 0x2000;
/// Let every priority through.
const PRIORITY_MASK_ALL: u32 = 0xFF;
const CPU0_TARGET: u32 = 0x01;
/// GICC_IAR interrupt ID field and the "no pending interrupt" ID.
const IAR_INTERRUPT_ID_MASK: u32 = 0x3FF;
const SPURIOUS_INTID: u32 = 1023;

/// GICv2m MSI frame registers.
const V2M_MSI_TYPER: Reg32 = Reg32(0x008);
const V2M_MSI_SETSPI_NS: u64 = 0x040;
const V2M_FRAME_SIZE: usize = 0x1000;
const V2M_TYPER_BASE_SHIFT: u32 = 16;
const V2M_TYPER_FIELD_MASK: u32 = 0x3FF;

struct Gic {
    distributor: Mmio,
    cpu: Mmio,
    v2m: Option<(u64, Mmio)>,
}

// SAFETY: registers are accessed by single volatile operations; the
// read-modify-write sequences on the distributor run from thread context
// under `super::CONFIGURATION`; the CPU interface is banked, each CPU
// reaching its own at the same address.
unsafe impl Sync for Gic {}
// SAFETY: as above.
unsafe impl Send for Gic {}

static GIC: spin::Once<Gic> = spin::Once::new();
/// Each CPU's interface bit for GICD_SGIR's target list, by the kernel's
/// CPU index.
static TARGETS: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

pub fn init(distributor: u64, cpu_interface: u64, v2m_frame: Option<u64>) {
    let gic = GIC.call_once(|| Gic {
        distributor: super::map(distributor, DISTRIBUTOR_SIZE),
        cpu: super::map(cpu_interface, CPU_INTERFACE_SIZE),
        v2m: v2m_frame.map(|base| (base, super::map(base, V2M_FRAME_SIZE))),
    });
    gic.distributor.write32(GICD_CTLR, GICD_CTLR_ENABLE);
    init_this_cpu();
}

/// Enables the running CPU's (banked) CPU interface and learns its target
/// bit: GICD_ITARGETSR0-7 read back, for each CPU, the bit of the CPU that
/// reads them (§4.3.12), as Linux's `gic_get_cpumask` uses.
pub fn init_this_cpu() {
    let Ok(gic) = gic() else { return };
    let own_target = gic.distributor.read32(Reg32(GICD_ITARGETSR)) as u8;
    TARGETS[crate::arch::cpu::cpu_index() as usize].store(own_target, Ordering::Relaxed);
    gic.cpu.write32(GICC_PMR, PRIORITY_MASK_ALL);
    gic.cpu.write32(GICC_CTLR, GICC_CTLR_ENABLE);
}

/// Raises SGI `intid` on the CPU with kernel index `cpu`.
pub fn send_sgi(cpu: usize, intid: u32) {
    let Ok(gic) = gic() else { return };
    let target = u32::from(TARGETS[cpu].load(Ordering::Relaxed));
    // The woken CPU reads what the caller stored before: order it first.
    // SAFETY: a barrier only.
    unsafe { core::arch::asm!("dsb ishst", options(nostack)) };
    gic.distributor.write32(
        GICD_SGIR,
        target << SGIR_TARGET_LIST_SHIFT | (intid & SGIR_INTID_MASK),
    );
}

fn gic() -> Result<&'static Gic, NoInterruptController> {
    GIC.get().ok_or(NoInterruptController)
}

/// Configures SPI `intid` (edge or level), routes it to CPU 0 and enables it.
pub fn enable_spi(intid: u32, edge: bool) -> Result<(), NoInterruptController> {
    let distributor = &gic()?.distributor;
    set_byte_field(distributor, GICD_IPRIORITYR, intid, DEFAULT_PRIORITY);
    set_byte_field(distributor, GICD_ITARGETSR, intid, CPU0_TARGET);
    set_trigger(distributor, GICD_ICFGR, intid, edge);
    write_one(distributor, GICD_ISENABLER, intid);
    Ok(())
}

pub fn disable(intid: u32) {
    let Ok(gic) = gic() else { return };
    write_one(&gic.distributor, GICD_ICENABLER, intid);
}

/// The v2m frame's MSI doorbell and the SPIs it can raise (GICv2m
/// architecture: MSI_TYPER gives the first SPI and how many; a write of an
/// SPI number to MSI_SETSPI_NS raises it).
pub fn msi_spis() -> Option<(u64, core::ops::Range<u32>)> {
    let (base, frame) = gic().ok()?.v2m.as_ref()?;
    let typer = frame.read32(V2M_MSI_TYPER);
    let first = (typer >> V2M_TYPER_BASE_SHIFT) & V2M_TYPER_FIELD_MASK;
    let count = typer & V2M_TYPER_FIELD_MASK;
    Some((base + V2M_MSI_SETSPI_NS, first..first + count))
}

/// Handles one pending interrupt (called from the IRQ vector).
pub fn handle_irq() {
    let Ok(gic) = gic() else { return };
    let cpu = &gic.cpu;
    let iar = cpu.read32(GICC_IAR);
    let intid = iar & IAR_INTERRUPT_ID_MASK;
    if intid == SPURIOUS_INTID {
        return;
    }
    crate::irq::handle(intid);
    cpu.write32(GICC_EOIR, iar);
}
