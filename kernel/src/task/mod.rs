//! User tasks: programs embedded in the kernel image (see [`programs`]), each
//! started by name in its own address space, run in ring 3 / EL0.
//!
//! How tasks take turns is `crate::scheduler`'s; this module is what a task
//! is: its address space and memory, the device windows it was given, the
//! copies to and from its memory, and the output the scheduler keeps of it.
//!
//! User region layout (all in top-level slot 1, see `abi::syscall`):
//! `USER_BASE..IMAGE_END` the program's segments, `HEAP_BASE..HEAP_END` memory
//! from `mem_alloc` (one guard page after each allocation), and a
//! [`STACK_PAGES`]-page stack below `STACK_TOP` with an unmapped guard below.

mod address_space;
pub mod programs;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use abi::Errno;
use abi::syscall::{PAGE_SIZE, USER_BASE, USER_END};

pub use address_space::AddressSpace;

use crate::arch::user::{self as arch, UserContext};

/// The ELF machine of the programs this kernel runs.
#[cfg(target_arch = "x86_64")]
const ELF_MACHINE: u16 = static_elf::EM_X86_64;
#[cfg(target_arch = "aarch64")]
const ELF_MACHINE: u16 = static_elf::EM_AARCH64;
// The reader's page (segments never share one) is the task's page.
const _: () = assert!(static_elf::PAGE_SIZE == PAGE_SIZE);
/// One past the last address a program image may use.
pub const IMAGE_END: u64 = USER_BASE + (1 << 30);
/// Where `mem_alloc` hands out memory.
pub const HEAP_BASE: u64 = USER_BASE + (64 << 30);
pub const HEAP_END: u64 = USER_BASE + (256 << 30);
/// Device registers opened with `device_open` are mapped from here on.
pub const DEVICE_BASE: u64 = HEAP_END;
/// The stack grows down from here (16 MiB below the end of the region).
pub const STACK_TOP: u64 = USER_END - (16 << 20);
pub const STACK_PAGES: u64 = 16;
/// Largest single `mem_alloc` and most memory one task may hold (pages).
pub const MAX_ALLOCATION_PAGES: u64 = 4096;
pub const MAX_TASK_PAGES: u64 = 16384;
/// Pages of a DMA chunk (64 KiB): the largest smallest page of an IOMMU here
/// (an SMMUv3 with only the 64 KiB granule) and one ARM contiguous run of
/// 4 KiB pages (D8.6.1). Allocations are backed by naturally aligned,
/// physically contiguous chunks of up to this many pages (see
/// `Task::allocate`).
pub const DMA_CHUNK_PAGES: u64 = 16;
/// Most bytes of one task's output the kernel keeps (in its report and the
/// transcript): past it, output is still printed in console mode but no
/// longer kept, so a task that writes forever cannot fill the kernel heap.
pub const MAX_KEPT_OUTPUT: usize = 256 * 1024;
/// CPU time one task may use by default (the scheduler's limits may differ).
pub const DEFAULT_CPU_MS: u64 = 10_000;

/// What a page allows the task to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

impl Access {
    pub const READ: Access = Access {
        read: true,
        write: false,
        execute: false,
    };
    pub const READ_WRITE: Access = Access {
        read: true,
        write: true,
        execute: false,
    };

    /// True when every right `wanted` asks for is granted.
    pub fn allows(self, wanted: Access) -> bool {
        (self.read || !wanted.read)
            && (self.write || !wanted.write)
            && (self.execute || !wanted.execute)
    }
}

/// Why a task's run stopped, decoded from its saved registers by `arch::user`.
#[derive(Clone, Copy, Debug)]
pub enum Trap {
    Syscall {
        number: u64,
        args: [u64; 6],
    },
    /// The time slice ended.
    Preempted,
    Fault {
        what: &'static str,
        /// The faulting data or instruction address, when the CPU reports one.
        address: Option<u64>,
        /// Error code (x86) or ESR ISS (aarch64).
        code: u64,
        pc: u64,
    },
}

/// Why a task could not be started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpawnError {
    UnknownProgram(String),
    Elf(static_elf::ElfError),
    OutOfMemory,
}

impl From<Errno> for SpawnError {
    fn from(_: Errno) -> Self {
        SpawnError::OutOfMemory
    }
}

/// Where a task's `write`s and the kernel's reports about it go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Straight to the console (the demo).
    Console,
    /// Into the [`Run`]'s transcript only (the tests, whose console lines the
    /// host parses).
    Capture,
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Killed by the kernel; the report line says why.
    Killed(String),
}

/// One task's result.
#[derive(Clone, Debug)]
pub struct Report {
    pub name: &'static str,
    pub exit: Exit,
    /// Everything the task wrote.
    pub output: String,
}

/// The result of `scheduler::run`.
#[derive(Debug, Default)]
pub struct Run {
    pub reports: Vec<Report>,
    /// Every write and kernel report line in the order they happened, with the
    /// index of the task in [`Run::reports`].
    pub transcript: Vec<(usize, String)>,
}

/// One `mem_alloc` allocation: the frames a later `ioas_map` pins.
#[derive(Debug)]
pub struct Allocation {
    pub pages: u64,
    /// Physical address of each page, in order.
    pub frames: Vec<u64>,
    /// How many pins (DMA mappings) cover it; it cannot be freed while pinned.
    pub pins: u32,
}

/// A task's memory from `mem_alloc`, by start address.
#[derive(Debug, Default)]
pub struct TaskMemory {
    pub allocations: BTreeMap<u64, Allocation>,
    next: u64,
    pages: u64,
}

pub struct Task {
    pub name: &'static str,
    /// Unique per task ever started: the task's owner id in the iommufd core.
    pub owner: u64,
    /// The device register windows mapped into the task (`device_open`):
    /// start address → pages. A closed window's addresses are reused.
    device_windows: BTreeMap<u64, u64>,
    pub space: AddressSpace,
    pub context: UserContext,
    pub memory: TaskMemory,
    pub(crate) syscalls: u64,
    pub(crate) cpu_ns: u64,
    /// The CPU budget of the run the task is in (`scheduler::Limits::cpu_ms`).
    pub(crate) cpu_budget_ns: u64,
    /// Its heap quota, set aside while it lives.
    _heap: crate::memory::heap_charges::HeapCommitment,
}

impl Task {
    /// Loads the embedded program `name` into a new address space.
    pub fn spawn(name: &str, kernel_root: u64) -> Result<Task, SpawnError> {
        let (name, image) = programs::PROGRAMS
            .iter()
            .find(|(program, _)| *program == name)
            .ok_or_else(|| SpawnError::UnknownProgram(name.into()))?;
        Self::spawn_image(name, image, kernel_root)
    }

    /// Loads an ELF image (validated by [`static_elf::parse`] for this
    /// machine and the image part of the user region).
    pub fn spawn_image(
        name: &'static str,
        image: &[u8],
        kernel_root: u64,
    ) -> Result<Task, SpawnError> {
        let target = static_elf::Target {
            machine: ELF_MACHINE,
            region: USER_BASE..IMAGE_END,
        };
        let image = static_elf::parse(image, &target).map_err(SpawnError::Elf)?;
        // Only as many tasks live at once as the heap can back the quotas of.
        let heap =
            crate::memory::heap_charges::HeapCommitment::take().ok_or(SpawnError::OutOfMemory)?;
        // On any error below, dropping `space` returns what was mapped so far.
        let mut space = AddressSpace::new(kernel_root)?;
        for segment in &image.segments {
            let access = Access {
                read: segment.permissions.read,
                write: segment.permissions.write,
                execute: segment.permissions.execute,
            };
            for page in segment.pages().step_by(PAGE_SIZE as usize) {
                let phys = space.map_new(page, access)?;
                // Copy the part of the file bytes that falls into this page.
                let page_end = page + PAGE_SIZE;
                let data_end = segment.vaddr + segment.data.len() as u64;
                let from = segment.vaddr.max(page);
                let to = data_end.min(page_end);
                if from < to {
                    let source = &segment.data
                        [(from - segment.vaddr) as usize..(to - segment.vaddr) as usize];
                    // SAFETY: `phys` is the fresh frame just mapped, identity-
                    // mapped for the kernel; the piece fits in the page.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            source.as_ptr(),
                            (phys + (from - page)) as *mut u8,
                            source.len(),
                        )
                    };
                }
                if access.execute {
                    arch::sync_instruction_cache(phys, PAGE_SIZE as usize);
                }
            }
        }
        for page in 1..=STACK_PAGES {
            space.map_new(STACK_TOP - page * PAGE_SIZE, Access::READ_WRITE)?;
        }
        Ok(Task {
            owner: NEXT_OWNER.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
            device_windows: BTreeMap::new(),
            name,
            space,
            context: UserContext::new(image.entry, STACK_TOP),
            memory: TaskMemory {
                next: HEAP_BASE,
                ..TaskMemory::default()
            },
            syscalls: 0,
            cpu_ns: 0,
            cpu_budget_ns: DEFAULT_CPU_MS * 1_000_000,
            _heap: heap,
        })
    }

    /// Copies `[address, address + len)` of the task's memory into a new
    /// buffer. The range is checked against the task's own pages first
    /// (EFAULT otherwise), and the bytes are read through the kernel's
    /// identity map of the frames behind it, never through the user
    /// address, so a bad argument cannot fault the kernel.
    pub fn copy_from_user(&self, address: u64, len: u64) -> Result<Vec<u8>, Errno> {
        let pieces = self.space.user_range(address, len, Access::READ)?;
        let mut bytes = Vec::with_capacity(len as usize);
        for (phys, piece_len) in pieces {
            // SAFETY: `user_range` returned pieces of frames this task owns,
            // identity-mapped for the kernel; nothing else writes them now
            // (the task is stopped in this call).
            bytes.extend_from_slice(unsafe {
                core::slice::from_raw_parts(phys as *const u8, piece_len)
            });
        }
        Ok(bytes)
    }

    /// Copies `bytes` into the task's memory at `address` (which must be
    /// writable), as [`Self::copy_from_user`] reads.
    pub fn copy_to_user(&self, address: u64, bytes: &[u8]) -> Result<(), Errno> {
        let pieces = self
            .space
            .user_range(address, bytes.len() as u64, Access::READ_WRITE)?;
        let mut from = 0;
        for (phys, piece_len) in pieces {
            // SAFETY: as in `copy_from_user`, for writable pages of the task.
            unsafe {
                core::ptr::copy_nonoverlapping(bytes[from..].as_ptr(), phys as *mut u8, piece_len)
            };
            from += piece_len;
        }
        Ok(())
    }

    /// Maps `len` bytes of device registers at `phys` (page-aligned) into the
    /// task, uncached, at the lowest free window address (an unmapped guard
    /// page after each window); returns the address. The frames are not the
    /// task's: they are never freed. On error nothing stays mapped.
    pub fn map_device(&mut self, phys: u64, len: u64) -> Result<u64, Errno> {
        let pages = len.div_ceil(PAGE_SIZE);
        if pages == 0 {
            return Err(Errno::EINVAL);
        }
        let span = (pages + 1) * PAGE_SIZE;
        let mut start = DEVICE_BASE;
        for (&window, &window_pages) in &self.device_windows {
            if start + span <= window {
                break;
            }
            start = window + (window_pages + 1) * PAGE_SIZE;
        }
        if start.checked_add(span).is_none_or(|end| end > USER_END) {
            return Err(Errno::ENOMEM);
        }
        for page in 0..pages {
            if let Err(errno) = self
                .space
                .map_device(start + page * PAGE_SIZE, phys + page * PAGE_SIZE)
            {
                self.unmap_device_pages(start, page);
                return Err(errno);
            }
        }
        self.device_windows.insert(start, pages);
        Ok(start)
    }

    /// Revokes the device window that [`Task::map_device`] returned as
    /// `start`: its pages are unmapped and the TLB flushed, so a later access
    /// is a page fault. `EINVAL` if no window starts there.
    pub fn unmap_device(&mut self, start: u64) -> Result<(), Errno> {
        let pages = self.device_windows.remove(&start).ok_or(Errno::EINVAL)?;
        self.unmap_device_pages(start, pages);
        Ok(())
    }

    fn unmap_device_pages(&mut self, start: u64, pages: u64) {
        for page in 0..pages {
            self.space.unmap_device(start + page * PAGE_SIZE);
        }
        // Its cached translations of the registers go, on every CPU,
        // before the device can change hands. The task's tables may be the
        // active ones here (a system call); the CPUs that ran it before
        // dropped them when they switched back to the kernel's tables, but
        // a revoked window is where a stale translation would let one task
        // drive another's device, so it does not rest on that.
        if let Err(cpu) = crate::arch::flush_tlb_all_cpus() {
            println!(
                "kernel: CPU {cpu} did not answer a TLB shootdown (it was {}; {})",
                crate::cpu_activity::describe(cpu),
                crate::arch::halt_diagnostics(cpu)
            );
        }
    }

    /// Passes `value` to the program's entry as its first argument
    /// (`user_programs::argument()`): a seed, a mode.
    pub fn set_argument(&mut self, value: u64) {
        self.context.set_argument(value);
    }

    /// `mem_alloc`: maps `pages` fresh pages, records them, returns the address.
    /// The task's CPU time and budget, and its `mem_alloc` pages and
    /// limit, as the `limits` call reports them.
    pub fn cpu_and_memory(&self) -> (abi::Limit, abi::Limit) {
        (
            abi::Limit {
                limit: self.cpu_budget_ns,
                used: self.cpu_ns,
            },
            abi::Limit {
                limit: MAX_TASK_PAGES,
                used: self.memory.pages,
            },
        )
    }

    pub fn allocate(&mut self, pages: u64) -> Result<u64, Errno> {
        if pages == 0 {
            return Err(Errno::EINVAL);
        }
        if pages > MAX_ALLOCATION_PAGES || self.memory.pages + pages > MAX_TASK_PAGES {
            return Err(Errno::ENOMEM);
        }
        // An allocation starts on a chunk and is backed by whole chunks as
        // far as they fit: naturally aligned, physically contiguous runs of
        // the largest power of two of pages up to a DMA chunk. An IOMMU whose
        // smallest page is larger than the CPU's (16 or 64 KiB) can then map
        // it at all, and a 4K one can use contiguous runs and larger pages.
        let chunk_pages = if pages >= DMA_CHUNK_PAGES {
            DMA_CHUNK_PAGES
        } else {
            1 << pages.ilog2()
        };
        let start = self.memory.next.next_multiple_of(chunk_pages * PAGE_SIZE);
        // One unmapped guard page after the allocation.
        let next = start + (pages + 1) * PAGE_SIZE;
        if next > HEAP_END {
            return Err(Errno::ENOMEM);
        }
        let mut frames = Vec::with_capacity(pages as usize);
        // The chunk being handed out page by page: (next frame, frames left).
        let mut chunk: Option<(u64, u64)> = None;
        for page in 0..pages {
            let whole_chunk_left =
                chunk_pages > 1 && page.is_multiple_of(chunk_pages) && pages - page >= chunk_pages;
            let mapped = self
                .space
                .map_frame(start + page * PAGE_SIZE, Access::READ_WRITE, || {
                    if whole_chunk_left {
                        // Short of contiguous memory, single frames do: a
                        // map that needs the chunk then fails with EINVAL.
                        chunk = crate::memory::frames::alloc_contiguous(
                            chunk_pages as usize,
                            (chunk_pages * PAGE_SIZE) as usize,
                        )
                        .map(|run| (run.phys, chunk_pages));
                    }
                    match &mut chunk {
                        Some((next, left @ 1..)) => {
                            let phys = *next;
                            *next += PAGE_SIZE;
                            *left -= 1;
                            Some(phys)
                        }
                        _ => crate::memory::frames::alloc().map(|frame| frame.phys),
                    }
                });
            match mapped {
                Ok(phys) => frames.push(phys),
                Err(err) => {
                    // The rest of a chunk the failure left untaken.
                    if let Some((next, left @ 1..)) = chunk {
                        crate::memory::frames::free(crate::memory::frames::Frames {
                            phys: next,
                            count: left as usize,
                        });
                    }
                    self.unmap_and_free(start, page);
                    return Err(err);
                }
            }
        }
        self.memory.next = next;
        self.memory.pages += pages;
        self.memory.allocations.insert(
            start,
            Allocation {
                pages,
                frames,
                pins: 0,
            },
        );
        Ok(start)
    }

    /// `mem_free`: exactly one earlier allocation, same address and size.
    pub fn free(&mut self, address: u64, pages: u64) -> Result<(), Errno> {
        match self.memory.allocations.get(&address) {
            Some(allocation) if allocation.pages == pages && allocation.pins > 0 => {
                return Err(Errno::EBUSY);
            }
            Some(allocation) if allocation.pages == pages => {}
            _ => return Err(Errno::EINVAL),
        }
        let allocation = self.memory.allocations.remove(&address);
        self.memory.pages -= pages;
        let freed = self.unmap_and_free(address, pages);
        debug_assert_eq!(Some(freed), allocation.map(|a| a.frames));
        Ok(())
    }

    /// Pins the frames behind `[address, address + len)` for DMA (the hook of
    /// `ioas_map`): the range must be page-aligned and lie inside `mem_alloc`
    /// allocations (the only memory a task may hand to a device), else
    /// `EFAULT`. Returns the frames in order; [`Task::unpin`] undoes it.
    pub fn pin(&mut self, address: u64, len: u64) -> Result<Vec<u64>, Errno> {
        let covering = self.allocations_covering(address, len)?;
        let mut frames = Vec::with_capacity((len / PAGE_SIZE) as usize);
        for start in &covering {
            let allocation = &self.memory.allocations[start];
            let first = address.max(*start);
            let end = (address + len).min(start + allocation.pages * PAGE_SIZE);
            let pages =
                ((first - start) / PAGE_SIZE) as usize..((end - start) / PAGE_SIZE) as usize;
            frames.extend_from_slice(&allocation.frames[pages]);
        }
        for start in covering {
            if let Some(allocation) = self.memory.allocations.get_mut(&start) {
                allocation.pins += 1;
            }
        }
        Ok(frames)
    }

    /// At exit, after the iommufd core released the task: memory still pinned
    /// is memory the core quarantined (its IOTLB flush failed, or a domain
    /// mapping it could not be freed), which a device may still reach. Its
    /// frames leave the address space without going back to the free pool,
    /// so they never become another task's or the kernel's. Returns how many.
    pub fn withhold_pinned(&mut self) -> usize {
        let pinned: Vec<(u64, u64)> = self
            .memory
            .allocations
            .iter()
            .filter(|(_, allocation)| allocation.pins > 0)
            .map(|(&start, allocation)| (start, allocation.pages))
            .collect();
        let mut withheld = 0;
        for (start, pages) in pinned {
            self.memory.allocations.remove(&start);
            self.memory.pages -= pages;
            withheld += (0..pages)
                .filter_map(|page| self.space.unmap(start + page * PAGE_SIZE))
                .count();
        }
        arch::flush_tlb();
        crate::memory::frames::withhold(withheld);
        withheld
    }

    /// Releases one [`Task::pin`] of exactly the same range.
    pub fn unpin(&mut self, address: u64, len: u64) -> Result<(), Errno> {
        let covering = self.allocations_covering(address, len)?;
        if covering
            .iter()
            .any(|start| self.memory.allocations[start].pins == 0)
        {
            return Err(Errno::EINVAL);
        }
        for start in covering {
            if let Some(allocation) = self.memory.allocations.get_mut(&start) {
                allocation.pins -= 1;
            }
        }
        Ok(())
    }

    /// The start addresses of the allocations that together cover the range
    /// without a gap.
    fn allocations_covering(&self, address: u64, len: u64) -> Result<Vec<u64>, Errno> {
        let end = address.checked_add(len).ok_or(Errno::EFAULT)?;
        if len == 0 || !address.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let mut covering = Vec::new();
        let mut at = address;
        while at < end {
            let (&start, allocation) = self
                .memory
                .allocations
                .range(..=at)
                .next_back()
                .ok_or(Errno::EFAULT)?;
            let allocation_end = start + allocation.pages * PAGE_SIZE;
            if at >= allocation_end {
                return Err(Errno::EFAULT);
            }
            covering.push(start);
            at = allocation_end;
        }
        Ok(covering)
    }

    /// Unmaps `pages` pages from `start` and frees their frames; returns them.
    fn unmap_and_free(&mut self, start: u64, pages: u64) -> Vec<u64> {
        let frames: Vec<u64> = (0..pages)
            .filter_map(|page| self.space.unmap(start + page * PAGE_SIZE))
            .collect();
        // Syscalls run with the task's tables active: drop its stale
        // translations before the frames can be reused.
        arch::flush_tlb();
        for &phys in &frames {
            crate::memory::frames::free(crate::memory::frames::Frames { phys, count: 1 });
        }
        frames
    }
}

impl Drop for Task {
    /// Memory still pinned when a task goes never returns to the pool (see
    /// [`Task::withhold_pinned`]; the scheduler calls it first, to report it).
    fn drop(&mut self) {
        self.withhold_pinned();
    }
}

/// The scheduler's view of the output while tasks run: shared by the CPUs
/// running the tasks, each write taken whole under its lock.
pub struct Sink<'a> {
    pub(crate) mode: Output,
    pub(crate) run: &'a spin::Mutex<Run>,
}

impl Sink<'_> {
    /// Records (and in console mode prints) what task `index` wrote. Only
    /// the first [`MAX_KEPT_OUTPUT`] bytes of a task's output are kept.
    pub fn write(&mut self, index: usize, mut text: String) {
        if self.mode == Output::Console {
            print!("{text}");
        }
        let mut run = self.run.lock();
        let output = &mut run.reports[index].output;
        let room = MAX_KEPT_OUTPUT.saturating_sub(output.len());
        if text.len() > room {
            let mut end = room;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        if text.is_empty() {
            return;
        }
        // The output outlives the task (the run reports it): the kernel's,
        // bounded by MAX_KEPT_OUTPUT rather than by the task's heap quota.
        crate::memory::uncharged(|| {
            run.reports[index].output.push_str(&text);
            run.transcript.push((index, text));
        });
    }

    pub(crate) fn report(&mut self, index: usize, line: String) {
        if self.mode == Output::Console {
            println!("{line}");
        }
        crate::memory::uncharged(|| self.run.lock().transcript.push((index, line)));
    }
}

/// The next task's owner id (iommufd object tables are per owner).
static NEXT_OWNER: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

/// The boot tables, which every task's tables copy for the kernel half.
static KERNEL_ROOT: spin::Once<u64> = spin::Once::new();

/// The kernel's own tables, for callers that spawn from an image.
pub fn kernel_root() -> u64 {
    *KERNEL_ROOT.call_once(arch::current_root)
}
