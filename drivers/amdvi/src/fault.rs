//! Event-log entries (AMD IOMMU §2.5 "Event Logging", 128 bits each) and the ring
//! reader.
//!
//! Common layout (§2.5.1): DeviceID in bits 15:0, PASID bits 19:16 in 19:16, a DomainID or
//! PASID bits 15:0 in 47:32, event flags in 59:48, EventCode in 63:60; bits 127:64 hold
//! the address the event is about.

use alloc::vec::Vec;
use core::mem::size_of;

use bitflags::bitflags;
use iommu::{Access, DeviceId, FaultReason, FaultRecord, UnitId};

use iommu_kit::{BadPointer, SlotRing};

/// One raw event-log entry.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawEvent(pub [u64; 2]);

const _: () = assert!(size_of::<RawEvent>() == 16);

/// §2.5 Table 48 EventCode values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventCode {
    /// §2.5.2 ILLEGAL_DEV_TABLE_ENTRY.
    IllegalDevTableEntry = 0x1,
    /// §2.5.3 IO_PAGE_FAULT.
    IoPageFault = 0x2,
    /// §2.5.4 DEV_TAB_HARDWARE_ERROR.
    DevTabHardwareError = 0x3,
    /// §2.5.5 PAGE_TAB_HARDWARE_ERROR.
    PageTabHardwareError = 0x4,
    /// §2.5.6 ILLEGAL_COMMAND_ERROR.
    IllegalCommandError = 0x5,
    /// §2.5.7 COMMAND_HARDWARE_ERROR.
    CommandHardwareError = 0x6,
    /// §2.5.8 IOTLB_INV_TIMEOUT.
    IotlbInvTimeout = 0x7,
    /// §2.5.9 INVALID_DEVICE_REQUEST.
    InvalidDeviceRequest = 0x8,
    /// §2.5.10 INVALID_PPR_REQUEST.
    InvalidPprRequest = 0x9,
    /// §2.5.11 EVENT_COUNTER_ZERO.
    EventCounterZero = 0xA,
    /// RMP_HW_ERROR (SNP).
    RmpHardwareError = 0xC,
    /// RMP_PAGE_FAULT (SNP).
    RmpPageFault = 0xD,
}

bitflags! {
    /// §2.5.2-§2.5.9 event flags (event bits 59:48, numbered from bit 48 here).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EventFlags: u16 {
        /// GN: the request had a PASID (guest translation).
        const GN = 1 << 0;
        /// NX: an instruction fetch.
        const NX = 1 << 1;
        /// US: a user-mode request.
        const US = 1 << 2;
        /// I: an interrupt request (not a memory access).
        const I = 1 << 3;
        /// PR: the page was present (so the fault is a permission problem).
        const PR = 1 << 4;
        /// RW: a write (1) or a read (0).
        const RW = 1 << 5;
        /// PE: the access was denied by a permission bit.
        const PE = 1 << 6;
        /// RZ: a reserved bit was set in a table entry.
        const RZ = 1 << 7;
        /// TR: a translation request (ATS) rather than a transaction.
        const TR = 1 << 8;
    }
}

/// One decoded event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// §2.5.2 ILLEGAL_DEV_TABLE_ENTRY: a request hit a DTE with reserved or
    /// inconsistent fields.
    IllegalDevTableEntry {
        /// The requester's DeviceID.
        device_id: u16,
        /// The event's flags (GN, NX, US, I, PR, RW, PE, RZ, TR).
        flags: EventFlags,
        /// The address the event names.
        address: u64,
    },
    /// §2.5.3 IO_PAGE_FAULT: a translation or permission failure. `domain` is the
    /// DomainID (or PASID bits 15:0 when GN).
    IoPageFault {
        /// The requester's DeviceID.
        device_id: u16,
        /// The DomainID (or PASID bits 15:0 with GN).
        domain: u16,
        /// The event's flags (GN, NX, US, I, PR, RW, PE, RZ, TR).
        flags: EventFlags,
        /// The address the event names.
        address: u64,
    },
    /// §2.5.4 DEV_TAB_HARDWARE_ERROR: reading the DTE at `address` failed.
    DevTabHardwareError {
        /// The requester's DeviceID.
        device_id: u16,
        /// The event's flags (GN, NX, US, I, PR, RW, PE, RZ, TR).
        flags: EventFlags,
        /// The address the event names.
        address: u64,
    },
    /// §2.5.5 PAGE_TAB_HARDWARE_ERROR: reading the table entry at `address` failed.
    PageTabHardwareError {
        /// The requester's DeviceID.
        device_id: u16,
        /// The DomainID (or PASID bits 15:0 with GN).
        domain: u16,
        /// The event's flags (GN, NX, US, I, PR, RW, PE, RZ, TR).
        flags: EventFlags,
        /// The address the event names.
        address: u64,
    },
    /// §2.5.6 ILLEGAL_COMMAND_ERROR: the command at physical `address` is malformed;
    /// the IOMMU stopped fetching commands.
    IllegalCommand {
        /// Where the command sits.
        address: u64,
    },
    /// §2.5.7 COMMAND_HARDWARE_ERROR: fetching the command at `address` failed.
    CommandHardwareError {
        /// The event's flags.
        flags: EventFlags,
        /// Where the command sits.
        address: u64,
    },
    /// §2.5.8 IOTLB_INV_TIMEOUT: a device IOTLB did not answer the command at `address`.
    IotlbInvTimeout {
        /// The device whose IOTLB did not answer.
        device_id: u16,
        /// Where the command sits.
        address: u64,
    },
    /// §2.5.9 INVALID_DEVICE_REQUEST: a request type the DTE does not allow.
    InvalidDeviceRequest {
        /// The requester's DeviceID.
        device_id: u16,
        /// The event's flags (GN, NX, US, I, PR, RW, PE, RZ, TR).
        flags: EventFlags,
        /// The address the event names.
        address: u64,
    },
    /// §2.5.10 INVALID_PPR_REQUEST.
    InvalidPprRequest {
        /// The requester's DeviceID.
        device_id: u16,
        /// The event's flags (GN, NX, US, I, PR, RW, PE, RZ, TR).
        flags: EventFlags,
        /// The address the event names.
        address: u64,
    },
    /// §2.5.11 EVENT_COUNTER_ZERO (performance counters).
    EventCounterZero {
        /// The entry as logged.
        raw: [u64; 2],
    },
    /// RMP_HW_ERROR (SNP): reading the RMP entry at `address` failed.
    RmpHardwareError {
        /// The requester's DeviceID.
        device_id: u16,
        /// The event's flags (GN, NX, US, I, PR, RW, PE, RZ, TR).
        flags: EventFlags,
        /// The address the event names.
        address: u64,
    },
    /// RMP_PAGE_FAULT (SNP): the RMP denied the access.
    RmpPageFault {
        /// The requester's DeviceID.
        device_id: u16,
        /// The event's flags (GN, NX, US, I, PR, RW, PE, RZ, TR).
        flags: EventFlags,
        /// The address the event names.
        address: u64,
    },
    /// A code this driver does not know; kept raw.
    Unknown {
        /// Its event code.
        code: u8,
        /// The entry as logged.
        raw: [u64; 2],
    },
}

const CODE_SHIFT: u32 = 60;
const FLAGS_SHIFT: u32 = 48;
const FLAGS_MASK: u64 = 0xFFF;
const DOMAIN_SHIFT: u32 = 32;

impl RawEvent {
    /// The event code (bits 63:60 of the second quadword).
    pub fn code(&self) -> u8 {
        (self.0[0] >> CODE_SHIFT) as u8
    }

    /// The entry decoded by its code.
    pub fn decode(&self) -> Event {
        let q0 = self.0[0];
        let device_id = q0 as u16;
        let domain = (q0 >> DOMAIN_SHIFT) as u16;
        let flags = EventFlags::from_bits_retain(((q0 >> FLAGS_SHIFT) & FLAGS_MASK) as u16);
        let address = self.0[1];
        match self.code() {
            0x1 => Event::IllegalDevTableEntry {
                device_id,
                flags,
                address,
            },
            0x2 => Event::IoPageFault {
                device_id,
                domain,
                flags,
                address,
            },
            0x3 => Event::DevTabHardwareError {
                device_id,
                flags,
                address,
            },
            0x4 => Event::PageTabHardwareError {
                device_id,
                domain,
                flags,
                address,
            },
            0x5 => Event::IllegalCommand { address },
            0x6 => Event::CommandHardwareError { flags, address },
            0x7 => Event::IotlbInvTimeout { device_id, address },
            0x8 => Event::InvalidDeviceRequest {
                device_id,
                flags,
                address,
            },
            0x9 => Event::InvalidPprRequest {
                device_id,
                flags,
                address,
            },
            0xA => Event::EventCounterZero { raw: self.0 },
            0xC => Event::RmpHardwareError {
                device_id,
                flags,
                address,
            },
            0xD => Event::RmpPageFault {
                device_id,
                flags,
                address,
            },
            code => Event::Unknown { code, raw: self.0 },
        }
    }

    /// Builds an entry from its fields (the layout of §2.5.1); for tests and models.
    pub fn encode(code: u8, device_id: u16, domain: u16, flags: EventFlags, address: u64) -> Self {
        Self([
            u64::from(code) << CODE_SHIFT
                | u64::from(flags.bits()) << FLAGS_SHIFT
                | u64::from(domain) << DOMAIN_SHIFT
                | u64::from(device_id),
            address,
        ])
    }
}

impl Event {
    /// The requester this event is about, when it names one.
    pub fn device_id(&self) -> Option<u16> {
        match *self {
            Event::IllegalDevTableEntry { device_id, .. }
            | Event::IoPageFault { device_id, .. }
            | Event::DevTabHardwareError { device_id, .. }
            | Event::PageTabHardwareError { device_id, .. }
            | Event::IotlbInvTimeout { device_id, .. }
            | Event::InvalidDeviceRequest { device_id, .. }
            | Event::InvalidPprRequest { device_id, .. }
            | Event::RmpHardwareError { device_id, .. }
            | Event::RmpPageFault { device_id, .. } => Some(device_id),
            _ => None,
        }
    }

    /// The fault record for the owning domain's queue, for events caused by a device's
    /// request. Command-side events (ILLEGAL_COMMAND, hardware errors of the command
    /// buffer, counters) are unit errors, not device faults.
    pub fn fault_record(&self, unit: UnitId) -> Option<FaultRecord> {
        let access = |flags: EventFlags| {
            if flags.contains(EventFlags::NX) {
                Access::Execute
            } else if flags.contains(EventFlags::RW) {
                Access::Write
            } else {
                Access::Read
            }
        };
        let record = |device_id: u16, address: u64, flags: EventFlags, reason, code: EventCode| {
            FaultRecord {
                unit,
                vendor_code: code as u32,
                requester: DeviceId(u32::from(device_id)),
                iova: address,
                access: access(flags),
                reason,
                guest_event: None,
            }
        };
        Some(match *self {
            Event::IoPageFault {
                device_id,
                flags,
                address,
                ..
            } => {
                let reason = if flags.contains(EventFlags::RZ) {
                    FaultReason::Other(u32::from(EventCode::IoPageFault as u8))
                } else if !flags.contains(EventFlags::PR) {
                    FaultReason::NotPresent
                } else {
                    FaultReason::Permission
                };
                record(device_id, address, flags, reason, EventCode::IoPageFault)
            }
            Event::IllegalDevTableEntry {
                device_id,
                flags,
                address,
            } => record(
                device_id,
                address,
                flags,
                FaultReason::Blocked,
                EventCode::IllegalDevTableEntry,
            ),
            Event::DevTabHardwareError {
                device_id,
                flags,
                address,
            } => record(
                device_id,
                address,
                flags,
                FaultReason::Other(EventCode::DevTabHardwareError as u32),
                EventCode::DevTabHardwareError,
            ),
            Event::PageTabHardwareError {
                device_id,
                flags,
                address,
                ..
            } => record(
                device_id,
                address,
                flags,
                FaultReason::Other(EventCode::PageTabHardwareError as u32),
                EventCode::PageTabHardwareError,
            ),
            Event::InvalidDeviceRequest {
                device_id,
                flags,
                address,
            } => record(
                device_id,
                address,
                flags,
                FaultReason::Other(EventCode::InvalidDeviceRequest as u32),
                EventCode::InvalidDeviceRequest,
            ),
            Event::RmpPageFault {
                device_id,
                flags,
                address,
            } => record(
                device_id,
                address,
                flags,
                FaultReason::Other(EventCode::RmpPageFault as u32),
                EventCode::RmpPageFault,
            ),
            _ => return None,
        })
    }
}

/// Reads every entry between the consumer pointer `head` and the producer pointer
/// `tail` (event-log register values) through `read`, in order, wrapping at the end of
/// the ring. Returns the events and the new head register value (= `tail`).
pub fn drain(
    ring: SlotRing,
    head: u64,
    tail: u64,
    mut read: impl FnMut(u32) -> RawEvent,
) -> Result<(Vec<Event>, u64), BadPointer> {
    let mut at = ring.index(head)?;
    let end = ring.index(tail)?;
    let mut events = Vec::with_capacity(ring.used(at, end) as usize);
    while at != end {
        events.push(read(at).decode());
        at = ring.next(at);
    }
    Ok((events, ring.pointer(end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn io_page_fault_golden() {
        // IO_PAGE_FAULT from 00:05.0 (0x28), domain 3, a write (RW) to a present page
        // denied by permission (PR|PE), at IOVA 0x1_0000_2000.
        let raw = RawEvent([0x2070_0003_0000_0028, 0x1_0000_2000]);
        let event = raw.decode();
        assert_eq!(
            event,
            Event::IoPageFault {
                device_id: 0x28,
                domain: 3,
                flags: EventFlags::PR | EventFlags::RW | EventFlags::PE,
                address: 0x1_0000_2000,
            }
        );
        assert_eq!(
            RawEvent::encode(
                2,
                0x28,
                3,
                EventFlags::PR | EventFlags::RW | EventFlags::PE,
                0x1_0000_2000
            ),
            raw
        );
        let record = event.fault_record(UnitId(0)).unwrap();
        assert_eq!(record.requester, DeviceId(0x28));
        assert_eq!(record.iova, 0x1_0000_2000);
        assert_eq!(record.access, Access::Write);
        assert_eq!(record.reason, FaultReason::Permission);
    }

    #[test]
    fn not_present_read_fault_maps_to_not_present() {
        let raw = RawEvent([0x2000_0001_0000_0020, 0xB000]);
        let record = raw.decode().fault_record(UnitId(1)).unwrap();
        assert_eq!(record.access, Access::Read);
        assert_eq!(record.reason, FaultReason::NotPresent);
        let exec = RawEvent::encode(2, 0x20, 1, EventFlags::NX | EventFlags::PR, 0);
        assert_eq!(
            exec.decode().fault_record(UnitId(1)).unwrap().access,
            Access::Execute
        );
        let reserved = RawEvent::encode(2, 0x20, 1, EventFlags::RZ | EventFlags::PR, 0);
        assert_eq!(
            reserved.decode().fault_record(UnitId(1)).unwrap().reason,
            FaultReason::Other(2)
        );
    }

    #[test]
    fn every_event_code_decodes() {
        let flags = EventFlags::I | EventFlags::TR;
        let cases = [
            (
                1,
                Event::IllegalDevTableEntry {
                    device_id: 0x10,
                    flags,
                    address: 0xA000,
                },
            ),
            (
                2,
                Event::IoPageFault {
                    device_id: 0x10,
                    domain: 0x55,
                    flags,
                    address: 0xA000,
                },
            ),
            (
                3,
                Event::DevTabHardwareError {
                    device_id: 0x10,
                    flags,
                    address: 0xA000,
                },
            ),
            (
                4,
                Event::PageTabHardwareError {
                    device_id: 0x10,
                    domain: 0x55,
                    flags,
                    address: 0xA000,
                },
            ),
            (5, Event::IllegalCommand { address: 0xA000 }),
            (
                6,
                Event::CommandHardwareError {
                    flags,
                    address: 0xA000,
                },
            ),
            (
                7,
                Event::IotlbInvTimeout {
                    device_id: 0x10,
                    address: 0xA000,
                },
            ),
            (
                8,
                Event::InvalidDeviceRequest {
                    device_id: 0x10,
                    flags,
                    address: 0xA000,
                },
            ),
            (
                9,
                Event::InvalidPprRequest {
                    device_id: 0x10,
                    flags,
                    address: 0xA000,
                },
            ),
            (
                0xC,
                Event::RmpHardwareError {
                    device_id: 0x10,
                    flags,
                    address: 0xA000,
                },
            ),
            (
                0xD,
                Event::RmpPageFault {
                    device_id: 0x10,
                    flags,
                    address: 0xA000,
                },
            ),
        ];
        for (code, expected) in cases {
            let raw = RawEvent::encode(code, 0x10, 0x55, flags, 0xA000);
            assert_eq!(raw.decode(), expected, "code {code:#x}");
        }
        let counter = RawEvent::encode(0xA, 0, 0, EventFlags::empty(), 7);
        assert_eq!(counter.decode(), Event::EventCounterZero { raw: counter.0 });
        for code in [0x0, 0xB, 0xE, 0xF] {
            let raw = RawEvent::encode(code, 1, 2, flags, 3);
            assert_eq!(raw.decode(), Event::Unknown { code, raw: raw.0 });
        }
        // Only device-caused events become fault records.
        assert!(
            Event::IllegalCommand { address: 0 }
                .fault_record(UnitId(0))
                .is_none()
        );
        assert_eq!(
            RawEvent::encode(1, 0x10, 0, EventFlags::empty(), 0)
                .decode()
                .fault_record(UnitId(0))
                .unwrap()
                .reason,
            FaultReason::Blocked
        );
    }

    /// A model of the hardware producer (§2.5): writes at the tail, and when the next
    /// tail would equal the head the log is full: the event is dropped and
    /// EventOverflow is set.
    struct ModelLog {
        ring: SlotRing,
        entries: std::vec::Vec<RawEvent>,
        head: u32,
        tail: u32,
        overflow: bool,
    }

    impl ModelLog {
        fn new(log2: u32) -> Self {
            let ring = SlotRing::new(log2, crate::regs::ENTRY_SIZE);
            Self {
                ring,
                entries: vec![RawEvent::default(); ring.slots() as usize],
                head: 0,
                tail: 0,
                overflow: false,
            }
        }
        fn log(&mut self, event: RawEvent) {
            if self.ring.next(self.tail) == self.head {
                self.overflow = true;
                return;
            }
            self.entries[self.tail as usize] = event;
            self.tail = self.ring.next(self.tail);
        }
        fn drain(&mut self) -> std::vec::Vec<Event> {
            let (events, head) = drain(
                self.ring,
                self.ring.pointer(self.head),
                self.ring.pointer(self.tail),
                |i| self.entries[i as usize],
            )
            .unwrap();
            self.head = self.ring.index(head).unwrap();
            events
        }
    }

    fn fault(n: u64) -> RawEvent {
        RawEvent::encode(2, 0x20, 1, EventFlags::empty(), n << 12)
    }

    fn addresses(events: &[Event]) -> std::vec::Vec<u64> {
        events
            .iter()
            .map(|e| match e {
                Event::IoPageFault { address, .. } => address >> 12,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn reader_follows_the_producer_across_the_wrap() {
        let mut log = ModelLog::new(8);
        let mut next = 0;
        // Several rounds that each cross the end of the 256-entry ring.
        for round in 0..5 {
            let batch = 100 + round * 7;
            for _ in 0..batch {
                log.log(fault(next));
                next += 1;
            }
            let events = log.drain();
            let expected: std::vec::Vec<u64> = (next - batch..next).collect();
            assert_eq!(addresses(&events), expected);
            assert!(!log.overflow);
        }
        assert!(log.head == log.tail && next > 256);
    }

    #[test]
    fn overflow_keeps_the_oldest_entries_and_is_flagged() {
        let mut log = ModelLog::new(8);
        for n in 0..300 {
            log.log(fault(n));
        }
        assert!(log.overflow);
        let events = log.drain();
        // 255 slots usable: events 0..255 kept, 255..300 lost.
        assert_eq!(addresses(&events), (0..255).collect::<std::vec::Vec<_>>());
        // After the drain the log accepts events again.
        log.overflow = false;
        log.log(fault(1000));
        assert_eq!(addresses(&log.drain()), [1000]);
    }

    #[test]
    fn reader_rejects_garbage_pointers() {
        let ring = SlotRing::new(8, crate::regs::ENTRY_SIZE);
        assert_eq!(
            drain(ring, 0x8, 0x20, |_| RawEvent::default()).unwrap_err(),
            BadPointer(0x8)
        );
        assert_eq!(
            drain(ring, 0, 0x2000, |_| RawEvent::default()).unwrap_err(),
            BadPointer(0x2000)
        );
    }
}
