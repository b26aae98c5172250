//! Interrupt bookkeeping shared by both architectures: a handler and a
//! delivery count per interrupt number (x86 vector, GIC INTID).
//!
//! Handlers run in interrupt context: they must be short and must not take
//! locks that thread context holds with interrupts enabled.

use core::sync::atomic::{AtomicUsize, Ordering};
use core::time::Duration;

use crate::time::CLOCK;

/// Interrupt numbers tracked: x86 vectors below 256, GIC SGIs, PPIs and SPIs
/// below 1020, then [`LPI_SLOTS`] GICv3 LPIs from INTID 8192.
const IRQ_SLOTS: usize = 1024;
const LPI_SLOTS: usize = 256;
const MAX_IRQS: usize = IRQ_SLOTS + LPI_SLOTS;
/// The first LPI INTID (GICv3: LPIs start at 8192).
const FIRST_LPI: u32 = 8192;

/// Where interrupt `irq` is counted and its handler kept.
fn slot(irq: u32) -> Option<usize> {
    match irq.checked_sub(FIRST_LPI) {
        Some(lpi) => (lpi < LPI_SLOTS as u32).then_some(IRQ_SLOTS + lpi as usize),
        None => (irq < IRQ_SLOTS as u32).then_some(irq as usize),
    }
}

/// An interrupt handler.
pub type Handler = fn();

static HANDLERS: [AtomicUsize; MAX_IRQS] = [const { AtomicUsize::new(0) }; MAX_IRQS];
static COUNTS: [AtomicUsize; MAX_IRQS] = [const { AtomicUsize::new(0) }; MAX_IRQS];

/// Called by the architecture's interrupt entry for interrupt `irq`.
pub fn handle(irq: u32) {
    let Some(index) = slot(irq) else {
        return;
    };
    COUNTS[index].fetch_add(1, Ordering::SeqCst);
    let handler = HANDLERS[index].load(Ordering::SeqCst);
    if handler != 0 {
        // SAFETY: only `register` stores into HANDLERS, and it stores `Handler`s.
        let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(handler) };
        handler();
    }
}

fn register(irq: u32, handler: Option<Handler>) {
    if let Some(index) = slot(irq) {
        HANDLERS[index].store(handler.map_or(0, |h| h as usize), Ordering::SeqCst);
    }
}

/// Installs `handler` for the first free interrupt of `irqs`; returns it.
fn claim(mut irqs: impl Iterator<Item = u32>, handler: Handler) -> Option<u32> {
    irqs.find(|&irq| {
        slot(irq).is_some_and(|index| {
            HANDLERS[index]
                .compare_exchange(0, handler as usize, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        })
    })
}

/// Interrupts with a handler installed (leak checks).
pub fn handlers_in_use() -> usize {
    HANDLERS
        .iter()
        .filter(|handler| handler.load(Ordering::SeqCst) != 0)
        .count()
}

/// How many times `irq` has been delivered since boot.
pub fn count(irq: u32) -> usize {
    slot(irq).map_or(0, |index| COUNTS[index].load(Ordering::SeqCst))
}

/// Waits (bounded) until `irq` has been delivered more than `seen` times.
pub fn wait_for(irq: u32, seen: usize, timeout: Duration) -> bool {
    os_services::wait_until(&CLOCK, timeout, || (count(irq) > seen).then_some(())).is_ok()
}

/// Brings up the interrupt controller the platform describes.
pub fn init(platform: &crate::platform::Platform) {
    #[cfg(target_arch = "x86_64")]
    {
        let _ = platform;
        crate::arch::interrupts::init();
    }
    #[cfg(target_arch = "aarch64")]
    {
        let crate::platform::Firmware::DeviceTree(tree) = &platform.firmware;
        match tree.gic.as_ref() {
            Some(gic) if gic.version == firmware::devicetree::GicVersion::V2 => {
                crate::arch::gic::init_v2(
                    gic.distributor.base,
                    gic.cpu_interface.map_or(0, |region| region.base),
                    gic.v2m_frames.first().map(|frame| frame.base),
                )
            }
            Some(gic) => {
                let Some(redistributor) = gic.redistributors.first() else {
                    println!("irq: a GICv3 without redistributors; interrupts stay off");
                    return;
                };
                if let Err(why) = crate::arch::gic::init_v3(
                    gic.distributor.base,
                    redistributor.base,
                    gic.its.first().map(|its| its.base),
                ) {
                    println!("irq: GICv3 not brought up: {why}; interrupts stay off");
                }
            }
            None => println!("irq: no interrupt controller in the device tree"),
        }
    }
}

/// x86_64: takes a free vector and installs `handler` for it.
#[cfg(target_arch = "x86_64")]
pub fn alloc_vector(handler: Handler) -> Option<u8> {
    let vector = claim(crate::arch::interrupts::ALLOCATABLE.clone(), handler)?;
    Some(vector as u8)
}

/// x86_64: installs `handler` for a vector outside the allocatable range
/// (the inter-processor interrupts'), for good.
#[cfg(target_arch = "x86_64")]
pub fn install_system_vector(vector: u8, handler: Handler) {
    debug_assert!(!crate::arch::interrupts::ALLOCATABLE.contains(&u32::from(vector)));
    register(u32::from(vector), Some(handler));
}

/// x86_64: the compatibility-format MSI (address, data) for `vector`.
#[cfg(target_arch = "x86_64")]
pub fn msi_message(vector: u8) -> (u64, u32) {
    crate::arch::interrupts::msi_message(vector)
}

/// aarch64: enables SPI `intid` with `handler`.
#[cfg(target_arch = "aarch64")]
pub fn enable_spi(
    intid: u32,
    edge: bool,
    handler: Handler,
) -> Result<(), crate::arch::gic::NoInterruptController> {
    register(intid, Some(handler));
    crate::arch::gic::enable_spi(intid, edge)
}

/// aarch64: an MSI through the GICv2m frame: (doorbell address, data, INTID).
/// The SPI is the frame's lowest one without a handler, so that a freed
/// one is taken again.
#[cfg(target_arch = "aarch64")]
pub fn alloc_msi(handler: Handler) -> Option<(u64, u32, u32)> {
    let (doorbell, spis) = crate::arch::gic::msi_spis()?;
    let intid = claim(spis, handler)?;
    if crate::arch::gic::enable_spi(intid, true).is_err() {
        register(intid, None);
        return None;
    }
    Some((doorbell, intid, intid))
}

/// aarch64: an MSI through the ITS for the device whose writes carry ITS
/// DeviceID `device`: (doorbell address, data, INTID of its LPI).
#[cfg(target_arch = "aarch64")]
fn alloc_its_msi(handler: Handler, device: u32) -> Option<(u64, u32, u32)> {
    let intid = claim(FIRST_LPI..FIRST_LPI + LPI_SLOTS as u32, handler)?;
    match crate::arch::gic::map_lpi(device, intid) {
        Ok((doorbell, data)) => Some((doorbell, data, intid)),
        Err(why) => {
            println!("irq: LPI {intid} for device {device:#x} not mapped: {why}");
            register(intid, None);
            None
        }
    }
}

/// Whether the interrupt controller itself keeps one device's MSIs from
/// raising another's interrupts (a GICv3 ITS: per-DeviceID translation);
/// a GICv2m frame or an x86 local APIC does not.
pub fn controller_isolates_msi() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        crate::arch::gic::has_its()
    }
    #[cfg(target_arch = "x86_64")]
    {
        false
    }
}

/// An interrupt for the MSI of the PCI function whose DMA carries requester
/// id `requester`, with `handler`: its number (for [`count`] and [`free`])
/// and the message that raises it without interrupt remapping (x86
/// compatibility format to this CPU; aarch64 an ITS write for the device's
/// DeviceID, or a GICv2m doorbell write).
pub fn alloc_device_msi(handler: Handler, requester: u16) -> Option<(u32, iommu::MsiMessage)> {
    #[cfg(target_arch = "x86_64")]
    {
        let _ = requester;
        let vector = alloc_vector(handler)?;
        let (address, data) = msi_message(vector);
        Some((u32::from(vector), iommu::MsiMessage { address, data }))
    }
    #[cfg(target_arch = "aarch64")]
    {
        let (address, data, intid) = if crate::arch::gic::has_its() {
            let crate::platform::Firmware::DeviceTree(tree) = &crate::platform::get().firmware;
            let (_, device) = tree.pcie_host()?.msi_for_rid(requester)?;
            alloc_its_msi(handler, device)?
        } else {
            alloc_msi(handler)?
        };
        Some((intid, iommu::MsiMessage { address, data }))
    }
}

/// Removes the handler of `irq` (and, on aarch64, disables it, or unmaps
/// its LPI from the ITS).
pub fn free(irq: u32) {
    #[cfg(target_arch = "aarch64")]
    if irq >= FIRST_LPI {
        crate::arch::gic::unmap_lpi(irq);
    } else {
        crate::arch::gic::disable(irq);
    }
    register(irq, None);
}
