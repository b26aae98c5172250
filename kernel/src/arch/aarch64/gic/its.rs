//! The GICv3 Interrupt Translation Service (IHI 0069H chapter 5.3 and §12.19
//! GITS registers, §5.3 commands): a device's MSI is a write of an EventID to
//! GITS_TRANSLATER, and the ITS turns (the writer's DeviceID, EventID) into
//! an LPI through tables in memory that only this driver fills, with
//! commands: MAPD gives a device its Interrupt Translation Table, MAPTI maps
//! one of its events to an LPI and a collection, MAPC points the collection
//! at this CPU's redistributor. A pair nobody mapped raises nothing.

use alloc::collections::BTreeMap;
use core::time::Duration;

use os_services::mmio::{Mmio, Reg32, Reg64};

use crate::memory::frames::{self, Frames};
use crate::time::CLOCK;

/// §12.19 ITS control registers (the first 64 KiB frame).
const GITS_CTLR: Reg32 = Reg32(0x0000);
const GITS_TYPER: Reg64 = Reg64(0x0008);
const GITS_CBASER: Reg64 = Reg64(0x0080);
const GITS_CWRITER: Reg64 = Reg64(0x0088);
const GITS_CREADR: Reg64 = Reg64(0x0090);
const GITS_BASER: usize = 0x0100;
const GITS_BASER_COUNT: usize = 8;
/// GITS_TRANSLATER, in the second 64 KiB frame: where devices write.
pub const TRANSLATER: u64 = 0x1_0040;
const ITS_SIZE: usize = 0x2_0000;
const GITS_CTLR_ENABLED: u32 = 1;

/// GITS_TYPER (§12.19.17): ITT_entry_size (7:4, bytes - 1), Devbits (17:13,
/// bits - 1).
const TYPER_ITT_ENTRY_SHIFT: u32 = 4;
const TYPER_DEVBITS_SHIFT: u32 = 13;
const TYPER_FIELD5: u64 = 0x1F;
const TYPER_FIELD4: u64 = 0xF;

/// `GITS_CBASER` / `GITS_BASER<n>` (§12.19.2, §12.19.3): Valid (63), inner
/// cacheability (61:59, 0b111 write-back allocating), Type (58:56), Entry_Size
/// (52:48, bytes - 1), physical address (47:12), shareability (11:10, 0b01
/// inner), Page_Size (9:8, 0 = 4 KiB), Size (7:0, pages - 1).
const BASER_VALID: u64 = 1 << 63;
const BASER_CACHEABLE: u64 = 0b111 << 59 | 0b01 << 10;
const BASER_TYPE_SHIFT: u32 = 56;
const BASER_TYPE_MASK: u64 = 0b111;
const BASER_TYPE_DEVICES: u64 = 1;
const BASER_TYPE_COLLECTIONS: u64 = 4;
const BASER_ENTRY_SIZE_SHIFT: u32 = 48;
const BASER_ENTRY_SIZE_MASK: u64 = 0x1F;

/// Commands (§5.3): 32 bytes, the command number in bits 7:0 of the first
/// doubleword; DeviceID in bits 63:32 of it.
const COMMAND_SIZE: usize = 32;
const CMD_SYNC: u64 = 0x05;
const CMD_MAPD: u64 = 0x08;
const CMD_MAPC: u64 = 0x09;
const CMD_MAPTI: u64 = 0x0A;
const CMD_INV: u64 = 0x0C;
const CMD_DISCARD: u64 = 0x0F;
const VALID: u64 = 1 << 63;
/// MAPC/SYNC RDbase field (bits 51:16 of the third doubleword).
const RDBASE_SHIFT: u32 = 16;

/// One 4 KiB page of commands (128 of them).
const QUEUE_PAGES: usize = 1;
/// Device table pages: DeviceIDs below 8192 (buses 0-31) with 8-byte entries.
const DEVICE_TABLE_PAGES: usize = 16;
/// The one collection (this CPU).
const COLLECTION: u64 = 0;
/// EventID bits of each ITT (MAPD Size + 1): 32 events per DeviceID, one
/// for each function that shares it (behind a PCIe-to-PCI bridge every
/// function writes with the bridge's DeviceID; Linux `its_pci_msi_prepare`
/// counts the aliased vectors the same way).
const ITT_EVENT_BITS: u64 = 5;
const COMMAND_TIMEOUT: Duration = Duration::from_millis(100);

/// The ITS's mappings, as the kernel made them.
#[derive(Default)]
struct Mapped {
    /// Per DeviceID: its ITT and the events (EventID -> LPI) it has.
    devices: BTreeMap<u32, (Frames, BTreeMap<u32, u32>)>,
    /// Per LPI: the DeviceID and EventID it translates.
    lpis: BTreeMap<u32, (u32, u32)>,
}

pub struct Its {
    regs: Mmio,
    base: u64,
    queue: Frames,
    /// Next free command slot (byte offset into the queue).
    write: spin::Mutex<usize>,
    /// What is mapped: per DeviceID its ITT and events, per LPI its event.
    mapped: spin::Mutex<Mapped>,
    itt_bytes: usize,
    processor: u64,
}

// SAFETY: the command queue and the table of mappings are behind their
// locks, taken from thread context only, one CPU at a time.
unsafe impl Sync for Its {}
// SAFETY: as above.
unsafe impl Send for Its {}

static ITS: spin::Once<Its> = spin::Once::new();

pub fn get() -> Option<&'static Its> {
    ITS.get()
}

/// Sets the ITS up with its tables and command queue, maps the collection to
/// redistributor `processor` and enables it.
pub fn init(base: u64, processor: u32) -> Result<(), &'static str> {
    let regs = super::map(base, ITS_SIZE);
    let typer = regs.read64(GITS_TYPER);
    let itt_entry = ((typer >> TYPER_ITT_ENTRY_SHIFT) & TYPER_FIELD4) as usize + 1;
    let devbits = ((typer >> TYPER_DEVBITS_SHIFT) & TYPER_FIELD5) as u32 + 1;
    let queue = frames::alloc_contiguous(QUEUE_PAGES, frames::FRAME_SIZE)
        .ok_or("no memory for the ITS command queue")?;
    regs.write64(
        GITS_CBASER,
        BASER_VALID | BASER_CACHEABLE | queue.phys | (QUEUE_PAGES as u64 - 1),
    );
    regs.write64(GITS_CWRITER, 0);
    for index in 0..GITS_BASER_COUNT {
        let reg = Reg64(GITS_BASER + index * 8);
        let baser = regs.read64(reg);
        let entry_size = ((baser >> BASER_ENTRY_SIZE_SHIFT) & BASER_ENTRY_SIZE_MASK) as usize + 1;
        let pages = match (baser >> BASER_TYPE_SHIFT) & BASER_TYPE_MASK {
            BASER_TYPE_DEVICES => {
                // Enough for every DeviceID the machine can have, up to the
                // pages this driver gives (a flat table).
                let wanted = (1usize << devbits.min(16)) * entry_size;
                wanted.div_ceil(frames::FRAME_SIZE).min(DEVICE_TABLE_PAGES)
            }
            BASER_TYPE_COLLECTIONS => 1,
            _ => continue,
        };
        let table = frames::alloc_contiguous(pages, frames::FRAME_SIZE)
            .ok_or("no memory for an ITS table")?;
        regs.write64(
            reg,
            BASER_VALID
                | BASER_CACHEABLE
                | (baser & (BASER_TYPE_MASK << BASER_TYPE_SHIFT))
                | (baser & (BASER_ENTRY_SIZE_MASK << BASER_ENTRY_SIZE_SHIFT))
                | table.phys
                | (pages as u64 - 1),
        );
    }
    regs.write32(GITS_CTLR, regs.read32(GITS_CTLR) | GITS_CTLR_ENABLED);
    let its = ITS.call_once(|| Its {
        regs,
        base,
        queue,
        write: spin::Mutex::new(0),
        mapped: spin::Mutex::new(Mapped::default()),
        itt_bytes: (itt_entry << ITT_EVENT_BITS).max(256),
        processor: u64::from(processor),
    });
    its.submit(&[
        [
            CMD_MAPC,
            0,
            VALID | its.processor << RDBASE_SHIFT | COLLECTION,
            0,
        ],
        its.sync(),
    ])
}

impl Its {
    fn sync(&self) -> [u64; 4] {
        [CMD_SYNC, 0, self.processor << RDBASE_SHIFT, 0]
    }

    /// Writes `commands` into the queue, moves GITS_CWRITER past them and
    /// waits (bounded) until the ITS has read them all.
    fn submit(&self, commands: &[[u64; 4]]) -> Result<(), &'static str> {
        let mut write = self.write.lock();
        let size = QUEUE_PAGES * frames::FRAME_SIZE;
        for command in commands {
            for (word, value) in command.iter().enumerate() {
                // SAFETY: the slot lies in the queue this driver owns
                // (identity-mapped); the ITS reads it only after CWRITER moves.
                unsafe {
                    core::ptr::write_volatile(
                        self.queue.as_mut_ptr().add(*write + word * 8).cast::<u64>(),
                        *value,
                    )
                };
            }
            *write = (*write + COMMAND_SIZE) % size;
        }
        // The commands must be in memory before the ITS is told (`dma_wmb`).
        // SAFETY: a barrier only.
        unsafe { core::arch::asm!("dsb oshst", options(nostack)) };
        self.regs.write64(GITS_CWRITER, *write as u64);
        let target = *write as u64;
        os_services::wait_until(&CLOCK, COMMAND_TIMEOUT, || {
            (self.regs.read64(GITS_CREADR) & !0x1F == target).then_some(())
        })
        .map_err(|_| "ITS command queue stalled")
    }

    /// Maps the lowest free event of DeviceID `device` to LPI `intid` on
    /// this CPU, giving the device an ITT first if it has none; returns the
    /// doorbell address and the data (the EventID) the device writes.
    pub fn map(&self, device: u32, intid: u32) -> Result<(u64, u32), &'static str> {
        let mut mapped = self.mapped.lock();
        let device_word = u64::from(device) << 32;
        let (event, new_itt) = match mapped.devices.get(&device) {
            Some((_, events)) => {
                let event = (0..1u32 << ITT_EVENT_BITS)
                    .find(|event| !events.contains_key(event))
                    .ok_or("every event of the DeviceID is taken")?;
                (event, None)
            }
            None => {
                let itt_pages = self.itt_bytes.div_ceil(frames::FRAME_SIZE);
                let itt = frames::alloc_contiguous(itt_pages, frames::FRAME_SIZE)
                    .ok_or("no memory for an ITT")?;
                (0, Some(itt))
            }
        };
        let mapti = [
            CMD_MAPTI | device_word,
            u64::from(event) | u64::from(intid) << 32,
            COLLECTION,
            0,
        ];
        let inv = [CMD_INV | device_word, u64::from(event), 0, 0];
        let submitted = match new_itt {
            Some(itt) => self.submit(&[
                [
                    CMD_MAPD | device_word,
                    ITT_EVENT_BITS - 1,
                    VALID | itt.phys,
                    0,
                ],
                mapti,
                inv,
                self.sync(),
            ]),
            None => self.submit(&[mapti, inv, self.sync()]),
        };
        if let Err(why) = submitted {
            // The ITS may have read the MAPD before it stalled: the ITT stays
            // out of the allocator, as in `unmap`.
            println!("its: device {device:#x} event {event} not mapped ({why}); an ITT is kept");
            return Err(why);
        }
        if let Some(itt) = new_itt {
            mapped.devices.insert(device, (itt, BTreeMap::new()));
        }
        if let Some((_, events)) = mapped.devices.get_mut(&device) {
            events.insert(event, intid);
        }
        mapped.lpis.insert(intid, (device, event));
        Ok((self.base + TRANSLATER, event))
    }

    /// Undoes [`Its::map`]: the event is discarded; with the DeviceID's last
    /// event the device is unmapped too, and its ITT freed once the ITS has
    /// read the commands.
    pub fn unmap(&self, intid: u32) {
        let mut mapped = self.mapped.lock();
        let Some((device, event)) = mapped.lpis.remove(&intid) else {
            return;
        };
        let last = mapped.devices.get_mut(&device).is_none_or(|(_, events)| {
            events.remove(&event);
            events.is_empty()
        });
        let device_word = u64::from(device) << 32;
        let discard = [CMD_DISCARD | device_word, u64::from(event), 0, 0];
        if !last {
            if let Err(why) = self.submit(&[discard, self.sync()]) {
                println!("its: device {device:#x} event {event} not discarded ({why})");
            }
            return;
        }
        let Some((itt, _)) = mapped.devices.remove(&device) else {
            return;
        };
        let done = self.submit(&[discard, [CMD_MAPD | device_word, 0, 0, 0], self.sync()]);
        match done {
            Ok(()) => frames::free(itt),
            // The ITS may still read the ITT: keep it out of the allocator.
            Err(why) => println!("its: device {device:#x} not unmapped ({why}); its ITT is kept"),
        }
    }
}
