//! Event queue records (SMMUv3 §7.3 event records, 32 bytes) and the
//! coalescing of the per-chunk events of one faulting transfer into one fault.

use alloc::vec::Vec;
use iommu::{Access, DeviceId, FaultReason, FaultRecord, GuestEvent, UnitId};

/// SMMUv3 §7.3 event record: four little-endian doublewords.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawEvent(pub [u64; 4]);

const _: () = assert!(core::mem::size_of::<RawEvent>() == 32);

/// SMMUv3 §7.3 event types the driver distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// 0x01 F_UUT: unsupported upstream transaction.
    UnsupportedTransaction,
    /// 0x02 C_BAD_STREAMID: StreamID beyond the stream table.
    BadStreamId,
    /// 0x03 F_STE_FETCH.
    SteFetch,
    /// 0x04 C_BAD_STE: invalid or malformed STE.
    BadSte,
    /// 0x06 F_STREAM_DISABLED.
    StreamDisabled,
    /// 0x08 C_BAD_SUBSTREAMID.
    BadSubstreamId,
    /// 0x09 F_CD_FETCH.
    CdFetch,
    /// 0x0A C_BAD_CD.
    BadCd,
    /// 0x0B F_WALK_EABT: external abort on a table walk.
    WalkExternalAbort,
    /// 0x10 F_TRANSLATION: no valid descriptor.
    Translation,
    /// 0x11 F_ADDR_SIZE: address outside the configured size.
    AddressSize,
    /// 0x12 F_ACCESS: access flag clear.
    AccessFlag,
    /// 0x13 F_PERMISSION.
    Permission,
    /// 0x20 F_TLB_CONFLICT.
    TlbConflict,
    /// 0x21 F_CFG_CONFLICT.
    ConfigConflict,
    /// Another event type, by its code.
    Other(u8),
    /// Not an SMMU event: the driver's record that a domain's owner missed
    /// faults. `overflows` counts event-queue overflows while the domain had
    /// streams attached (the SMMU discards records then and does not say how
    /// many, SMMUv3 §7.4); `dropped` counts faults the driver discarded because
    /// the domain's fault queue was full (the record's `count` is the events
    /// those faults covered).
    Lost {
        /// Event-queue overflows while the domain had streams attached.
        overflows: u32,
        /// Faults dropped because the domain's queue was full.
        dropped: u32,
    },
}

impl EventKind {
    /// The kind event type `code` names.
    pub fn from_code(code: u8) -> Self {
        match code {
            0x01 => Self::UnsupportedTransaction,
            0x02 => Self::BadStreamId,
            0x03 => Self::SteFetch,
            0x04 => Self::BadSte,
            0x06 => Self::StreamDisabled,
            0x08 => Self::BadSubstreamId,
            0x09 => Self::CdFetch,
            0x0A => Self::BadCd,
            0x0B => Self::WalkExternalAbort,
            0x10 => Self::Translation,
            0x11 => Self::AddressSize,
            0x12 => Self::AccessFlag,
            0x13 => Self::Permission,
            0x20 => Self::TlbConflict,
            0x21 => Self::ConfigConflict,
            other => Self::Other(other),
        }
    }

    /// Whether the record carries InputAddr, RnW and the stage (the
    /// translation-fault layout of §7.3.12-§7.3.15).
    pub fn has_address(self) -> bool {
        matches!(
            self,
            Self::Translation
                | Self::AddressSize
                | Self::AccessFlag
                | Self::Permission
                | Self::WalkExternalAbort
                | Self::UnsupportedTransaction
                | Self::StreamDisabled
        )
    }
}

/// Which stage produced a translation fault (§7.3 dword1 `S2[39]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Stage 1.
    Stage1,
    /// Stage 2.
    Stage2,
}

/// §7.3 dword1 `CLASS[41:40]`: what the faulting access was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultClass {
    /// 0b00: a CD fetch.
    ContextDescriptor,
    /// 0b01: a stage-1 table walk (stage-2 fault on it).
    TableWalk,
    /// 0b10: the input transaction itself.
    Input,
    /// 0b11: reserved.
    Reserved,
}

/// A decoded event record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The event type.
    pub kind: EventKind,
    /// The StreamID.
    pub sid: u32,
    /// SubstreamID when SSV (dword0 bit 11) is set.
    pub ssid: Option<u32>,
    /// dword1 `RnW[35]`: 1 = read.
    pub read: bool,
    /// S2: which stage faulted.
    pub stage: Stage,
    /// CLASS: what access faulted.
    pub class: FaultClass,
    /// dword2 InputAddr.
    pub input_addr: u64,
    /// dword3 `IPA[51:12]` of a stage-2 fault.
    pub ipa: u64,
    /// The record as the SMMU wrote it.
    pub raw: RawEvent,
}

const EVT0_TYPE_MASK: u64 = 0xFF;
const EVT0_SSV: u64 = 1 << 11;
const EVT0_SSID_SHIFT: u32 = 12;
const EVT0_SSID_MASK: u64 = 0xF_FFFF;
const EVT0_SID_SHIFT: u32 = 32;
const EVT1_RNW: u64 = 1 << 35;
const EVT1_S2: u64 = 1 << 39;
const EVT1_CLASS_SHIFT: u32 = 40;
const EVT3_IPA_MASK: u64 = ((1 << 52) - 1) & !0xFFF;

impl Event {
    /// The record decoded (§7.3).
    pub fn decode(raw: &RawEvent) -> Event {
        let [d0, d1, d2, d3] = raw.0;
        let kind = EventKind::from_code((d0 & EVT0_TYPE_MASK) as u8);
        let addressed = kind.has_address();
        Event {
            kind,
            sid: (d0 >> EVT0_SID_SHIFT) as u32,
            ssid: (d0 & EVT0_SSV != 0).then_some(((d0 >> EVT0_SSID_SHIFT) & EVT0_SSID_MASK) as u32),
            read: addressed && d1 & EVT1_RNW != 0,
            stage: if addressed && d1 & EVT1_S2 != 0 {
                Stage::Stage2
            } else {
                Stage::Stage1
            },
            class: match (d1 >> EVT1_CLASS_SHIFT) & 0b11 {
                0 => FaultClass::ContextDescriptor,
                1 => FaultClass::TableWalk,
                2 => FaultClass::Input,
                _ => FaultClass::Reserved,
            },
            input_addr: if addressed { d2 } else { 0 },
            ipa: if addressed { d3 & EVT3_IPA_MASK } else { 0 },
            raw: *raw,
        }
    }
}

/// One fault as the driver reports it: the first event of a run of identical
/// ones and how many events the run had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The first event of the run.
    pub event: Event,
    /// How many events it stands for.
    pub count: u32,
}

/// Events closer than this, on the same page of the same stream with the same
/// type, stage and direction, belong to one transfer (QEMU emits one event per
/// 4-byte chunk of a faulting DMA, docs/QEMU.md §3).
const SAME_TRANSFER_PAGE: u64 = 4096;

fn same_transfer(first: &Event, last: &Event, next: &Event) -> bool {
    first.kind == next.kind
        && first.sid == next.sid
        && first.ssid == next.ssid
        && first.read == next.read
        && first.stage == next.stage
        && first.class == next.class
        && first.input_addr / SAME_TRANSFER_PAGE == next.input_addr / SAME_TRANSFER_PAGE
        && next.input_addr >= last.input_addr
}

/// Faults kept for a domain's owner until taken, at most `capacity`: a fault
/// storm must not grow kernel memory without bound. What does not fit, and
/// what the SMMU itself discarded, is summed up in one [`EventKind::Lost`]
/// record at the end of the next [`FaultQueue::take`].
#[derive(Debug)]
pub struct FaultQueue {
    faults: Vec<Fault>,
    capacity: usize,
    overflows: u32,
    dropped: u32,
    dropped_events: u32,
    /// StreamID the `Lost` record names (the domain's first stream seen).
    sid: u32,
}

/// Faults a domain keeps by default between two takes.
pub const DEFAULT_FAULT_CAPACITY: usize = 64;

impl FaultQueue {
    /// An empty queue that holds `capacity` faults.
    pub fn new(capacity: usize) -> Self {
        Self {
            faults: Vec::new(),
            capacity,
            overflows: 0,
            dropped: 0,
            dropped_events: 0,
            sid: 0,
        }
    }

    /// Keeps `fault` if there is room, else counts it as dropped.
    pub fn push(&mut self, fault: Fault) {
        if self.faults.is_empty() && self.dropped == 0 {
            self.sid = fault.event.sid;
        }
        if self.faults.len() < self.capacity {
            self.faults.push(fault);
        } else {
            self.dropped = self.dropped.saturating_add(1);
            self.dropped_events = self.dropped_events.saturating_add(fault.count);
        }
    }

    /// The SMMU's event queue overflowed `times` while `sid` was attached.
    pub fn note_overflows(&mut self, times: u32, sid: u32) {
        if times > 0 && self.overflows == 0 && self.dropped == 0 && self.faults.is_empty() {
            self.sid = sid;
        }
        self.overflows = self.overflows.saturating_add(times);
    }

    /// Changes the capacity; faults kept beyond it are counted as dropped.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        while self.faults.len() > capacity {
            if let Some(fault) = self.faults.pop() {
                self.dropped = self.dropped.saturating_add(1);
                self.dropped_events = self.dropped_events.saturating_add(fault.count);
            }
        }
    }

    /// Faults kept (the `Lost` record not included).
    pub fn len(&self) -> usize {
        self.faults.len()
    }

    /// No fault is queued.
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty() && self.overflows == 0 && self.dropped == 0
    }

    /// The kept faults, oldest first, then a `Lost` record if anything was
    /// missed since the last take; the queue starts over empty.
    pub fn take(&mut self) -> Vec<Fault> {
        let mut out = core::mem::take(&mut self.faults);
        if self.overflows > 0 || self.dropped > 0 {
            out.push(Fault {
                event: Event {
                    kind: EventKind::Lost {
                        overflows: self.overflows,
                        dropped: self.dropped,
                    },
                    sid: self.sid,
                    ssid: None,
                    read: false,
                    stage: Stage::Stage1,
                    class: FaultClass::Input,
                    input_addr: 0,
                    ipa: 0,
                    raw: RawEvent::default(),
                },
                count: self.dropped_events,
            });
        }
        self.overflows = 0;
        self.dropped = 0;
        self.dropped_events = 0;
        out
    }
}

/// Merges consecutive events of one transfer into one [`Fault`] with a count.
#[derive(Debug, Default)]
pub struct Coalescer {
    open: Option<(Fault, Event)>,
}

impl Coalescer {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one event; a fault the event closes is pushed to `out`.
    pub fn push(&mut self, event: Event, out: &mut Vec<Fault>) {
        match &mut self.open {
            Some((fault, last)) if same_transfer(&fault.event, last, &event) => {
                fault.count = fault.count.saturating_add(1);
                *last = event;
            }
            open => {
                if let Some((fault, _)) = open.take() {
                    out.push(fault);
                }
                *open = Some((Fault { event, count: 1 }, event));
            }
        }
    }

    /// Closes the open fault (at the end of a drain).
    pub fn finish(&mut self, out: &mut Vec<Fault>) {
        if let Some((fault, _)) = self.open.take() {
            out.push(fault);
        }
    }
}

/// `FaultReason::Other` code of the driver's [`EventKind::Lost`] record:
/// outside the 8-bit SMMU event types.
pub const LOST_RECORD_CODE: u32 = 0x100;

/// The contract's view of one coalesced fault.
pub fn fault_record(unit: UnitId, fault: &Fault) -> FaultRecord {
    let event = &fault.event;
    FaultRecord {
        unit,
        vendor_code: event_code(event.kind),
        requester: DeviceId(event.sid),
        iova: event.input_addr,
        access: if event.read {
            Access::Read
        } else {
            Access::Write
        },
        reason: match event.kind {
            EventKind::Translation => FaultReason::NotPresent,
            EventKind::Permission | EventKind::AccessFlag => FaultReason::Permission,
            EventKind::AddressSize => FaultReason::AddressSize,
            EventKind::BadSte | EventKind::BadStreamId | EventKind::StreamDisabled => {
                FaultReason::Blocked
            }
            EventKind::Other(code) => FaultReason::Other(u32::from(code)),
            EventKind::Lost { .. } => FaultReason::Other(LOST_RECORD_CODE),
            other => FaultReason::Other(event_code(other)),
        },
        // What a guest's own SMMUv3 would have reported: every event not of
        // stage 2 (Linux `arm_smmu_handle_event` hands those of a vmaster to
        // `arm_vmaster_report_event`); the driver's own Lost record is not
        // the hardware's.
        guest_event: match (event.kind, event.stage) {
            (EventKind::Lost { .. }, _) | (_, Stage::Stage2) => None,
            _ => Some(GuestEvent::ArmSmmuV3 { evt: event.raw.0 }),
        },
    }
}

fn event_code(kind: EventKind) -> u32 {
    match kind {
        EventKind::UnsupportedTransaction => 0x01,
        EventKind::BadStreamId => 0x02,
        EventKind::SteFetch => 0x03,
        EventKind::BadSte => 0x04,
        EventKind::StreamDisabled => 0x06,
        EventKind::BadSubstreamId => 0x08,
        EventKind::CdFetch => 0x09,
        EventKind::BadCd => 0x0A,
        EventKind::WalkExternalAbort => 0x0B,
        EventKind::Translation => 0x10,
        EventKind::AddressSize => 0x11,
        EventKind::AccessFlag => 0x12,
        EventKind::Permission => 0x13,
        EventKind::TlbConflict => 0x20,
        EventKind::ConfigConflict => 0x21,
        EventKind::Other(code) => u32::from(code),
        EventKind::Lost { .. } => LOST_RECORD_CODE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    /// The record docs/QEMU.md §3 measured: F_TRANSLATION, SID 8, read, class IN.
    const QEMU_TRANSLATION: RawEvent =
        RawEvent([0x0000_0008_0000_0010, 0x0000_0208_0000_0000, 0x1234_0000, 0]);

    #[test]
    fn decodes_qemu_translation_fault() {
        let event = Event::decode(&QEMU_TRANSLATION);
        assert_eq!(event.kind, EventKind::Translation);
        assert_eq!(event.sid, 8);
        assert_eq!(event.ssid, None);
        assert!(event.read);
        assert_eq!(event.stage, Stage::Stage1);
        assert_eq!(event.class, FaultClass::Input);
        assert_eq!(event.input_addr, 0x1234_0000);
    }

    #[test]
    fn decodes_stage2_and_bad_ste() {
        let s2 = Event::decode(&RawEvent([
            0x0000_0010_0000_0013,
            (1 << 39) | (1 << 40),
            0x8000,
            0x4_0000_8000,
        ]));
        assert_eq!(s2.kind, EventKind::Permission);
        assert_eq!(s2.stage, Stage::Stage2);
        assert_eq!(s2.class, FaultClass::TableWalk);
        assert!(!s2.read);
        assert_eq!(s2.ipa, 0x4_0000_8000);
        let bad = Event::decode(&RawEvent([0x0000_0010_0000_0004, 0, 0, 0]));
        assert_eq!(bad.kind, EventKind::BadSte);
        assert_eq!(bad.sid, 0x10);
        assert_eq!(bad.input_addr, 0);
    }

    fn translation(sid: u32, addr: u64) -> Event {
        let mut raw = QEMU_TRANSLATION;
        raw.0[0] = (u64::from(sid) << 32) | 0x10;
        raw.0[2] = addr;
        Event::decode(&raw)
    }

    #[test]
    fn sixteen_chunk_events_become_one_fault() {
        let mut coalescer = Coalescer::new();
        let mut out = Vec::new();
        for chunk in 0..16 {
            coalescer.push(translation(8, 0x5000 + 4 * chunk), &mut out);
        }
        assert!(out.is_empty());
        coalescer.finish(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].count, 16);
        assert_eq!(out[0].event.input_addr, 0x5000);
    }

    #[test]
    fn different_streams_or_pages_stay_apart() {
        let mut coalescer = Coalescer::new();
        let mut out = Vec::new();
        for event in [
            translation(8, 0x5000),
            translation(8, 0x5004),
            translation(16, 0x5008),
            translation(16, 0x6000),
            translation(16, 0x5000),
        ] {
            coalescer.push(event, &mut out);
        }
        coalescer.finish(&mut out);
        let counts: Vec<_> = out.iter().map(|f| (f.event.sid, f.count)).collect();
        assert_eq!(counts, vec![(8, 2), (16, 1), (16, 1), (16, 1)]);
    }

    fn lost_of(faults: &[Fault]) -> Option<(u32, u32, u32)> {
        faults.iter().find_map(|f| match f.event.kind {
            EventKind::Lost { overflows, dropped } => Some((overflows, dropped, f.count)),
            _ => None,
        })
    }

    #[test]
    fn a_full_queue_drops_the_newest_and_says_so_once() {
        let mut queue = FaultQueue::new(2);
        for page in 0..5 {
            queue.push(Fault {
                event: translation(8, page * 4096),
                count: 16,
            });
        }
        queue.note_overflows(3, 8);
        let taken = queue.take();
        assert_eq!(taken.len(), 3);
        assert_eq!(taken[0].event.input_addr, 0);
        assert_eq!(taken[1].event.input_addr, 4096);
        assert_eq!(lost_of(&taken), Some((3, 3, 48)));
        assert_eq!(taken[2].event.sid, 8);
        // Taken: nothing left, no second Lost record.
        assert!(queue.is_empty());
        assert!(queue.take().is_empty());
    }

    #[test]
    fn an_overflow_alone_is_reported_to_the_owner() {
        let mut queue = FaultQueue::new(DEFAULT_FAULT_CAPACITY);
        queue.note_overflows(1, 0x10);
        let taken = queue.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(lost_of(&taken), Some((1, 0, 0)));
        assert_eq!(taken[0].event.sid, 0x10);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a model: the owner sees min(capacity, pushed) faults per
        /// take, in order, and the Lost record accounts for every other one.
        #[test]
        fn nothing_vanishes_unaccounted(
            capacity in 0usize..6,
            steps in proptest::collection::vec((0u8..3, 1u32..100), 0..40),
        ) {
            let mut queue = FaultQueue::new(capacity);
            let mut pushed: Vec<u32> = Vec::new();
            let mut overflows = 0u32;
            for (i, &(op, count)) in steps.iter().enumerate() {
                match op {
                    0 => {
                        queue.push(Fault { event: translation(8, i as u64 * 4096), count });
                        pushed.push(count);
                    }
                    1 => {
                        queue.note_overflows(1, 8);
                        overflows += 1;
                    }
                    _ => {
                        let taken = queue.take();
                        let kept = pushed.len().min(capacity);
                        let real: Vec<u32> = taken
                            .iter()
                            .filter(|f| !matches!(f.event.kind, EventKind::Lost { .. }))
                            .map(|f| f.count)
                            .collect();
                        prop_assert_eq!(&real[..], &pushed[..kept]);
                        let dropped = (pushed.len() - kept) as u32;
                        let dropped_events: u32 = pushed[kept..].iter().sum();
                        let expect = (overflows > 0 || dropped > 0)
                            .then_some((overflows, dropped, dropped_events));
                        prop_assert_eq!(lost_of(&taken), expect);
                        pushed.clear();
                        overflows = 0;
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// No event is lost: the counts add up to the events fed, and each
        /// fault starts a run the reference model also starts.
        #[test]
        fn counts_add_up(events in proptest::collection::vec((0u32..3, 0u64..3, 0u64..4), 0..60)) {
            let events: Vec<Event> = events
                .iter()
                .map(|&(sid, page, chunk)| translation(sid, page * 4096 + chunk * 4))
                .collect();
            let mut coalescer = Coalescer::new();
            let mut out = Vec::new();
            for event in &events {
                coalescer.push(*event, &mut out);
            }
            coalescer.finish(&mut out);
            let total: u32 = out.iter().map(|f| f.count).sum();
            prop_assert_eq!(total as usize, events.len());
            // Reference: a new fault starts when the key changes or the address goes back.
            let mut starts = 0;
            for (i, e) in events.iter().enumerate() {
                let continues = i > 0 && {
                    let p = &events[i - 1];
                    p.sid == e.sid && p.input_addr / 4096 == e.input_addr / 4096 && e.input_addr >= p.input_addr
                };
                if !continues {
                    starts += 1;
                }
            }
            prop_assert_eq!(out.len(), starts);
        }
    }
}
