//! The GICv2 distributor and CPU interface (Arm GIC Architecture Specification
//! v2, IHI 0048B, §4.3 and §4.4) and the GICv2m MSI frame (Arm Server Base
//! System Architecture, GICv2m appendix): an MSI is a write of the SPI number
//! to the frame's MSI_SETSPI_NS register.

use os_services::mmio::{Mmio, Reg32};

use super::{DEFAULT_PRIORITY, NoInterruptController, set_byte_field, set_trigger, write_one};

/// IHI 0048B §4.3 distributor registers.
const GICD_CTLR: Reg32 = Reg32(0x000);
const GICD_ISENABLER: usize = 0x100;
const GICD_ICENABLER: usize = 0x180;
const GICD_IPRIORITYR: usize = 0x400;
const GICD_ITARGETSR: usize = 0x800;
const GICD_ICFGR: usize = 0xC00;
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

// SAFETY: one CPU; registers are accessed by single volatile operations, and
// read-modify-write sequences run with interrupts masked by the callers
// (kernel code runs with IRQs masked only inside handlers; configuration
// happens from thread context before the interrupt is enabled).
unsafe impl Sync for Gic {}
// SAFETY: as above.
unsafe impl Send for Gic {}

static GIC: spin::Once<Gic> = spin::Once::new();

pub fn init(distributor: u64, cpu_interface: u64, v2m_frame: Option<u64>) {
    let gic = GIC.call_once(|| Gic {
        distributor: super::map(distributor, DISTRIBUTOR_SIZE),
        cpu: super::map(cpu_interface, CPU_INTERFACE_SIZE),
        v2m: v2m_frame.map(|base| (base, super::map(base, V2M_FRAME_SIZE))),
    });
    gic.distributor.write32(GICD_CTLR, GICD_CTLR_ENABLE);
    gic.cpu.write32(GICC_PMR, PRIORITY_MASK_ALL);
    gic.cpu.write32(GICC_CTLR, GICC_CTLR_ENABLE);
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
