//! The iommufd system calls: the kernel's half of `iommufd::uapi`.
//!
//! One `iommufd::Iommufd` core serves every task; a task is an owner
//! (`OwnerId`) with its own object table. The core reaches the calling task
//! through [`TaskAccess`]: its memory for copying arguments in and out
//! (`UserMemory`) and its `mem_alloc` pages for pinning (`Services`). When a
//! task ends, [`release`] tears its objects down (devices detached first,
//! pinned pages released after the IOTLB flush) before its memory is freed.
//!
//! The platform's IOMMU unit joins the core the first time a task makes an
//! iommufd call (after boot, so the drivers' own tests ran first);
//! `device_list` and `device_open` are this module's: they need the kernel's
//! PCI view and map the device's BAR 0 into the task.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ptr::NonNull;

use abi::{Command, Errno};
use iommufd::uapi::UserMemory;
use iommufd::{Begun, Iommufd, OwnerId, PhysRun, Services};

use crate::device_policy::{self, Refusal};
use crate::devices::PciDevice;
use crate::memory::frames;
use crate::platform::Platform;
use crate::task::Task;

/// The unit type the core holds: any driver behind the contract, usable
/// from several CPUs at once (their map, unmap and flush calls run beside
/// each other, outside the core's lock).
type Unit = Box<dyn iommu::IommuUnit + Send + Sync>;

/// The task a call (or a teardown) is working for, set for its duration.
#[derive(Default)]
pub struct TaskAccess {
    task: Option<NonNull<Task>>,
}

// SAFETY: the pointer is set only while a CPU runs one call for that task
// with the core's lock held (so no other CPU's call sees it) and cleared
// before the lock is released.
unsafe impl Send for TaskAccess {}

impl TaskAccess {
    fn with_task<R>(&mut self, f: impl FnOnce(&mut Task) -> R) -> Result<R, Errno> {
        let mut task = self.task.ok_or(Errno::EFAULT)?;
        // SAFETY: see `Send`: the task outlives the call that set the pointer,
        // and no other reference to it is live while the core runs.
        Ok(f(unsafe { task.as_mut() }))
    }
}

impl Services for TaskAccess {
    fn pin(
        &mut self,
        _owner: OwnerId,
        va: u64,
        len: u64,
        write: bool,
        runs: &mut Vec<PhysRun>,
    ) -> Result<(), Errno> {
        let _ = write; // mem_alloc memory is always writable
        let frames = self.with_task(|task| task.pin(va, len))??;
        for phys in frames {
            match runs.last_mut() {
                Some(run) if run.phys + run.len == phys => run.len += abi::syscall::PAGE_SIZE,
                _ => runs.push(PhysRun {
                    phys,
                    len: abi::syscall::PAGE_SIZE,
                }),
            }
        }
        Ok(())
    }

    fn unpin(&mut self, _owner: OwnerId, va: u64, len: u64, _runs: &[PhysRun]) {
        // A range the core pinned is always unpinnable; an error here would be
        // a core bug, and the task's memory is then freed with the task anyway.
        let _ = self.with_task(|task| task.unpin(va, len));
    }
}

impl UserMemory for TaskAccess {
    fn read(&mut self, _owner: OwnerId, va: u64, out: &mut [u8]) -> Result<(), Errno> {
        let bytes = self.with_task(|task| task.copy_from_user(va, out.len() as u64))??;
        out.copy_from_slice(&bytes);
        Ok(())
    }

    fn write(&mut self, _owner: OwnerId, va: u64, data: &[u8]) -> Result<(), Errno> {
        self.with_task(|task| task.copy_to_user(va, data))?
    }
}

type Core = Iommufd<Unit, TaskAccess>;

/// A requester id as the unit that translates it names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Endpoint {
    unit: iommu::UnitId,
    id: iommu::DeviceId,
}

/// The core and how the platform's units name PCI functions.
struct State {
    core: Core,
    /// The unit that translates a PCI function and its name there.
    endpoint: Option<crate::iommu::EndpointOf>,
    /// The id firmware says a device's requests arrive with instead (AMD-Vi
    /// IVHD aliases).
    firmware_alias:
        fn(&'static Platform, iommu::UnitId, iommu::DeviceId) -> Option<iommu::DeviceId>,
    /// The devices tasks opened.
    devices: Vec<OpenDevice>,
    /// Functions whose memory may still hold data of the owner that last let
    /// them go; scrubbed before another owner gets them.
    residue: Vec<(pci::Bdf, OwnerId)>,
}

/// A device a task opened: what `device_open` gave it beyond the core's
/// device object, all of it taken back by [`release_device`].
struct OpenDevice {
    owner: OwnerId,
    dev_id: u32,
    bdf: pci::Bdf,
    requester: Endpoint,
    /// Where BAR 0 is mapped in the owner (the start `Task::map_device`
    /// returned), once it is.
    window: Option<u64>,
    /// The MSI, routed through the unit's interrupt remapping to a kernel
    /// interrupt the task waits for with `irq_wait`. `None`: not routed (yet),
    /// or the device has no MSI capability.
    irq: Option<(u32, iommu::MsiRoute)>,
    /// `irq::count(irq)` when the task last collected its interrupts.
    collected: usize,
}

/// Interrupts are counted by `irq`; the waiting task is found by polling.
fn note_device_interrupt() {}

impl State {
    /// The unit that translates the requester id PCI function `bdf`'s DMA
    /// carries (its own, or a bridge's alias for every function behind it:
    /// those share one isolation group, claimed by whoever opens the first),
    /// and that unit's name for it; `None` when no unit translates it.
    fn requester(&self, bdf: pci::Bdf) -> Option<Endpoint> {
        let platform = crate::platform::get();
        let alias = crate::devices::dma_alias(bdf);
        let (unit, id) = self
            .endpoint
            .and_then(|endpoint| endpoint(platform, alias))?;
        let id = (self.firmware_alias)(platform, unit, id).unwrap_or(id);
        Some(Endpoint { unit, id })
    }

    /// The names, on [`Self::requester`]'s unit, of every requester id
    /// `bdf`'s DMA may carry: its own behind a bridge, bridges on the way,
    /// the one firmware names, and the requester's; the core programs and
    /// blocks them together. An id another unit translates is left to that
    /// unit, which blocks it (nothing attaches it there).
    fn aliases(&self, bdf: pci::Bdf) -> Vec<iommu::DeviceId> {
        let platform = crate::platform::get();
        let (Some(endpoint), Some(requester)) = (self.endpoint, self.requester(bdf)) else {
            return Vec::new();
        };
        let mut ids: Vec<iommu::DeviceId> = crate::devices::dma_aliases(bdf)
            .into_iter()
            .filter_map(|alias| endpoint(platform, alias))
            .filter(|&(unit, _)| unit == requester.unit)
            .map(|(_, id)| id)
            .collect();
        ids.push(requester.id);
        ids.dedup();
        ids
    }

    /// The unit that translates `endpoint`.
    fn unit_of(&mut self, endpoint: Endpoint) -> Result<&mut Unit, Errno> {
        self.core.unit_mut(endpoint.unit).ok_or(Errno::EINVAL)
    }

    /// Who holds `endpoint` in the core.
    fn holder(&self, endpoint: Endpoint) -> Option<(OwnerId, u32)> {
        self.core.device_holder(endpoint.unit, endpoint.id)
    }

    /// Why no task may own `device`, if so.
    fn refusal(&self, device: &PciDevice) -> Option<Refusal> {
        let requester = self.requester(device.function.bdf);
        let firmware_dma = requester.is_some_and(|requester| {
            self.core
                .units()
                .get(requester.unit.0 as usize)
                .is_some_and(|unit| {
                    unit.reserved_regions(requester.id)
                        .iter()
                        .any(|region| region.kind == iommu::ReservedKind::Direct)
                })
        });
        let platform = crate::platform::get();
        let bdf = device.function.bdf;
        let msi = pci::Msi::find(&platform.pci.ecam, bdf).is_some();
        // Functions that share the requester id are claimed together; an
        // endpoint with another id in the group could go to another owner.
        let alias = crate::devices::dma_alias(bdf);
        let shared_group = crate::devices::isolation_group(platform, bdf)
            .into_iter()
            .any(|member| {
                crate::devices::all().iter().any(|other| {
                    other.function.bdf == member
                        && other.function.header_type.layout == pci::HeaderType::ENDPOINT
                        && crate::devices::dma_alias(member) != alias
                })
            });
        let facts = device_policy::Facts {
            shared_group,
            translated: requester.is_some(),
            firmware_dma,
            unsafe_interrupts: msi
                && !requester.is_some_and(|requester| self.msis_isolated(requester.unit))
                && !UNSAFE_INTERRUPTS_ALLOWED.load(core::sync::atomic::Ordering::SeqCst),
        };
        device_policy::refusal(device, facts)
    }

    /// Whether the MSIs of devices behind `unit` are isolated: by that
    /// unit's interrupt remapping or by the interrupt controller (an ITS).
    fn msis_isolated(&self, unit: iommu::UnitId) -> bool {
        crate::irq::controller_isolates_msi()
            || self
                .core
                .units()
                .get(unit.0 as usize)
                .is_some_and(|unit| unit.isolates_msi())
    }
}

static CORE: spin::Mutex<Option<State>> = spin::Mutex::new(None);

/// What every task may make the core hold (the command line's, or the
/// defaults).
static LIMITS: spin::Mutex<iommufd::Limits> = spin::Mutex::new(iommufd::Limits::DEFAULT);

/// Sets what every task may make the core hold; returns the old limits.
pub fn set_limits(limits: iommufd::Limits) -> iommufd::Limits {
    if let Some(state) = CORE.lock().as_mut() {
        state.core.set_limits(limits);
    }
    core::mem::replace(&mut *LIMITS.lock(), limits)
}

fn new_state() -> State {
    let mut state = match crate::iommu::platform_units(crate::platform::get()) {
        Some(platform) => State {
            core: Iommufd::new(platform.units, TaskAccess::default()),
            endpoint: Some(platform.endpoint),
            firmware_alias: platform.firmware_alias,
            devices: Vec::new(),
            residue: Vec::new(),
        },
        None => State {
            core: Iommufd::new(Vec::new(), TaskAccess::default()),
            endpoint: None,
            firmware_alias: crate::iommu::no_firmware_alias,
            devices: Vec::new(),
            residue: Vec::new(),
        },
    };
    state.core.set_limits(*LIMITS.lock());
    state
}

fn with_state<R>(task: &mut Task, f: impl FnOnce(&mut State, OwnerId) -> R) -> R {
    let mut guard = CORE.lock();
    let state = guard.get_or_insert_with(new_state);
    state.core.services_mut().task = Some(NonNull::from(&mut *task));
    let owner = OwnerId(task.owner);
    // Heap, IO page tables and device structures allocated now are the task's.
    let charged = crate::memory::charge_to(Some(task.owner));
    let result = f(state, owner);
    crate::memory::charge_to(charged);
    state.core.services_mut().task = None;
    result
}

/// Runs iommufd command `number` with the argument struct at `arg`.
///
/// `IOAS_MAP` and `IOAS_UNMAP` run in three steps: checks and bookkeeping
/// under the core's lock, the page-table writes and IOTLB flushes without it
/// (beside other CPUs' calls, on their units' shared paths), the results
/// under it again. Every other command runs whole under the lock.
pub fn call(task: &mut Task, number: u64, arg: u64) -> Result<(), Errno> {
    let command = Command::from_number(number).ok_or(Errno::ENOSYS)?;
    match command {
        Command::DeviceList => return device_list(task, arg),
        Command::DeviceOpen => return device_open(task, arg),
        _ => {}
    }
    let begun = with_state(task, |state, owner| {
        let core = &mut state.core;
        if matches!(command, Command::FaultRead | Command::VeventqRead) {
            core.dispatch_faults();
        }
        // The core needs the task for memory and pinning through two traits;
        // both go through the same pointer, one access at a time.
        let mut memory = TaskAccess {
            task: core.services_mut().task,
        };
        let begun = core.ioctl_begin(&mut memory, owner, command, arg);
        if command == Command::Destroy && matches!(begun, Some(Begun::Done(Ok(())))) {
            release_destroyed_devices(state, owner);
        }
        begun
    });
    let mut pending = match begun {
        None => return Err(Errno::ENOSYS),
        Some(Begun::Done(result)) => return result,
        Some(Begun::Pending(pending)) => pending,
    };
    // Table pages allocated now are the task's too.
    let charged = crate::memory::charge_to(Some(task.owner));
    pending.run();
    crate::memory::charge_to(charged);
    with_state(task, |state, owner| {
        let core = &mut state.core;
        let mut memory = TaskAccess {
            task: core.services_mut().task,
        };
        core.ioctl_finish(&mut memory, owner, pending)
    })
}

/// The most map and unmap fills one unit had running at once (CPUs writing
/// its tables side by side) since the last call, which starts the count
/// again.
pub fn take_most_fills() -> usize {
    CORE.lock().as_ref().map_or(0, |state| {
        let most = state.core.units().most_fills();
        state.core.units().reset_most_fills();
        most
    })
}

/// Tears down everything `task` owns in the core (before its memory goes).
/// A task that never made an iommufd call owns nothing, and the core (with
/// the IOMMU unit it brings up) is not created for it.
pub fn release(task: &mut Task) {
    if CORE.lock().is_none() {
        return;
    }
    with_state(task, |state, owner| {
        // The devices stop (interrupts, registers, DMA in flight) before
        // their domains go and the memory they reached is unpinned.
        release_devices(state, |_, entry| entry.owner == owner);
        // Empty the unit's fault log now: a record left pending there (VT-d
        // keeps one per fault-recording register until software clears it)
        // would keep the next task's faults from being recorded at all.
        state.core.dispatch_faults();
        state.core.teardown(owner);
    });
}

/// The command line's `allow_unsafe_interrupts`.
static UNSAFE_INTERRUPTS_ALLOWED: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Whether tasks may own MSI devices whose interrupts nothing isolates
/// (the command line's `allow_unsafe_interrupts`); returns the old setting.
pub fn allow_unsafe_interrupts(allowed: bool) -> bool {
    UNSAFE_INTERRUPTS_ALLOWED.swap(allowed, core::sync::atomic::Ordering::SeqCst)
}

/// Whether the MSIs of every translated device are isolated
/// (`State::msis_isolated` of every unit; before the core exists, only the
/// interrupt controller can say so).
pub fn msis_isolated() -> bool {
    CORE.lock()
        .as_ref()
        .map_or_else(crate::irq::controller_isolates_msi, |state| {
            (0..state.core.units().len())
                .all(|unit| state.msis_isolated(iommu::UnitId(unit as u32)))
        })
}

/// The fault-interrupt count at the last drain.
static FAULT_SIGNALS_SEEN: core::sync::atomic::AtomicUsize =
    core::sync::atomic::AtomicUsize::new(0);

/// Moves the unit's fault records into their owners' queues when the unit
/// signalled a fault since the last time. The scheduler calls it between
/// task runs: a record left in the unit (VT-d keeps one per fault-recording
/// register until software clears it) would keep every later fault, of any
/// task, from being recorded.
pub fn dispatch_pending_faults() {
    use core::sync::atomic::Ordering;
    let signals = crate::iommu::fault_signals();
    if FAULT_SIGNALS_SEEN.swap(signals, Ordering::SeqCst) == signals {
        return;
    }
    if let Some(state) = CORE.lock().as_mut() {
        state.core.dispatch_faults();
    }
}

/// The objects, areas and domains `owner` holds, against the limits of
/// every task.
pub fn holdings(owner: u64) -> [abi::Limit; 3] {
    let guard = CORE.lock();
    let limits = guard
        .as_ref()
        .map_or(*LIMITS.lock(), |state| state.core.limits());
    let owner = OwnerId(owner);
    let used = guard.as_ref().map_or([0; 3], |state| {
        [
            state.core.object_count(owner),
            state.core.area_count(owner),
            state.core.domain_count(owner),
        ]
    });
    let limit = [limits.objects, limits.areas, limits.domains];
    core::array::from_fn(|n| abi::Limit {
        limit: limit[n] as u64,
        used: used[n] as u64,
    })
}

/// Every requester id `bdf`'s DMA may carry, as the unit names it, and the
/// owner holding it, if any (what tests of aliases check).
pub fn alias_holders(bdf: pci::Bdf) -> Vec<(iommu::DeviceId, Option<u64>)> {
    let guard = CORE.lock();
    let Some(state) = guard.as_ref() else {
        return Vec::new();
    };
    let Some(requester) = state.requester(bdf) else {
        return Vec::new();
    };
    state
        .aliases(bdf)
        .into_iter()
        .map(|id| {
            let holder = state.core.device_holder(requester.unit, id);
            (id, holder.map(|(owner, _)| owner.0))
        })
        .collect()
}

/// Why the kernel refuses `device` to every task, if it does (what
/// `device_list` reports; for tests).
pub fn refusal(device: &PciDevice) -> Option<Refusal> {
    CORE.lock().as_ref().and_then(|state| state.refusal(device))
}

/// Objects the core holds for the task with owner id `owner` (leak checks).
pub fn object_count(owner: u64) -> usize {
    CORE.lock()
        .as_ref()
        .map_or(0, |state| state.core.object_count(OwnerId(owner)))
}

/// The raw identification registers of the platform's first unit as `get_hw_info`
/// reports them, once the core exists (what tests compare a task's view with).
pub fn unit_hw_info() -> Option<iommu::HwInfo> {
    CORE.lock()
        .as_ref()
        .and_then(|state| state.core.units().first().map(|unit| unit.hw_info()))
}

/// How many IOMMU units the core drives (0 before it exists; what the x86
/// tests of bringing up every DRHD and IVHD check).
#[cfg(target_arch = "x86_64")]
pub fn unit_count() -> usize {
    CORE.lock()
        .as_ref()
        .map_or(0, |state| state.core.units().len())
}

/// Devices the task with owner id `owner` holds open (leak checks).
pub fn open_devices(owner: u64) -> usize {
    CORE.lock().as_ref().map_or(0, |state| {
        state
            .devices
            .iter()
            .filter(|entry| entry.owner == OwnerId(owner))
            .count()
    })
}

/// Bytes of task memory pinned for DMA, over all tasks (leak checks).
pub fn pinned_bytes() -> u64 {
    CORE.lock()
        .as_ref()
        .map_or(0, |state| state.core.pinned_bytes())
}

/// Copies in a size-versioned argument struct: its `size` first, then that many
/// bytes (the size rule of `abi::copy_in`, bounded by `abi::check_size` like
/// every other call's).
fn read_argument<T: abi::AbiStruct>(task: &Task, arg: u64) -> Result<(T, u32), Errno> {
    let head = task.copy_from_user(arg, 4)?;
    let size = abi::read_size(&head)?;
    abi::check_size::<T>(size)?;
    let raw = task.copy_from_user(arg, u64::from(size))?;
    Ok((abi::copy_in::<T>(&raw)?, size))
}

/// Writes the struct back, as many bytes as the task's `size` says.
fn write_argument<T: abi::Pod>(task: &Task, arg: u64, value: &T, size: u32) -> Result<(), Errno> {
    let mut out = alloc::vec![0u8; size as usize];
    abi::copy_out(value, &mut out);
    task.copy_to_user(arg, &out)
}

/// The `device_list` address of a function: segment 0, bus, devfn.
fn pci_address(bdf: pci::Bdf) -> u32 {
    u32::from(bdf.requester_id())
}

/// `device_list`: every PCI function, with whether the platform's IOMMU
/// translates it, whether the kernel refuses it to tasks and why
/// (`device_policy`), and whether the caller or another task holds it.
fn device_list(task: &mut Task, arg: u64) -> Result<(), Errno> {
    let (mut list, size) = read_argument::<abi::DeviceList>(task, arg)?;
    let devices = crate::devices::all();
    // Who holds what, read once under the lock (the list is a snapshot).
    let flags: Vec<(abi::DeviceListFlags, u32)> = with_state(task, |state, caller| {
        devices
            .iter()
            .map(|device| {
                let refused = state
                    .refusal(device)
                    .map_or(abi::DeviceListFlags::empty(), Refusal::flags);
                let Some(requester) = state.requester(device.function.bdf) else {
                    return (refused, 0);
                };
                let holder = state.holder(requester);
                let mut flags = abi::DeviceListFlags::TRANSLATED | refused;
                match holder {
                    Some((owner, _)) if owner == caller => flags |= abi::DeviceListFlags::OPENED,
                    Some(_) => flags |= abi::DeviceListFlags::CLAIMED,
                    None => {}
                }
                (flags, requester.unit.0)
            })
            .collect()
    });
    let capacity = list.num as usize;
    list.num = devices.len() as u32;
    // As many entries as fit, then EMSGSIZE if that was not all (the rule of
    // IOAS_IOVA_RANGES, after Linux).
    for (index, (device, (flags, unit))) in devices.iter().zip(flags).take(capacity).enumerate() {
        let entry = abi::DeviceListEntry {
            pci_address: pci_address(device.function.bdf),
            vendor_id: device.function.vendor_id,
            device_id: device.function.device_id,
            unit,
            flags: flags.bits(),
        };
        let at = list.entries_uptr + (index * core::mem::size_of::<abi::DeviceListEntry>()) as u64;
        task.copy_to_user(at, abi::as_bytes(&entry))?;
    }
    write_argument(task, arg, &list, size)?;
    if capacity < devices.len() {
        return Err(Errno::EMSGSIZE);
    }
    Ok(())
}

/// `device_open`: claims a translated PCI function for the task (blocked until
/// attached), scrubs what an earlier owner left in it, maps BAR 0 into the
/// task, routes its MSI and turns on memory decoding and bus mastering. Any
/// failure gives everything back through the one release path.
fn device_open(task: &mut Task, arg: u64) -> Result<(), Errno> {
    let (mut open, size) = read_argument::<abi::DeviceOpen>(task, arg)?;
    let platform = crate::platform::get();
    let device = crate::devices::all()
        .iter()
        .find(|device| pci_address(device.function.bdf) == open.pci_address)
        .ok_or(Errno::ENOENT)?;
    let bdf = device.function.bdf;
    let bar0 = device.bars.iter().find_map(|bar| match *bar {
        pci::Bar::Memory {
            index: 0,
            address,
            size,
            ..
        } => Some((address, size)),
        _ => None,
    });
    let id = with_state(task, |state, owner| {
        if let Some(refusal) = state.refusal(device) {
            return Err(refusal.errno());
        }
        // The core lets an owner bind every function of a group it holds;
        // one function is opened once.
        if state
            .devices
            .iter()
            .any(|entry| entry.owner == owner && entry.bdf == bdf)
        {
            return Err(Errno::EBUSY);
        }
        let requester = state.requester(bdf).ok_or(Errno::EINVAL)?;
        let aliases = state.aliases(bdf);
        let id =
            state
                .core
                .bind_device_with_aliases(owner, requester.unit, requester.id, &aliases)?;
        // The list outlives the task (its room stays for the next opener):
        // the kernel's, not the task's.
        crate::memory::uncharged(|| {
            state.devices.push(OpenDevice {
                owner,
                dev_id: id,
                bdf,
                requester,
                window: None,
                irq: None,
                collected: 0,
            })
        });
        Ok::<_, Errno>(id)
    })?;
    let opened = with_state(task, |state, owner| {
        scrub_residue(state, owner, device)?;
        let window = match bar0 {
            Some((bus_address, len)) => {
                let cpu = crate::devices::cpu_address(platform, bus_address);
                let va = state
                    .core
                    .services_mut()
                    .with_task(|task| task.map_device(cpu, len))??;
                state.open_device(owner, id).window = Some(va);
                (va, len)
            }
            None => (0, 0),
        };
        route_interrupt(state, owner, id)?;
        Ok::<_, Errno>(window)
    });
    let (va, len) = match opened {
        Ok(window) => window,
        Err(errno) => {
            abandon_open(task, id);
            return Err(errno);
        }
    };
    use pci::ConfigSpace;
    let config = &platform.pci.ecam;
    config.set_command(
        bdf,
        config.command(bdf) | pci::Command::MEMORY_SPACE | pci::Command::BUS_MASTER,
    );
    open.out_dev_id = id;
    open.out_bar0_va = va;
    open.out_bar0_len = len;
    let written = write_argument(task, arg, &open, size);
    if written.is_err() {
        // The task never learns the id: give the device back, as the core
        // does for objects it cannot publish.
        abandon_open(task, id);
    }
    written
}

/// Gives back device `id`, which `device_open` bound for `task` but could not
/// hand over: the claim and everything taken for it.
fn abandon_open(task: &mut Task, id: u32) {
    with_state(task, |state, owner| {
        let _ = state.core.destroy(owner, id);
        release_destroyed_devices(state, owner);
    });
}

impl State {
    /// The bookkeeping of device `dev_id` that `owner` is opening.
    fn open_device(&mut self, owner: OwnerId, dev_id: u32) -> &mut OpenDevice {
        self.devices
            .iter_mut()
            .find(|entry| entry.owner == owner && entry.dev_id == dev_id)
            .expect("device_open records the device before it maps or routes anything")
    }
}

/// Where the zero page sits in the scrub domain: above the first MiB, clear
/// of the interrupt windows (x86 0xFEE0_0000, the ARM MSI doorbell pages).
const SCRUB_IOVA: u64 = 1 << 20;

/// Overwrites what the owner that last let `device` go left in it, if that
/// was not `owner` (VFIO resets a device between owners; edu has no reset,
/// so its buffer is overwritten by DMA). The device is put into a kernel
/// domain that maps one zeroed page read-only at [`SCRUB_IOVA`], copies it,
/// and goes back to blocked; the domain goes with the flush.
fn scrub_residue(state: &mut State, owner: OwnerId, device: &PciDevice) -> Result<(), Errno> {
    let requester = state.requester(device.function.bdf).ok_or(Errno::EINVAL)?;
    // The functions of a group share the requester id, so one of them is
    // scrubbed through the domain the others would be in: all of the group
    // are scrubbed when its first function is opened, before the owner has
    // anything attached.
    let joins_a_held_group = state.devices.iter().any(|entry| {
        entry.owner == owner && entry.requester == requester && entry.bdf != device.function.bdf
    });
    let group: Vec<&'static PciDevice> = crate::devices::all()
        .iter()
        .filter(|other| {
            other.function.bdf == device.function.bdf
                || state.requester(other.function.bdf) == Some(requester)
        })
        .collect();
    for member in group {
        let bdf = member.function.bdf;
        let Some(position) = state.residue.iter().position(|&(at, _)| at == bdf) else {
            continue;
        };
        if state.residue[position].1 == owner || !crate::devices::holds_residue(member) {
            state.residue.swap_remove(position);
            continue;
        }
        if joins_a_held_group {
            // Cannot happen: the group was held since its first function
            // was opened, and scrubbed then.
            return Err(Errno::EBUSY);
        }
        scrub_function(state, member, requester)?;
    }
    Ok(())
}

/// Scrubs one function of a group whose requester id is `requester` (see
/// [`scrub_residue`]) and drops its residue record.
fn scrub_function(state: &mut State, device: &PciDevice, requester: Endpoint) -> Result<(), Errno> {
    let bdf = device.function.bdf;
    let Some(position) = state.residue.iter().position(|&(at, _)| at == bdf) else {
        return Ok(());
    };
    let unit = state.unit_of(requester)?;
    let info = unit.info();
    let len = info.min_page_size().max(abi::syscall::PAGE_SIZE);
    let iova = info.aperture.start.max(SCRUB_IOVA).next_multiple_of(len);
    let pages = (len / abi::syscall::PAGE_SIZE) as usize;
    let zeros = frames::alloc_contiguous(pages, len as usize).ok_or(Errno::ENOMEM)?;
    let domain = match unit.alloc_domain(iommu::DomainKind::Paging) {
        Ok(domain) => domain,
        Err(err) => {
            frames::free(zeros);
            return Err(iommufd::errno(err));
        }
    };
    let read_only = iommu::Prot {
        read: true,
        write: false,
    };
    let mut mapped = false;
    let copied = unit
        .map(domain, iova, zeros.phys, len, read_only)
        .and_then(|gather| {
            mapped = true;
            unit.flush(domain, &gather)
        })
        .and_then(|()| unit.attach(requester.id, domain))
        .map_err(iommufd::errno)
        .and_then(|()| {
            let copied = crate::devices::scrub(crate::platform::get(), device, iova);
            unit.detach(requester.id);
            copied.map_err(|_| Errno::EIO)
        });
    let unmapped = if mapped {
        unit.unmap(domain, iova, len)
            .and_then(|gather| unit.flush(domain, &gather))
    } else {
        Ok(())
    };
    match unmapped.and_then(|()| unit.free_domain(domain)) {
        Ok(()) => frames::free(zeros),
        // The unit may still cache the page: it stays out of the allocator
        // (it only ever held zeros, readable by the device).
        Err(err) => {
            println!("device_open: {bdf}: scrub domain not released ({err:?}); its page is kept")
        }
    }
    copied?;
    state.residue.swap_remove(position);
    Ok(())
}

/// Routes the MSI of device `dev_id` that `owner` is opening to a kernel
/// interrupt through the unit. A device without MSI gets none (`irq_wait`
/// says `ENODEV`).
fn route_interrupt(state: &mut State, owner: OwnerId, dev_id: u32) -> Result<(), Errno> {
    let config = &crate::platform::get().pci.ecam;
    let entry = state.open_device(owner, dev_id);
    let (bdf, requester) = (entry.bdf, entry.requester);
    let Some(msi) = pci::Msi::find(config, bdf) else {
        return Ok(());
    };
    let alias = crate::devices::dma_alias(bdf).requester_id();
    let (irq, message) =
        crate::irq::alloc_device_msi(note_device_interrupt, alias).ok_or(Errno::ENOSPC)?;
    let routed = state.unit_of(requester).and_then(|unit| {
        match crate::devices::msi_buses(bdf) {
            Some(buses) => unit.route_msi_from_buses(requester.id, buses, message),
            None => unit.route_msi(requester.id, message),
        }
        .map_err(iommufd::errno)
    });
    let (route, routed) = match routed {
        Ok(routed) => routed,
        Err(errno) => {
            crate::irq::free(irq);
            return Err(errno);
        }
    };
    msi.enable(config, routed.address, routed.data as u16);
    let entry = state.open_device(owner, dev_id);
    entry.irq = Some((irq, route));
    entry.collected = crate::irq::count(irq);
    Ok(())
}

/// Releases the devices `doomed` picks (all of the task the state is
/// working for).
fn release_devices(state: &mut State, doomed: impl Fn(&Core, &OpenDevice) -> bool) {
    let mut index = 0;
    while index < state.devices.len() {
        if !doomed(&state.core, &state.devices[index]) {
            index += 1;
            continue;
        }
        let entry = state.devices.swap_remove(index);
        release_device(state, entry);
    }
}

/// Takes back everything `device_open` gave the owner of `entry`, in the
/// order VFIO's release uses: the interrupt first (MSI off, remapping entry,
/// kernel interrupt), then the owner's mapping of the registers (a later
/// access is a page fault), then the device is quiesced (bus mastering off,
/// work in flight waited out, decoding off). Only after this may the
/// memory the device reached be unpinned, or another owner open it.
fn release_device(state: &mut State, entry: OpenDevice) {
    let platform = crate::platform::get();
    let config = &platform.pci.ecam;
    if let Some((irq, route)) = entry.irq {
        if let Some(msi) = pci::Msi::find(config, entry.bdf) {
            msi.disable(config);
        }
        if let Ok(unit) = state.unit_of(entry.requester) {
            unit.unroute_msi(route);
        }
        crate::irq::free(irq);
    }
    if let Some(window) = entry.window {
        // The window is the calling task's: only a task's own call or its
        // teardown releases its devices.
        let unmapped = state
            .core
            .services_mut()
            .with_task(|task| task.unmap_device(window));
        debug_assert_eq!(
            unmapped,
            Ok(Ok(())),
            "a device window not mapped in its owner"
        );
    }
    let Some(device) = crate::devices::all()
        .iter()
        .find(|device| device.function.bdf == entry.bdf)
    else {
        return;
    };
    if let Err(stuck) = crate::devices::quiesce(platform, device) {
        println!("device release: {}: not quiesced: {}", entry.bdf, stuck.0);
    }
    // Reset where the hardware offers one: the function alone, or the bus
    // of its group once no function there is open any more.
    let open: Vec<pci::Bdf> = state.devices.iter().map(|other| other.bdf).collect();
    if let Err(not_ready) = crate::devices::reset_released(platform, device, &open) {
        println!("device release: {}: not back from its reset", not_ready.0);
    }
    // A record still there means the device was never scrubbed for this
    // owner (its open failed first): what it may hold is the earlier owner's.
    if !state.residue.iter().any(|&(bdf, _)| bdf == entry.bdf) {
        // The record is about the device, for its next owner: the kernel's.
        crate::memory::uncharged(|| state.residue.push((entry.bdf, entry.owner)));
    }
}

/// Releases the devices of `owner` that the core no longer holds (destroyed
/// by the task, or by the kernel when `device_open` failed late).
fn release_destroyed_devices(state: &mut State, owner: OwnerId) {
    release_devices(state, |core, entry| {
        entry.owner == owner
            && core.device_holder(entry.requester.unit, entry.requester.id)
                != Some((entry.owner, entry.dev_id))
    });
}

/// `irq_wait`'s collection step: how many interrupts device `dev_id` of
/// `owner` raised since the last collection (0: none yet). `ENOENT`: the
/// owner holds no such device; `ENODEV`: it has no MSI.
pub fn collect_interrupts(owner: u64, dev_id: u32) -> Result<u64, Errno> {
    let mut guard = CORE.lock();
    let state = guard.as_mut().ok_or(Errno::ENOENT)?;
    let owner = OwnerId(owner);
    let entry = state
        .devices
        .iter_mut()
        .find(|entry| entry.owner == owner && entry.dev_id == dev_id)
        .ok_or(Errno::ENOENT)?;
    let (irq, _) = entry.irq.ok_or(Errno::ENODEV)?;
    let now = crate::irq::count(irq);
    let new = now.wrapping_sub(entry.collected);
    entry.collected = now;
    Ok(new as u64)
}

/// Brings the iommufd core (and with it the platform's IOMMU unit) up now and
/// puts every device it translates through one attach to a paging domain and
/// back into the blocked state, so that the unit's per-device structures (an
/// SMMUv3 level-2 stream table, VT-d scalable mode's PASID directory and
/// table) exist before a leak check around a task run starts counting.
pub fn prepare() {
    let mut guard = CORE.lock();
    let state = guard.get_or_insert_with(new_state);
    // Devices a task holds are left alone.
    let free: Vec<Endpoint> = crate::devices::all()
        .iter()
        .filter_map(|device| state.requester(device.function.bdf))
        .filter(|&requester| state.holder(requester).is_none())
        .collect();
    for endpoint in free {
        let Ok(unit) = state.unit_of(endpoint) else {
            continue;
        };
        let requester = endpoint.id;
        if let Ok(domain) = unit.alloc_domain(iommu::DomainKind::Paging) {
            let _ = unit.attach(requester, domain);
            unit.detach(requester);
            let _ = unit.free_domain(domain);
        } else {
            unit.detach(requester);
        }
    }
}
