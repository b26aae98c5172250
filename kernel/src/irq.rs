//! Interrupt bookkeeping shared by both architectures: a handler and a
//! delivery count per interrupt number (x86 vector, GIC INTID).
//!
//! Handlers run in interrupt context: they must be short and must not take
//! locks that thread context holds with interrupts enabled.

use core::sync::atomic::{AtomicUsize, Ordering};
use core::time::Duration;

use crate::time::CLOCK;

/// Interrupt numbers tracked (GICv2 INTIDs are below 1020; x86 vectors below 256).
const MAX_IRQS: usize = 1024;

/// An interrupt handler.
pub type Handler = fn();

static HANDLERS: [AtomicUsize; MAX_IRQS] = [const { AtomicUsize::new(0) }; MAX_IRQS];
static COUNTS: [AtomicUsize; MAX_IRQS] = [const { AtomicUsize::new(0) }; MAX_IRQS];

/// Called by the architecture's interrupt entry for interrupt `irq`.
pub fn handle(irq: u32) {
    let Some(slot) = COUNTS.get(irq as usize) else {
        return;
    };
    slot.fetch_add(1, Ordering::SeqCst);
    let handler = HANDLERS[irq as usize].load(Ordering::SeqCst);
    if handler != 0 {
        // SAFETY: only `register` stores into HANDLERS, and it stores `Handler`s.
        let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(handler) };
        handler();
    }
}

fn register(irq: u32, handler: Option<Handler>) {
    HANDLERS[irq as usize].store(handler.map_or(0, |h| h as usize), Ordering::SeqCst);
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
    COUNTS
        .get(irq as usize)
        .map_or(0, |c| c.load(Ordering::SeqCst))
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
                crate::arch::gic::init(
                    gic.distributor.base,
                    gic.cpu_interface.map_or(0, |region| region.base),
                    gic.v2m_frames.first().map(|frame| frame.base),
                )
            }
            Some(_) => {
                println!("irq: only GICv2 is driven; interrupts stay off (run with gic-version=2)")
            }
            None => println!("irq: no interrupt controller in the device tree"),
        }
    }
}

/// x86_64: takes a free vector and installs `handler` for it.
#[cfg(target_arch = "x86_64")]
pub fn alloc_vector(handler: Handler) -> Option<u8> {
    let vector = crate::arch::interrupts::ALLOCATABLE
        .clone()
        .find(|&vector| {
            HANDLERS[vector as usize]
                .compare_exchange(0, handler as usize, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        })?;
    Some(vector as u8)
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
    let intid = spis.clone().find(|&intid| {
        HANDLERS.get(intid as usize).is_some_and(|slot| {
            slot.compare_exchange(0, handler as usize, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        })
    })?;
    if crate::arch::gic::enable_spi(intid, true).is_err() {
        register(intid, None);
        return None;
    }
    Some((doorbell, intid, intid))
}

/// An interrupt for a device's MSI with `handler`: its number (for [`count`]
/// and [`free`]) and the message that raises it without interrupt remapping
/// (x86 compatibility format to this CPU; aarch64 a GICv2m doorbell write).
pub fn alloc_device_msi(handler: Handler) -> Option<(u32, iommu::MsiMessage)> {
    #[cfg(target_arch = "x86_64")]
    {
        let vector = alloc_vector(handler)?;
        let (address, data) = msi_message(vector);
        Some((u32::from(vector), iommu::MsiMessage { address, data }))
    }
    #[cfg(target_arch = "aarch64")]
    {
        let (address, data, intid) = alloc_msi(handler)?;
        Some((intid, iommu::MsiMessage { address, data }))
    }
}

/// Removes the handler of `irq` (and, on aarch64, disables it).
pub fn free(irq: u32) {
    #[cfg(target_arch = "aarch64")]
    crate::arch::gic::disable(irq);
    register(irq, None);
}
