//! Host stand-ins for the OS services, for the drivers' host tests
//! (feature `host-fakes`).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use os_services::{Clock, DmaMemory, DmaRegion};

/// Heap memory standing in for physical memory: phys == virt. Checks every
/// free against what it handed out (a double or foreign free panics) and
/// counts what is live, for leak checks.
#[derive(Default)]
pub struct HostDma {
    live: Mutex<HashMap<u64, Layout>>,
}

impl HostDma {
    /// Allocations not yet freed.
    pub fn live(&self) -> usize {
        self.live.lock().unwrap().len()
    }
}

impl DmaMemory for HostDma {
    fn alloc(&self, len: usize, align: usize) -> Option<DmaRegion> {
        let len = len.next_multiple_of(4096).max(4096);
        let layout = Layout::from_size_align(len, align.max(4096)).ok()?;
        // SAFETY: the layout has a non-zero size.
        let virt = unsafe { alloc_zeroed(layout) };
        if virt.is_null() {
            return None;
        }
        self.live.lock().unwrap().insert(virt as u64, layout);
        Some(DmaRegion {
            phys: virt as u64,
            virt,
            len,
        })
    }

    fn free(&self, region: DmaRegion) {
        let layout = self
            .live
            .lock()
            .unwrap()
            .remove(&region.phys)
            .expect("free of memory HostDma did not hand out (or freed twice)");
        assert_eq!(layout.size(), region.len, "free with another length");
        // SAFETY: allocated by `alloc` with exactly this layout, freed once.
        unsafe { dealloc(region.phys as *mut u8, layout) }
    }

    fn phys_to_virt(&self, phys: u64) -> *mut u8 {
        phys as *mut u8
    }
}

impl Drop for HostDma {
    fn drop(&mut self) {
        // Leaks are the tests' to find (`live`); the heap gets its memory back.
        for (phys, layout) in self.live.get_mut().unwrap().drain() {
            // SAFETY: each entry was allocated by `alloc` with this layout.
            unsafe { dealloc(phys as *mut u8, layout) }
        }
    }
}

/// A clock that advances `step_ns` on every reading, so a bounded wait on a
/// condition that never holds ends after a known number of polls.
pub struct SteppingClock {
    now: AtomicU64,
    step_ns: u64,
}

impl SteppingClock {
    pub const fn new(step_ns: u64) -> Self {
        Self {
            now: AtomicU64::new(0),
            step_ns,
        }
    }
}

impl Clock for SteppingClock {
    fn now_ns(&self) -> u64 {
        self.now.fetch_add(self.step_ns, Ordering::SeqCst)
    }
}
