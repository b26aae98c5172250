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

/// What [`HostDma::alloc_uninit`] fills its memory with: a structure read
/// before it is written shows it (entries that are not zero, a table walk
/// into an address no allocation has).
const UNINIT_FILL: u8 = 0xA5;

impl HostDma {
    fn allocate(&self, len: usize, align: usize, zeroed: bool) -> Option<DmaRegion> {
        let len = len.next_multiple_of(4096).max(4096);
        let layout = Layout::from_size_align(len, align.max(4096)).ok()?;
        // SAFETY: the layout has a non-zero size.
        let virt = unsafe { alloc_zeroed(layout) };
        if virt.is_null() {
            return None;
        }
        if !zeroed {
            // SAFETY: `len` bytes just allocated, ours alone.
            unsafe { virt.write_bytes(UNINIT_FILL, len) };
        }
        self.live.lock().unwrap().insert(virt as u64, layout);
        Some(DmaRegion {
            phys: virt as u64,
            virt,
            len,
        })
    }
}

impl DmaMemory for HostDma {
    fn alloc(&self, len: usize, align: usize) -> Option<DmaRegion> {
        self.allocate(len, align, true)
    }

    /// Memory as a kernel's recycled frames may come: not zero.
    fn alloc_uninit(&self, len: usize, align: usize) -> Option<DmaRegion> {
        self.allocate(len, align, false)
    }

    fn free(&self, region: DmaRegion) {
        let layout = self
            .live
            .lock()
            .unwrap()
            .remove(&region.phys)
            .expect("free of memory HostDma did not hand out (or freed twice)");
        assert_eq!(layout.size(), region.len, "free with another length");
        // SAFETY: allocated by `allocate` with exactly this layout, freed once.
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
///
/// Each thread's readings advance that thread's time only, as each CPU's
/// bounded wait counts its own polls: with one count for all, the waiters
/// polling for a thread that is not running (a host with fewer cores than
/// threads) used up its waiter's bound between them, and a flush that only
/// waited for another CPU's publish timed out now and then under load. For
/// the same reason [`Clock::relax`] hands the core on.
pub struct SteppingClock {
    /// Names this clock among the per-thread times.
    id: u64,
    step_ns: u64,
}

/// Where clock ids come from.
static CLOCK_IDS: AtomicU64 = AtomicU64::new(0);

std::thread_local! {
    /// This thread's time on each [`SteppingClock`] it has read, by id.
    static THREAD_TIMES: std::cell::RefCell<HashMap<u64, u64>> =
        std::cell::RefCell::new(HashMap::new());
}

impl SteppingClock {
    /// A clock at 0 (for every thread) that advances `step_ns` each time
    /// a thread reads it.
    pub fn new(step_ns: u64) -> Self {
        Self {
            id: CLOCK_IDS.fetch_add(1, Ordering::Relaxed),
            step_ns,
        }
    }
}

impl Clock for SteppingClock {
    fn now_ns(&self) -> u64 {
        THREAD_TIMES.with(|times| {
            let mut times = times.borrow_mut();
            let now = times.entry(self.id).or_insert(0);
            let read = *now;
            *now += self.step_ns;
            read
        })
    }

    fn relax(&self) {
        std::thread::yield_now();
    }
}

/// Cache maintenance that only records what it was asked to do, per thread:
/// what a test hands a driver in place of the kernel's `clflush` or
/// `dc cvac` / `dc civac`, to check that every line the device reads was
/// written back and every line it wrote was dropped before the CPU read it.
pub mod maintenance {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    use crate::CacheMaintenance;

    /// Bytes of a cache line: the unit a clean writes back.
    const LINE: u64 = 64;

    std::thread_local! {
        static CLEANED: RefCell<Vec<(u64, usize)>> = const { RefCell::new(Vec::new()) };
        static INVALIDATED: RefCell<Vec<(u64, usize)>> = const { RefCell::new(Vec::new()) };
        /// Memory as a device that does not snoop reads it: every line as it
        /// was when last written back, by line address.
        static WRITTEN_BACK: RefCell<BTreeMap<u64, [u64; 8]>> = const { RefCell::new(BTreeMap::new()) };
    }

    /// Records a clean of `len` bytes at `start` and writes its lines back:
    /// from now on a device that does not snoop reads them as they are now
    /// ([`read_as_device`]).
    pub fn clean(start: *const u8, len: usize) {
        CLEANED.with(|ranges| ranges.borrow_mut().push((start as u64, len)));
        if len == 0 {
            return;
        }
        let first = start as u64 / LINE * LINE;
        let end = start as u64 + len as u64;
        WRITTEN_BACK.with(|memory| {
            let mut memory = memory.borrow_mut();
            for line in (first..end).step_by(LINE as usize) {
                // SAFETY: the driver cleans only memory it owns, allocated in
                // whole pages (whole lines) from the host.
                let words = core::array::from_fn(|word| unsafe {
                    core::ptr::read_volatile((line as *const u64).add(word))
                });
                memory.insert(line, words);
            }
        });
    }

    /// The 8 bytes at `address` (8-aligned) as a device that does not snoop
    /// reads them: from the line as it was last written back; `None` when
    /// it never was (memory then holds whatever it held before: the CPU's
    /// writes are still in its cache).
    pub fn read_as_device(address: u64) -> Option<u64> {
        let line = address / LINE * LINE;
        WRITTEN_BACK.with(|memory| {
            memory
                .borrow()
                .get(&line)
                .map(|words| words[((address - line) / 8) as usize])
        })
    }

    /// Records an invalidation of `len` bytes at `start`.
    pub fn invalidate(start: *const u8, len: usize) {
        INVALIDATED.with(|ranges| ranges.borrow_mut().push((start as u64, len)));
    }

    /// Both, for a driver that takes a [`CacheMaintenance`].
    pub const RECORDING: CacheMaintenance = CacheMaintenance { clean, invalidate };

    /// The cleans recorded on this thread since the last call, oldest first.
    pub fn take_cleaned() -> Vec<(u64, usize)> {
        CLEANED.with(|ranges| ranges.take())
    }

    /// The invalidations recorded on this thread since the last call.
    pub fn take_invalidated() -> Vec<(u64, usize)> {
        INVALIDATED.with(|ranges| ranges.take())
    }

    /// Whether one of `ranges` covers `[at, at + len)` whole.
    pub fn covers(ranges: &[(u64, usize)], at: u64, len: u64) -> bool {
        ranges
            .iter()
            .any(|&(start, n)| start <= at && at + len <= start + n as u64)
    }
}

/// What a driver does to device-visible memory, in order: every write to a
/// [`crate::DmaBuffer`], every barrier (`os_services::barrier`) and every
/// register write (`os_services::mmio`), recorded
/// on the thread that asks, so that a test or a model can check the order
/// the spec requires (a valid bit written last, after a barrier; entries
/// before the doorbell).
pub mod trace {
    use std::cell::RefCell;
    use std::vec::Vec;

    use os_services::barrier::Barrier;
    use os_services::observe::{self, Observed};

    /// One step of the trace.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Step {
        /// `len` bytes written at bus address `phys`.
        Write {
            /// The bus address of the first byte.
            phys: u64,
            /// The bytes written.
            len: usize,
        },
        /// A barrier was issued.
        Barrier(Barrier),
        /// A register written (`offset` in its block); a model whose
        /// registers are not `Mmio` records its own with [`mmio`].
        Mmio {
            /// Where the register lies in its block.
            offset: usize,
        },
    }

    std::thread_local! {
        static TRACE: RefCell<Option<Vec<Step>>> = const { RefCell::new(None) };
    }

    fn push(step: Step) {
        TRACE.with(|trace| {
            if let Some(steps) = trace.borrow_mut().as_mut() {
                steps.push(step);
            }
        });
    }

    pub(crate) fn write(phys: u64, len: usize) {
        push(Step::Write { phys, len });
    }

    /// Records a register write at `offset` (for models with their own
    /// register file).
    pub fn mmio(offset: usize) {
        push(Step::Mmio { offset });
    }

    fn on_observed(observed: Observed) {
        push(match observed {
            Observed::Barrier(kind) => Step::Barrier(kind),
            Observed::MmioWrite { offset, .. } => Step::Mmio { offset },
        });
    }

    /// The steps at which the register at `offset` was written; an error if
    /// it never was (a check over no write proves nothing).
    fn writes_of(steps: &[Step], offset: usize) -> Result<Vec<usize>, std::string::String> {
        let writes: Vec<usize> = (0..steps.len())
            .filter(|&index| steps[index] == Step::Mmio { offset })
            .collect();
        if writes.is_empty() {
            return Err(std::format!("register {offset:#x} never written"));
        }
        Ok(writes)
    }

    /// Checks that before every write of the register at `offset`, the last
    /// memory write is followed by a barrier that orders it against the
    /// device (`dma_wmb` or `io_mb`): what a doorbell needs (the device must
    /// find in memory what the CPU wrote before it rang).
    pub fn doorbell_after_barrier(
        steps: &[Step],
        offset: usize,
    ) -> Result<(), std::string::String> {
        for index in writes_of(steps, offset)? {
            let Some(last_write) = steps[..index]
                .iter()
                .rposition(|step| matches!(step, Step::Write { .. }))
            else {
                continue;
            };
            let fenced = steps[last_write..index]
                .iter()
                .any(|step| matches!(step, Step::Barrier(Barrier::DmaWmb | Barrier::IoMb)));
            if !fenced {
                return Err(std::format!(
                    "register {offset:#x} written at step {index} with the memory write of step \
                     {last_write} not ordered before it: {:?}",
                    &steps[last_write..=index]
                ));
            }
        }
        Ok(())
    }

    /// Checks that `barrier` immediately precedes every write of the
    /// register at `offset` (nothing but barriers in between).
    pub fn barrier_before(
        steps: &[Step],
        offset: usize,
        barrier: Barrier,
    ) -> Result<(), std::string::String> {
        for index in writes_of(steps, offset)? {
            let preceded = steps[..index]
                .iter()
                .rev()
                .take_while(|step| matches!(step, Step::Barrier(_)))
                .any(|step| *step == Step::Barrier(barrier));
            if !preceded {
                return Err(std::format!(
                    "register {offset:#x} written at step {index} without a {barrier:?} right before"
                ));
            }
        }
        Ok(())
    }

    /// Records this thread's steps until it is dropped.
    pub struct Recording(());

    impl Recording {
        /// Starts recording (a trace already running is restarted).
        pub fn start() -> Self {
            observe::observe(Some(on_observed));
            TRACE.with(|trace| *trace.borrow_mut() = Some(Vec::new()));
            Recording(())
        }

        /// The steps recorded so far (and a fresh start).
        pub fn take(&self) -> Vec<Step> {
            TRACE.with(|trace| trace.borrow_mut().replace(Vec::new()).unwrap_or_default())
        }
    }

    impl Drop for Recording {
        fn drop(&mut self) {
            TRACE.with(|trace| *trace.borrow_mut() = None);
        }
    }
}

/// `Cell` for a hardware model several test threads drive at once (as CPUs
/// drive the real unit): the same `get`/`set`, over a lock.
#[derive(Debug, Default)]
pub struct SyncCell<T>(Mutex<T>);

impl<T: Copy> SyncCell<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self(Mutex::new(value))
    }

    /// The value.
    pub fn get(&self) -> T {
        *self.0.lock().unwrap()
    }

    /// Replaces the value.
    pub fn set(&self, value: T) {
        *self.0.lock().unwrap() = value;
    }
}

/// `RefCell` for such a model: `borrow` and `borrow_mut` take a read or
/// write lock (a nested `borrow_mut` on one thread blocks where `RefCell`
/// would panic).
#[derive(Debug, Default)]
pub struct SyncRefCell<T>(std::sync::RwLock<T>);

impl<T> SyncRefCell<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self(std::sync::RwLock::new(value))
    }

    /// Reads the value.
    pub fn borrow(&self) -> std::sync::RwLockReadGuard<'_, T> {
        self.0.read().unwrap()
    }

    /// Changes the value.
    pub fn borrow_mut(&self) -> std::sync::RwLockWriteGuard<'_, T> {
        self.0.write().unwrap()
    }
}

/// Four threads (as four CPUs) map, flush, unmap and flush a range of their
/// own in `domain` through `unit`'s shared calls, `rounds` times: each its
/// own 2 MiB, 512 pages whose physical side is not 2 MiB-aligned, so every
/// map fills one leaf table and every unmap unlinks it. `translate(iova)` is
/// the output address a DMA to `iova` would reach now, as the unit's model
/// sees it (its caches included), or `None` for a fault.
///
/// After each map, the page translates; after each unmap, before its flush,
/// the old translation may still be in use but never another one (which
/// would mean a table page another thread's flush freed and its map reused
/// under a cached walk); after the flush, nothing translates.
#[cfg(feature = "host-fakes")]
pub fn map_and_unmap_from_four_threads<U: iommu::IommuUnit + Sync>(
    unit: &U,
    domain: iommu::DomainHandle,
    rounds: u64,
    translate: impl Fn(u64) -> Option<u64> + Sync,
) {
    const THREADS: u64 = 4;
    let rw = iommu::Prot {
        read: true,
        write: true,
    };
    let (start, translate) = (&std::sync::Barrier::new(THREADS as usize), &translate);
    std::thread::scope(|threads| {
        for thread in 0..THREADS {
            threads.spawn(move || {
                start.wait();
                let (iova, len) = (0x4000_0000 + thread * 0x40_0000, 0x20_0000);
                let probe = iova + 0x1000;
                for round in 0..rounds {
                    let phys = 0x8000_1000 + thread * 0x100_0000 + round * 0x2000;
                    // SAFETY: each thread keeps to its own range.
                    let gather = unsafe { unit.map_shared(domain, iova, phys, len, rw) };
                    unit.flush_shared(domain, &gather.unwrap()).unwrap();
                    assert_eq!(translate(probe), Some(phys + 0x1000), "thread {thread}");
                    // SAFETY: as above.
                    let gather = unsafe { unit.unmap_shared(domain, iova, len) }.unwrap();
                    assert!(gather.freed_tables, "the leaf table was not freed");
                    let seen = translate(probe);
                    assert!(
                        seen.is_none() || seen == Some(phys + 0x1000),
                        "thread {thread}: a freed table was reused under a cached walk"
                    );
                    unit.flush_shared(domain, &gather).unwrap();
                    assert_eq!(
                        translate(probe),
                        None,
                        "thread {thread}, round {round}: stale translation"
                    );
                }
            });
        }
    });
}
