//! The GICv3 distributor, this CPU's redistributor and the system register
//! CPU interface (Arm GIC Architecture Specification v3/v4, IHI 0069H: §12.9
//! GICD, §12.10-12.11 GICR, §12.2 ICC), with affinity routing on and every
//! interrupt in Group 1 (signalled as IRQ: QEMU's `virt` GIC has a single
//! security state, GICD_CTLR.DS = 1).
//!
//! LPIs (the ITS's interrupts) are configured in memory: one byte per LPI in
//! the configuration table (GICR_PROPBASER, §5.1.1) and one bit per INTID in
//! the pending table (GICR_PENDBASER).

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use os_services::mmio::{Mmio, Reg32, Reg64};

use super::{
    DEFAULT_PRIORITY, NoInterruptController, set_bit, set_byte_field, set_trigger, write_one,
};
use crate::arch::MAX_CPUS;
use crate::memory::frames::{self, Frames};
use crate::time::CLOCK;

/// IHI 0069H §12.9 distributor registers.
const GICD_CTLR: Reg32 = Reg32(0x0000);
const GICD_IGROUPR: usize = 0x0080;
const GICD_ISENABLER: usize = 0x0100;
const GICD_ICENABLER: usize = 0x0180;
const GICD_IPRIORITYR: usize = 0x0400;
const GICD_ICFGR: usize = 0x0C00;
const GICD_IROUTER: usize = 0x6000;
/// GICD_CTLR: EnableGrp1 (bit 1, with DS = 1), ARE (bit 4), RWP (bit 31).
const GICD_CTLR_ENABLE_GRP1: u32 = 1 << 1;
const GICD_CTLR_ARE: u32 = 1 << 4;
const GICD_CTLR_RWP: u32 = 1 << 31;
const DISTRIBUTOR_SIZE: usize = 0x1_0000;

/// IHI 0069H §12.10 redistributor registers: RD_base, then SGI_base 64 KiB on.
const GICR_CTLR: Reg32 = Reg32(0x0000);
const GICR_TYPER: Reg64 = Reg64(0x0008);
const GICR_WAKER: Reg32 = Reg32(0x0014);
const GICR_PROPBASER: Reg64 = Reg64(0x0070);
const GICR_PENDBASER: Reg64 = Reg64(0x0078);
const SGI_BASE: usize = 0x1_0000;
const GICR_IGROUPR0: Reg32 = Reg32(SGI_BASE + 0x0080);
const GICR_ISENABLER0: usize = SGI_BASE + 0x0100;
const GICR_ICENABLER0: usize = SGI_BASE + 0x0180;
const GICR_IPRIORITYR: usize = SGI_BASE + 0x0400;
const GICR_ICFGR: usize = SGI_BASE + 0x0C00;
const REDISTRIBUTOR_SIZE: usize = 0x2_0000;
/// GICR_CTLR.EnableLPIs; GICR_WAKER ProcessorSleep and ChildrenAsleep;
/// GICR_TYPER.Processor_Number (bits 23:8).
const GICR_CTLR_ENABLE_LPIS: u32 = 1 << 0;
const GICR_WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const GICR_WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
const GICR_TYPER_PROCESSOR_SHIFT: u32 = 8;
const GICR_TYPER_PROCESSOR_MASK: u64 = 0xFFFF;

/// GICR_PROPBASER / PENDBASER fields (§12.11.26-27): physical address,
/// IDbits (4:0, number of INTID bits - 1), inner cacheability 9:7 (0b111:
/// write-back, read- and write-allocate) and shareability 11:10 (0b01: inner).
const TABLE_CACHEABLE: u64 = 0b111 << 7 | 0b01 << 10;
const PENDBASER_ADDRESS_ALIGN: usize = 1 << 16;
/// LPIs this kernel uses: INTIDs 8192..16384 (14 INTID bits).
const INTID_BITS: u32 = 14;
const LPI_COUNT: usize = (1 << INTID_BITS) - super::FIRST_LPI as usize;
/// LPI configuration byte: priority in bits 7:2, Enable in bit 0 (§5.1.1).
const LPI_ENABLE: u8 = 1;

const FIRST_SPI: u32 = 32;
/// INTIDs 1020-1023 are special (1023: no pending interrupt, §2.2.1).
const FIRST_SPECIAL_INTID: u32 = 1020;
const REGISTER_WAIT: Duration = Duration::from_millis(100);

struct Gic {
    distributor: Mmio,
    /// Where the redistributors' frames start (one frame per CPU).
    redistributors_base: u64,
    /// The LPI configuration table (one byte per LPI from INTID 8192).
    lpi_config: Frames,
}

// SAFETY: registers are accessed by single volatile operations and the LPI
// table by single byte stores, from thread context (interrupt handlers only
// use the CPU interface's system registers); the read-modify-write
// sequences on shared registers run under `super::CONFIGURATION`.
unsafe impl Sync for Gic {}
// SAFETY: as above.
unsafe impl Send for Gic {}

static GIC: spin::Once<Gic> = spin::Once::new();
/// A CPU's own redistributor frame.
struct Redistributor(Mmio);

// SAFETY: each frame is used by its own CPU (SGI/PPI configuration and the
// wake-up) and, for the boot CPU's, by `init` before others start; single
// volatile accesses.
unsafe impl Sync for Redistributor {}
// SAFETY: as above.
unsafe impl Send for Redistributor {}

/// Each CPU's own redistributor frame, by the kernel's CPU index.
static REDISTRIBUTORS: [spin::Once<Redistributor>; MAX_CPUS] =
    [const { spin::Once::new() }; MAX_CPUS];
/// Each CPU's MPIDR affinity, by the kernel's CPU index, for SGIs.
static AFFINITIES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// GICR_TYPER (§12.11.35): Affinity_Value in bits 63:32, Last (bit 4: the
/// region's last frame), VLPIS (bit 1: the frame has the two extra 64 KiB
/// pages of GICv4 virtual LPIs).
const GICR_TYPER_AFFINITY_SHIFT: u32 = 32;
const GICR_TYPER_LAST: u64 = 1 << 4;
const GICR_TYPER_VLPIS: u64 = 1 << 1;
const GICV4_FRAME_SIZE: u64 = 0x4_0000;
/// More frames than this in one region is a malformed GIC, not a big one.
const MAX_FRAMES: usize = 256;
/// ICC_SGI1R_EL1 (§12.2.22): Aff3 55:48, RS 47:44, Aff2 39:32, INTID
/// 27:24, Aff1 23:16, TargetList 15:0 (one bit per Aff0 value in the range
/// RS selects: RS * 16 to RS * 16 + 15).
const SGI1R_AFF3_SHIFT: u32 = 48;
const SGI1R_RS_SHIFT: u32 = 44;
/// Aff0 values one TargetList covers.
const SGI_TARGETS_PER_RANGE: u64 = 16;
const SGI1R_AFF2_SHIFT: u32 = 32;
const SGI1R_INTID_SHIFT: u32 = 24;
const SGI1R_AFF1_SHIFT: u32 = 16;

/// The running CPU's affinity as GICR_TYPER writes it: Aff3.Aff2.Aff1.Aff0.
fn own_affinity() -> u32 {
    let mpidr = crate::arch::boot_cpu_id();
    (((mpidr >> 32) & 0xFF) << 24 | (mpidr & 0xFF_FFFF)) as u32
}

/// Finds the running CPU's redistributor frame by its affinity (§9.1: the
/// frames of a region follow each other; the last one says so).
fn find_redistributor(base: u64) -> Result<Mmio, &'static str> {
    let wanted = own_affinity();
    let mut frame = base;
    for _ in 0..MAX_FRAMES {
        let gicr = super::map(frame, REDISTRIBUTOR_SIZE);
        let typer = gicr.read64(GICR_TYPER);
        if (typer >> GICR_TYPER_AFFINITY_SHIFT) as u32 == wanted {
            return Ok(gicr);
        }
        if typer & GICR_TYPER_LAST != 0 {
            break;
        }
        frame += if typer & GICR_TYPER_VLPIS != 0 {
            GICV4_FRAME_SIZE
        } else {
            REDISTRIBUTOR_SIZE as u64
        };
    }
    Err("no redistributor frame has this CPU's affinity")
}

/// The running CPU's redistributor.
fn this_redistributor() -> Result<&'static Mmio, NoInterruptController> {
    REDISTRIBUTORS[crate::arch::cpu::cpu_index() as usize]
        .get()
        .map(|frame| &frame.0)
        .ok_or(NoInterruptController)
}

fn gic() -> Result<&'static Gic, NoInterruptController> {
    GIC.get().ok_or(NoInterruptController)
}

/// The system registers of the CPU interface (§12.2), by encoding.
mod icc {
    macro_rules! write_sysreg {
        ($name:literal, $value:expr) => {
            // SAFETY: writing a GIC CPU interface register only changes how
            // this CPU takes interrupts; the callers order it after the GIC
            // is configured.
            unsafe { core::arch::asm!(concat!("msr ", $name, ", {}"), in(reg) $value as u64, options(nostack)) }
        };
    }
    /// ICC_SRE_EL1.SRE: the system register interface.
    pub fn enable_system_registers() {
        write_sysreg!("S3_0_C12_C12_5", 1u64);
        // SAFETY: a context synchronisation barrier only.
        unsafe { core::arch::asm!("isb", options(nostack)) };
    }
    /// ICC_PMR_EL1: let every priority through.
    pub fn unmask_all_priorities() {
        write_sysreg!("S3_0_C4_C6_0", 0xFFu64);
    }
    /// ICC_BPR1_EL1 = 0: no preemption grouping; ICC_IGRPEN1_EL1 = 1.
    pub fn enable_group1() {
        write_sysreg!("S3_0_C12_C12_3", 0u64);
        write_sysreg!("S3_0_C12_C12_7", 1u64);
        // SAFETY: a context synchronisation barrier only.
        unsafe { core::arch::asm!("isb", options(nostack)) };
    }
    /// ICC_IAR1_EL1: acknowledges the highest-priority pending interrupt.
    pub fn acknowledge() -> u32 {
        let value: u64;
        // SAFETY: reading the acknowledge register takes the interrupt; the
        // caller ends it with `end`.
        unsafe { core::arch::asm!("mrs {}, S3_0_C12_C12_0", out(reg) value, options(nostack)) };
        value as u32
    }
    /// ICC_EOIR1_EL1: priority drop and deactivation (EOImode 0).
    pub fn end(intid: u32) {
        write_sysreg!("S3_0_C12_C12_1", intid);
    }
}

fn wait(what: &'static str, done: impl FnMut() -> Option<()>) -> Result<(), &'static str> {
    os_services::wait_until(&CLOCK, REGISTER_WAIT, done).map_err(|_| what)
}

/// Brings the distributor and this CPU's redistributor up; returns the
/// redistributor's processor number (the ITS's target, GITS_TYPER.PTA = 0).
pub fn init(distributor: u64, redistributor: u64) -> Result<u32, &'static str> {
    let lpi_config = frames::alloc_contiguous(LPI_COUNT / frames::FRAME_SIZE, frames::FRAME_SIZE)
        .ok_or("no memory for the LPI configuration table")?;
    let pending = frames::alloc_contiguous(
        PENDBASER_ADDRESS_ALIGN / frames::FRAME_SIZE,
        PENDBASER_ADDRESS_ALIGN,
    )
    .ok_or("no memory for the LPI pending table")?;
    let gic = GIC.call_once(|| Gic {
        distributor: super::map(distributor, DISTRIBUTOR_SIZE),
        redistributors_base: redistributor,
        lpi_config,
    });
    let gicd = &gic.distributor;
    gicd.write32(GICD_CTLR, GICD_CTLR_ARE | GICD_CTLR_ENABLE_GRP1);
    wait("GICD_CTLR.RWP", || {
        (gicd.read32(GICD_CTLR) & GICD_CTLR_RWP == 0).then_some(())
    })?;
    init_this_cpu()?;
    let gicr = this_redistributor().map_err(|_| "no redistributor")?;
    // LPIs, on the boot CPU's redistributor only (the ITS's collection
    // targets it): the tables, then EnableLPIs (§5.1).
    gicr.write64(
        GICR_PROPBASER,
        gic.lpi_config.phys | TABLE_CACHEABLE | u64::from(INTID_BITS - 1),
    );
    gicr.write64(GICR_PENDBASER, pending.phys | TABLE_CACHEABLE);
    gicr.write32(GICR_CTLR, gicr.read32(GICR_CTLR) | GICR_CTLR_ENABLE_LPIS);
    let typer = gicr.read64(GICR_TYPER);
    Ok(((typer >> GICR_TYPER_PROCESSOR_SHIFT) & GICR_TYPER_PROCESSOR_MASK) as u32)
}

/// Brings up the running CPU's redistributor (found by affinity, woken,
/// SGIs and PPIs in Group 1) and its system register interface. The boot
/// CPU runs it from [`init`], every other CPU once at start.
pub fn init_this_cpu() -> Result<(), &'static str> {
    let gic = GIC.get().ok_or("the distributor is not up")?;
    let index = crate::arch::cpu::cpu_index() as usize;
    AFFINITIES[index].store(crate::arch::boot_cpu_id(), Ordering::Relaxed);
    let gicr = match REDISTRIBUTORS[index].get() {
        Some(frame) => &frame.0,
        None => {
            let found = find_redistributor(gic.redistributors_base)?;
            &REDISTRIBUTORS[index].call_once(|| Redistributor(found)).0
        }
    };
    // Wake the redistributor (§12.11.38): it forwards nothing while asleep.
    gicr.write32(
        GICR_WAKER,
        gicr.read32(GICR_WAKER) & !GICR_WAKER_PROCESSOR_SLEEP,
    );
    wait("GICR_WAKER.ChildrenAsleep", || {
        (gicr.read32(GICR_WAKER) & GICR_WAKER_CHILDREN_ASLEEP == 0).then_some(())
    })?;
    // Every SGI and PPI in Group 1.
    gicr.write32(GICR_IGROUPR0, u32::MAX);
    icc::enable_system_registers();
    icc::unmask_all_priorities();
    icc::enable_group1();
    Ok(())
}

/// Raises SGI `intid` on the CPU with kernel index `cpu` (§12.2.22: the
/// target by its affinity, Aff0 as a bit of the target list in the range
/// RS selects). An Aff0 of 16 or more needs range selection, which a GIC
/// has when ICC_CTLR_EL1.RSS is set; QEMU's virt numbers at most 16 CPUs a
/// cluster, and the kernel starts at most 8.
pub fn send_sgi(cpu: usize, intid: u32) {
    let mpidr = AFFINITIES[cpu].load(Ordering::Relaxed);
    let aff0 = mpidr & 0xFF;
    let value = ((mpidr >> 32) & 0xFF) << SGI1R_AFF3_SHIFT
        | (aff0 / SGI_TARGETS_PER_RANGE) << SGI1R_RS_SHIFT
        | ((mpidr >> 16) & 0xFF) << SGI1R_AFF2_SHIFT
        | u64::from(intid & 0xF) << SGI1R_INTID_SHIFT
        | ((mpidr >> 8) & 0xFF) << SGI1R_AFF1_SHIFT
        | 1 << (aff0 % SGI_TARGETS_PER_RANGE);
    // SAFETY: ICC_SGI1R_EL1 only raises the SGI; the barrier orders the
    // caller's earlier stores before it (the woken CPU reads them).
    unsafe {
        core::arch::asm!(
            "dsb ishst",
            "msr S3_0_C12_C11_5, {}",
            "isb",
            in(reg) value,
            options(nostack)
        )
    };
}

/// Configures a PPI (in this CPU's redistributor) or an SPI (in the
/// distributor, routed to this CPU): Group 1, default priority, edge or
/// level, enabled.
pub fn enable(intid: u32, edge: bool) -> Result<(), NoInterruptController> {
    let gic = gic()?;
    if intid < FIRST_SPI {
        let gicr = this_redistributor()?;
        set_byte_field(gicr, GICR_IPRIORITYR, intid, DEFAULT_PRIORITY);
        set_trigger(gicr, GICR_ICFGR, intid, edge);
        write_one(gicr, GICR_ISENABLER0, intid);
    } else {
        let gicd = &gic.distributor;
        set_bit(gicd, GICD_IGROUPR, intid, true);
        set_byte_field(gicd, GICD_IPRIORITYR, intid, DEFAULT_PRIORITY);
        set_trigger(gicd, GICD_ICFGR, intid, edge);
        // Affinity 0.0.0.0: this CPU (IRM = 0).
        gicd.write64(Reg64(GICD_IROUTER + intid as usize * 8), 0);
        write_one(gicd, GICD_ISENABLER, intid);
    }
    Ok(())
}

pub fn disable(intid: u32) {
    let Ok(gic) = gic() else { return };
    if intid < FIRST_SPI {
        if let Ok(gicr) = this_redistributor() {
            write_one(gicr, GICR_ICENABLER0, intid);
        }
    } else if intid < super::FIRST_LPI {
        write_one(&gic.distributor, GICD_ICENABLER, intid);
    }
}

/// Enables or disables LPI `intid` in the configuration table; the ITS's INV
/// makes the redistributor read it again.
pub fn configure_lpi(intid: u32, enabled: bool) {
    let Ok(gic) = gic() else { return };
    let Some(index) = intid
        .checked_sub(super::FIRST_LPI)
        .map(|i| i as usize)
        .filter(|&i| i < LPI_COUNT)
    else {
        return;
    };
    let value = DEFAULT_PRIORITY as u8 | if enabled { LPI_ENABLE } else { 0 };
    // SAFETY: `index` is inside the table this driver owns (LPI_COUNT bytes,
    // identity-mapped); a single byte store.
    unsafe { core::ptr::write_volatile(gic.lpi_config.as_mut_ptr().add(index), value) };
    // The redistributor reads the table from memory: the store must reach
    // it before the ITS command that makes it look (`dma_wmb`, §5.1.1).
    // SAFETY: a barrier only.
    unsafe { core::arch::asm!("dsb oshst", options(nostack)) };
}

/// Handles one pending interrupt.
pub fn handle_irq() {
    let intid = icc::acknowledge() & 0xFF_FFFF;
    if (FIRST_SPECIAL_INTID..super::FIRST_LPI).contains(&intid) {
        return;
    }
    crate::irq::handle(intid);
    icc::end(intid);
}
