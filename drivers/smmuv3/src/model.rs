//! The driver against a software model of an SMMUv3 register block: the
//! model runs whenever the driver polls (through the clock's `relax`), mirrors
//! CR0 into CR0ACK, applies GBPA updates, consumes the command queue (logging
//! every command and rejecting unknown opcodes with CERROR_ILL, SMMUv3 §7.1)
//! and lets the test inject event records.
//!
//! Like the hardware it caches STEs (§16.2: any STE it has fetched, until a
//! CFGI_STE or CFGI_STE_RANGE names it), and it can stop consuming commands
//! after a given number, as a queue that hangs between a CFGI and its
//! CMD_SYNC does.

use std::boxed::Box;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

use crate::Smmu;
use crate::command::opcode;
use crate::hardware::StreamTableFormat;
use crate::regs::{self, Cr0, Gbpa, Gerror};
use iommu_kit::fakes::{HostDma, maintenance};
use os_services::Clock;
use os_services::mmio::Mmio;

/// QEMU's stage-1+2 SMMU identification (docs/QEMU.md §3).
pub(crate) const IDR: [u32; 6] = [0x0d44_101b, 0x0273_0010, 0, 0x1414, 0, 0x74];

/// The register block and the model's state.
pub(crate) struct Model {
    pub(crate) regs: *mut u8,
    pub(crate) log: RefCell<Vec<[u64; 2]>>,
    /// Opcodes the model rejects with CERROR_ILL.
    pub(crate) illegal: u8,
    /// STEs as last fetched, by StreamID.
    pub(crate) ste_cache: RefCell<BTreeMap<u32, [u64; 8]>>,
    /// How many more commands the queue consumes before it hangs (`None`:
    /// no limit).
    pub(crate) commands_until_hang: Cell<Option<usize>>,
    /// The SMMU does not snoop (IDR0.COHACC = 0): it reads the stream table
    /// and the command queue from memory, which holds only what the driver
    /// wrote back (`maintenance::read_as_device`), not from the CPU's caches.
    pub(crate) reads_memory: Cell<bool>,
}

/// What an SMMU that reads memory finds in a line the driver never wrote
/// back: whatever the memory held before, here every bit set.
pub(crate) const NEVER_WRITTEN_BACK: u64 = u64::MAX;

impl Model {
    pub(crate) fn read(&self, offset: usize) -> u32 {
        // SAFETY: offsets are inside the 128 KiB block the test owns.
        unsafe { self.regs.add(offset).cast::<u32>().read_volatile() }
    }
    pub(crate) fn write(&self, offset: usize, value: u32) {
        // SAFETY: as above.
        unsafe { self.regs.add(offset).cast::<u32>().write_volatile(value) }
    }
    pub(crate) fn read64(&self, offset: usize) -> u64 {
        // SAFETY: as above.
        unsafe { self.regs.add(offset).cast::<u64>().read_volatile() }
    }

    /// The 8 bytes at `address` as the SMMU reads them: the CPU's view, or
    /// memory's when it does not snoop ([`Model::reads_memory`]).
    pub(crate) fn fetch(&self, address: u64) -> u64 {
        if self.reads_memory.get() {
            maintenance::read_as_device(address).unwrap_or(NEVER_WRITTEN_BACK)
        } else {
            // SAFETY: memory the driver allocated (phys == virt), reached only
            // through addresses it programmed.
            unsafe { core::ptr::read_volatile(address as *const u64) }
        }
    }

    /// The STE of `sid` in memory, found through STRTAB_BASE(_CFG) as the
    /// SMMU finds it (§3.3: linear, or an L1STD and its level-2 table).
    pub(crate) fn ste_in_memory(&self, sid: u32) -> [u64; 8] {
        let base = self.read64(regs::STRTAB_BASE.0) & regs::STRTAB_BASE_ADDR_MASK;
        let cfg = self.read(regs::STRTAB_BASE_CFG.0);
        let two_level = (cfg >> 16) & 0b11 == regs::StrtabBaseCfg::FMT_TWO_LEVEL;
        let split = (cfg >> 6) & 0x1F;
        let at = if two_level {
            let l1 = self.fetch(base + u64::from(sid >> split) * 8);
            if l1 & 0x1F == 0 {
                return [0; 8];
            }
            (l1 & regs::STRTAB_BASE_ADDR_MASK) + u64::from(sid & ((1 << split) - 1)) * 64
        } else {
            base + u64::from(sid) * 64
        };
        core::array::from_fn(|word| self.fetch(at + word as u64 * 8))
    }

    /// A device writes at `iova` through the stage-1 translation of `sid`
    /// (4 KiB granule, 48-bit input): with CD.HD, a writable-clean leaf
    /// (DBM with AP[2] set) becomes writable-dirty (AP[2] cleared, D8.4.6).
    /// `false` when nothing translates `iova`.
    pub(crate) fn dma_write(&self, sid: u32, iova: u64) -> bool {
        const ADDRESS: u64 = ((1 << 48) - 1) & !0xFFF;
        const CD_POINTER: u64 = ((1 << 52) - 1) & !0x3F;
        const TTB0: u64 = ((1 << 52) - 1) & !0xF;
        const HD: u64 = 1 << 42;
        const DBM: u64 = 1 << 51;
        const AP_RDONLY: u64 = 1 << 7;
        let ste = self.ste_in_memory(sid);
        let cd = ste[0] & CD_POINTER;
        if ste[0] & 1 == 0 || cd == 0 {
            return false;
        }
        let (cd0, cd1) = (self.fetch(cd), self.fetch(cd + 8));
        let mut table = cd1 & TTB0 & !0xFFF;
        for shift in [39u32, 30, 21, 12] {
            let slot = table + ((iova >> shift) & 0x1FF) * 8;
            let pte = self.fetch(slot);
            if pte & 1 == 0 {
                return false;
            }
            if shift > 12 && pte & 2 != 0 {
                table = pte & ADDRESS;
                continue;
            }
            if cd0 & HD != 0 && pte & DBM != 0 {
                // SAFETY: a leaf of a table the driver allocated (host memory,
                // phys == virt); the SMMU's update is an atomic one.
                let entry = unsafe { core::sync::atomic::AtomicU64::from_ptr(slot as *mut u64) };
                entry.fetch_and(!AP_RDONLY, core::sync::atomic::Ordering::AcqRel);
            }
            return true;
        }
        false
    }

    /// The SMMU fetches the STE of `sid` (a transaction arrived) and keeps it.
    pub(crate) fn fetch_ste(&self, sid: u32) -> [u64; 8] {
        let ste = self.ste_in_memory(sid);
        self.ste_cache.borrow_mut().insert(sid, ste);
        ste
    }

    /// StreamIDs whose cached STE is not the one in memory.
    pub(crate) fn stale_stes(&self) -> Vec<u32> {
        let cache = self.ste_cache.borrow().clone();
        cache
            .into_iter()
            .filter(|(sid, ste)| self.ste_in_memory(*sid) != *ste)
            .map(|(sid, _)| sid)
            .collect()
    }

    /// A CFGI drops the named STEs; a cached stream is live (a device keeps
    /// issuing), so its STE is fetched again at once.
    fn invalidate_stes(&self, command: [u64; 2]) {
        let sid = (command[0] >> 32) as u32;
        let span = match (command[0] & 0xFF) as u8 {
            opcode::CFGI_STE => 1,
            _ => 2u64 << (command[1] & 0x1F),
        };
        let first = u64::from(sid) & !(span - 1);
        let named: Vec<u32> = self
            .ste_cache
            .borrow()
            .keys()
            .copied()
            .filter(|&cached| (first..first + span).contains(&u64::from(cached)))
            .collect();
        for sid in named {
            self.fetch_ste(sid);
        }
    }

    pub(crate) fn step(&self) {
        self.write(regs::CR0ACK.0, self.read(regs::CR0.0));
        self.write(regs::IRQ_CTRLACK.0, self.read(regs::IRQ_CTRL.0));
        self.write(regs::GBPA.0, self.read(regs::GBPA.0) & !Gbpa::UPDATE.bits());
        let cr0 = Cr0::from_bits_retain(self.read(regs::CR0.0));
        let pending = self.read(regs::GERROR.0) ^ self.read(regs::GERRORN.0);
        if !cr0.contains(Cr0::CMDQEN) || pending & Gerror::CMDQ_ERR.bits() != 0 {
            return;
        }
        let base = self.read64(regs::CMDQ_BASE.0);
        let log2 = (base & 0x1F) as u32;
        let entries = (base & regs::QUEUE_BASE_ADDR_MASK) as *const u64;
        let wrap_mask = (2u32 << log2) - 1;
        let prod = self.read(regs::CMDQ_PROD.0) & wrap_mask;
        let mut cons = self.read(regs::CMDQ_CONS.0) & wrap_mask;
        while cons != prod {
            match self.commands_until_hang.get() {
                Some(0) => break,
                Some(left) => self.commands_until_hang.set(Some(left - 1)),
                None => {}
            }
            let slot = (cons & ((1 << log2) - 1)) as usize;
            let command = [
                self.fetch(entries as u64 + slot as u64 * 16),
                self.fetch(entries as u64 + slot as u64 * 16 + 8),
            ];
            if (command[0] & 0xFF) as u8 == self.illegal {
                // CERROR_ILL in CONS.ERR, CMDQ_ERR toggled, queue stopped.
                self.write(regs::CMDQ_CONS.0, cons | (1 << 24));
                self.write(
                    regs::GERROR.0,
                    self.read(regs::GERROR.0) ^ Gerror::CMDQ_ERR.bits(),
                );
                return;
            }
            if matches!(
                (command[0] & 0xFF) as u8,
                opcode::CFGI_STE | opcode::CFGI_STE_RANGE
            ) {
                self.invalidate_stes(command);
            }
            self.log.borrow_mut().push(command);
            cons = (cons + 1) & wrap_mask;
        }
        self.write(regs::CMDQ_CONS.0, cons);
    }

    /// Places an event record at EVENTQ_PROD and advances it.
    pub(crate) fn inject_event(&self, record: [u64; 4]) {
        let base = self.read64(regs::EVENTQ_BASE.0);
        let log2 = (base & 0x1F) as u32;
        let entries = (base & regs::QUEUE_BASE_ADDR_MASK) as *mut u64;
        let prod = self.read(regs::EVENTQ_PROD.0);
        let slot = (prod & ((1 << log2) - 1)) as usize;
        for (i, word) in record.iter().enumerate() {
            // SAFETY: the event queue lies in memory the driver allocated.
            unsafe { *entries.add(slot * 4 + i) = *word };
        }
        let next = ((prod & ((2 << log2) - 1)) + 1) & ((2 << log2) - 1);
        self.write(regs::EVENTQ_PROD.0, next | (prod & (1 << 31)));
    }
}

/// A clock whose polls run the model.
pub(crate) struct ModelClock {
    pub(crate) now: Cell<u64>,
    pub(crate) model: Rc<Model>,
}

impl Clock for ModelClock {
    fn now_ns(&self) -> u64 {
        let now = self.now.get() + 1_000;
        self.now.set(now);
        now
    }
    fn relax(&self) {
        self.model.step();
    }
}

pub(crate) struct Rig {
    pub(crate) _regs: Vec<u64>,
    pub(crate) model: Rc<Model>,
    pub(crate) clock: &'static ModelClock,
    pub(crate) dma: &'static HostDma,
}

pub(crate) fn rig() -> Rig {
    let mut regs = vec![0u64; regs::REGISTER_SPAN / 8];
    let base = regs.as_mut_ptr().cast::<u8>();
    let model = Rc::new(Model {
        regs: base,
        log: RefCell::new(Vec::new()),
        illegal: 0x7F,
        ste_cache: RefCell::new(BTreeMap::new()),
        commands_until_hang: Cell::new(None),
        reads_memory: Cell::new(false),
    });
    for (i, value) in IDR.iter().enumerate() {
        model.write(i * 4, *value);
    }
    model.write(regs::GBPA.0, 0x1000);
    let clock = Box::leak(Box::new(ModelClock {
        now: Cell::new(0),
        model: model.clone(),
    }));
    let dma = Box::leak(Box::new(HostDma::default()));
    Rig {
        _regs: regs,
        model,
        clock,
        dma,
    }
}

pub(crate) fn smmu(rig: &Rig, format: StreamTableFormat) -> Smmu<'static> {
    smmu_with(rig, format, None).expect("bring-up")
}

/// An SMMU over the rig's registers with `maintenance` (for a model whose
/// IDR0 says it does not snoop).
pub(crate) fn smmu_with(
    rig: &Rig,
    format: StreamTableFormat,
    maintenance: Option<iommu_kit::CacheMaintenance>,
) -> Result<Smmu<'static>, crate::Error> {
    // SAFETY: the block is the rig's heap buffer, alive as long as the rig,
    // and only the driver and the model touch it.
    let mmio = unsafe { Mmio::new(NonNull::new(rig.model.regs).unwrap(), regs::REGISTER_SPAN) };
    Smmu::new(mmio, rig.clock, rig.dma, format, maintenance)
}

pub(crate) fn opcodes(log: &[[u64; 2]]) -> Vec<u8> {
    log.iter().map(|c| (c[0] & 0xFF) as u8).collect()
}
