//! Host builds: what a driver does that a model of the hardware cannot see
//! in memory (barriers, register writes), reported in order to an observer,
//! so that the drivers' tests can check the order a spec requires (a queue
//! entry written, then a `dma_wmb`, then the doorbell). On the bare-metal
//! targets nothing is reported and this costs nothing.

/// Which barrier was issued (`crate::barrier`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Barrier {
    /// `dma_wmb`: earlier memory writes before later ones, for a device.
    DmaWmb,
    /// `dma_rmb`: earlier memory reads before later ones, for a device.
    DmaRmb,
    /// `io_mb`: every earlier memory access before every later one and before register accesses.
    IoMb,
}

/// One thing a driver did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// A barrier was issued.
    Barrier(Barrier),
    /// A register write of `bytes` at `offset` in its block.
    MmioWrite {
        /// Where the register lies in its block.
        offset: usize,
        /// The width of the write.
        bytes: usize,
    },
}

#[cfg(target_os = "none")]
#[inline(always)]
pub(crate) fn notify(_: Observed) {}

#[cfg(not(target_os = "none"))]
static OBSERVER: core::sync::atomic::AtomicPtr<()> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

#[cfg(not(target_os = "none"))]
pub(crate) fn notify(observed: Observed) {
    let observer = OBSERVER.load(core::sync::atomic::Ordering::Acquire);
    if !observer.is_null() {
        // SAFETY: only `observe` stores here, and only `fn(Observed)` pointers.
        let observer: fn(Observed) = unsafe { core::mem::transmute(observer) };
        observer(observed);
    }
}

/// Has `observer` called for everything observed from now on (`None`: no
/// more). One observer for the whole process: it should record per thread.
#[cfg(not(target_os = "none"))]
pub fn observe(observer: Option<fn(Observed)>) {
    let pointer = observer.map_or(core::ptr::null_mut(), |f| f as *mut ());
    OBSERVER.store(pointer, core::sync::atomic::Ordering::Release);
}
