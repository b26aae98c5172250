//! A command ring that several CPUs submit to at once, each waiting only
//! for its own commands.
//!
//! The hardware sees one producer index (VT-d IQT, SMMUv3 CMDQ_PROD, AMD-Vi
//! COMMAND_TAIL) and one consumer index (IQH, CMDQ_CONS, COMMAND_HEAD). The
//! CPUs share the software side through three counters of *positions*:
//! entries since the ring was started, never wrapping (2^64 entries is
//! centuries of commands); an entry at position `p` lives in slot
//! `p % slots`, and the hardware's index is `p` modulo what its register
//! counts to (the slot count, or twice it with SMMUv3's wrap bit).
//!
//! 1. **Claim** ([`SharedRing::try_claim`]): a compare-exchange on `claimed`
//!    reserves consecutive positions, if the ring has room for them beyond
//!    the last consumer index anyone observed (Linux
//!    `arm_smmu_cmdq_issue_cmdlist` reserves its space the same way, on
//!    `llq.prod`).
//! 2. **Write** the entries into the claimed slots: nobody else writes them.
//! 3. **Publish** ([`SharedRing::publish`]): in claim order. A CPU waits
//!    until every earlier claim is published, rings the doorbell up to the
//!    end of its own claim, then releases `published` to the next one. The
//!    wait is as short as a predecessor's writing of its entries, never a
//!    hardware wait; so no claim may be held across anything else, and no
//!    claim may be taken in an interrupt handler that could have interrupted
//!    a claimer on its own CPU.
//! 4. **Complete**: each caller ends its claim with its own completion
//!    command and waits for that alone: a status word of its own slot
//!    (VT-d wait descriptor, AMD-Vi COMPLETION_WAIT store), or the consumer
//!    index passing its CMD_SYNC (SMMUv3 §4.7.3: a CMD_SYNC is consumed only
//!    once complete). [`SharedRing::observe_consumed`] turns the hardware's
//!    wrapping consumer index into a position, race-free.
//!
//! The `loom` model at the end checks the protocol with two producers and
//! the hardware as a third thread, and the sharing of one completion
//! command by several callers ([`SharedRing::note_sync`]), under every
//! interleaving
//! (`cargo xtask test` runs it with `--cfg loom`); `tests` below run it with
//! real threads.

use core::ops::Range;

#[cfg(not(loom))]
use core::sync::atomic::{AtomicU64, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};

/// The software side of a hardware command ring shared by several CPUs.
#[derive(Debug)]
pub struct SharedRing {
    slots: u64,
    /// Entries that may be outstanding at once: the slots, less the one a
    /// ring without a wrap bit keeps empty.
    usable: u64,
    /// What the hardware's producer and consumer indexes count to.
    modulus: u64,
    /// Positions handed out.
    claimed: AtomicU64,
    /// Positions the hardware has been told of (the doorbell's last value).
    published: AtomicU64,
    /// The hardware's consumer position, as last observed by anyone.
    consumed: AtomicU64,
    /// One past the position of the latest completion command (CMD_SYNC,
    /// wait descriptor, COMPLETION_WAIT) claimed; 0 before the first.
    latest_sync: AtomicU64,
}

/// Consecutive positions claimed by one caller. They must be written and
/// then handed to [`SharedRing::publish`]: every later claim waits for it.
#[must_use = "a claim must be published, or every later submission waits forever"]
#[derive(Debug, PartialEq, Eq)]
pub struct Claim {
    first: u64,
    end: u64,
}

impl Claim {
    /// The positions claimed.
    pub fn positions(&self) -> Range<u64> {
        self.first..self.end
    }

    /// The last position claimed (where a caller puts its completion command).
    pub fn last(&self) -> u64 {
        self.end - 1
    }
}

/// No room for the claim: the caller observes the consumer again
/// ([`SharedRing::observe_consumed`]) and retries, bounded by its timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

impl SharedRing {
    /// A ring of `slots` slots (a power of two) of which `usable` may be
    /// outstanding, whose hardware indexes count modulo `modulus` (`slots`,
    /// or `2 * slots` with a wrap bit).
    pub fn new(slots: u32, usable: u32, modulus: u64) -> Self {
        debug_assert!(slots.is_power_of_two() && usable <= slots);
        debug_assert!(modulus >= u64::from(slots) && modulus.is_multiple_of(u64::from(slots)));
        Self {
            slots: u64::from(slots),
            usable: u64::from(usable),
            modulus,
            claimed: AtomicU64::new(0),
            published: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            latest_sync: AtomicU64::new(0),
        }
    }

    /// A ring that keeps one slot empty (VT-d, AMD-Vi), indexes modulo the slots.
    pub fn one_slot_free(slots: u32) -> Self {
        Self::new(slots, slots - 1, u64::from(slots))
    }

    /// A ring with a wrap bit above the index (SMMUv3 §3.5.1): every slot usable.
    pub fn wrap_bit(slots: u32) -> Self {
        Self::new(slots, slots, 2 * u64::from(slots))
    }

    /// The slot that holds position `position`.
    pub fn slot(&self, position: u64) -> usize {
        (position % self.slots) as usize
    }

    /// The hardware index value for position `position` (producer or consumer).
    pub fn index(&self, position: u64) -> u64 {
        position % self.modulus
    }

    /// How many entries may be outstanding at once.
    pub fn usable(&self) -> u64 {
        self.usable
    }

    /// Claims `count` consecutive positions, if the ring has room for them
    /// beyond the consumer as last observed.
    pub fn try_claim(&self, count: u64) -> Result<Claim, Full> {
        debug_assert!(
            count > 0 && count <= self.usable,
            "a claim the ring can never hold"
        );
        let mut first = self.claimed.load(Ordering::Relaxed);
        loop {
            // The consumer as anyone saw it last: never ahead of the truth, so
            // the room is never overestimated.
            let consumed = self.consumed.load(Ordering::Acquire);
            if first + count - consumed > self.usable {
                return Err(Full);
            }
            match self.claimed.compare_exchange_weak(
                first,
                first + count,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ok(Claim {
                        first,
                        end: first + count,
                    });
                }
                Err(now) => first = now,
            }
        }
    }

    /// Hands the written entries of `claim` to the hardware: waits (calling
    /// `relax`) until every earlier claim is published, then calls `doorbell`
    /// with the position its producer index must now name (it orders the
    /// entries for the device, `dma_wmb`, then writes the register), then
    /// lets the next claim go.
    pub fn publish(&self, claim: Claim, doorbell: impl FnOnce(u64), mut relax: impl FnMut()) {
        // Acquire: the predecessor's doorbell is rung before ours.
        while self.published.load(Ordering::Acquire) != claim.first {
            relax();
        }
        doorbell(claim.end);
        self.published.store(claim.end, Ordering::Release);
    }

    /// Reads the hardware's consumer index (through `read_index`, which
    /// returns the register's index value) and returns the consumer position
    /// it means, updating the shared one. The register is read after the
    /// shared position is loaded, so it cannot be older; a compare-exchange
    /// makes sure no other observer moved the position in between (else it
    /// reads again). The advance is below the modulus because no more than
    /// the usable slots are ever claimed beyond a consumer position. A value
    /// beyond every claim (hardware that consumed entries it was never given)
    /// is `Err` with that index. (Not beyond `published`: a doorbell is rung
    /// before `published` moves, and the hardware may consume at once.)
    pub fn observe_consumed(&self, mut read_index: impl FnMut() -> u64) -> Result<u64, u64> {
        loop {
            let known = self.consumed.load(Ordering::Acquire);
            let index = read_index() % self.modulus;
            let advance = (index + self.modulus - known % self.modulus) % self.modulus;
            let now = known + advance;
            // Loaded after the index: any claim whose doorbell the hardware
            // acted on happened before that read, so it is seen here.
            if now > self.claimed.load(Ordering::Acquire) {
                return Err(index);
            }
            if advance == 0 {
                return Ok(known);
            }
            if self
                .consumed
                .compare_exchange(known, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(now);
            }
        }
    }

    /// Whether no other submitter is between its claim and its publish:
    /// then a caller queues its commands and its completion command in one
    /// claim (one doorbell). A hint only: the answer may be stale at once.
    pub fn is_quiet(&self) -> bool {
        self.claimed.load(Ordering::Acquire) == self.published.load(Ordering::Acquire)
    }

    /// Records that position `position` holds a completion command (which
    /// the hardware completes only once every command before it has).
    pub fn note_sync(&self, position: u64) {
        self.latest_sync.fetch_max(position + 1, Ordering::AcqRel);
    }

    /// A completion command claimed at or after `end`, if one is: commands
    /// published before `end` complete no later than it, so a caller whose
    /// commands end at `end` may wait for it instead of queueing its own
    /// (several CPUs' commands, one sync).
    pub fn sync_at_or_after(&self, end: u64) -> Option<u64> {
        let latest = self.latest_sync.load(Ordering::Acquire);
        (latest > end).then(|| latest - 1)
    }

    /// The consumer position as last observed.
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Acquire)
    }

    /// The last position published.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Starts again from position 0, as the hardware does when its queue is
    /// re-enabled with both indexes zeroed (`&mut`: nobody may be mid-claim).
    pub fn restart(&mut self) {
        *self = Self::new(self.slots as u32, self.usable as u32, self.modulus);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    //! Real threads against a consumer thread playing the hardware.
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::vec::Vec;

    #[test]
    fn claims_are_consecutive_and_stop_at_the_usable_slots() {
        let ring = SharedRing::one_slot_free(4);
        let a = ring.try_claim(2).unwrap();
        assert_eq!(a.positions(), 0..2);
        assert_eq!(ring.try_claim(2), Err(Full));
        let b = ring.try_claim(1).unwrap();
        assert_eq!((b.positions(), b.last()), (2..3, 2));
        ring.publish(a, |end| assert_eq!(end, 2), || unreachable!());
        ring.publish(b, |end| assert_eq!(end, 3), || unreachable!());
        // The hardware consumed two: room for two more, at slots 3 and 0.
        assert_eq!(ring.observe_consumed(|| 2), Ok(2));
        let c = ring.try_claim(2).unwrap();
        assert_eq!(
            c.positions().map(|p| ring.slot(p)).collect::<Vec<_>>(),
            [3, 0]
        );
        ring.publish(c, |_| {}, || {});
    }

    #[test]
    fn a_sync_claimed_after_a_callers_commands_serves_it() {
        let ring = SharedRing::one_slot_free(8);
        assert!(ring.is_quiet());
        let a = ring.try_claim(2).unwrap();
        assert!(!ring.is_quiet(), "a claim in flight");
        ring.publish(a, |_| {}, || {});
        assert!(ring.is_quiet());
        // A sync at 1 serves commands ending at 1, not those ending at 2.
        ring.note_sync(1);
        assert_eq!(ring.sync_at_or_after(1), Some(1));
        assert_eq!(ring.sync_at_or_after(2), None);
        // The latest one counts; an older note never moves it back.
        ring.note_sync(5);
        ring.note_sync(3);
        assert_eq!(ring.sync_at_or_after(2), Some(5));
        assert_eq!(ring.sync_at_or_after(6), None);
    }

    #[test]
    fn the_consumer_index_becomes_a_position_across_wraps() {
        let ring = SharedRing::wrap_bit(4);
        for round in 0..5u64 {
            let claim = ring.try_claim(3).unwrap();
            ring.publish(claim, |_| {}, || {});
            let end = 3 * (round + 1);
            assert_eq!(ring.index(end), end % 8);
            assert_eq!(ring.observe_consumed(|| end % 8), Ok(end));
        }
        // An index naming more than was published is the hardware's error.
        assert_eq!(ring.observe_consumed(|| 1), Err(1));
    }

    #[test]
    fn four_threads_submit_and_each_sees_its_own_entries_completed() {
        const SLOTS: usize = 8;
        const PER_THREAD: u64 = 2000;
        let ring = SharedRing::one_slot_free(SLOTS as u32);
        let entries: [AtomicU64; SLOTS] = core::array::from_fn(|_| AtomicU64::new(0));
        let doorbell = AtomicU64::new(0);
        let hw_consumer = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // The hardware: consumes what the doorbell names, in order, and
            // checks each entry is the one written for its position.
            s.spawn(|| {
                let mut consumed = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let prod = doorbell.load(Ordering::Acquire);
                    while consumed < prod {
                        let entry = entries[consumed as usize % SLOTS].load(Ordering::Relaxed);
                        assert_eq!(entry, consumed + 1, "a stale or torn entry was consumed");
                        consumed += 1;
                        hw_consumer.store(consumed % SLOTS as u64, Ordering::Release);
                    }
                    std::thread::yield_now();
                }
            });
            let producers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        for round in 0..PER_THREAD {
                            let count = round % 3 + 1;
                            let claim = loop {
                                match ring.try_claim(count) {
                                    Ok(claim) => break claim,
                                    Err(Full) => {
                                        ring.observe_consumed(|| {
                                            hw_consumer.load(Ordering::Acquire)
                                        })
                                        .unwrap();
                                        std::thread::yield_now();
                                    }
                                }
                            };
                            for position in claim.positions() {
                                entries[ring.slot(position)].store(position + 1, Ordering::Relaxed);
                            }
                            let last = claim.last();
                            ring.publish(
                                claim,
                                |end| doorbell.store(end, Ordering::Release),
                                std::thread::yield_now,
                            );
                            // Wait for this caller's own last entry only.
                            while ring
                                .observe_consumed(|| hw_consumer.load(Ordering::Acquire))
                                .unwrap()
                                <= last
                            {
                                std::thread::yield_now();
                            }
                        }
                    })
                })
                .collect();
            for producer in producers {
                producer.join().unwrap();
            }
            stop.store(true, Ordering::Release);
        });
        let total: u64 = (0..PER_THREAD).map(|r| r % 3 + 1).sum::<u64>() * 4;
        assert_eq!(ring.published(), total);
        assert_eq!(ring.consumed(), total);
    }
}

#[cfg(all(test, loom))]
mod loom_model {
    //! The protocol's two halves under every interleaving, each model
    //! bounded (no spin loop waits on another thread, so that loom's search
    //! stays finite): producers racing to claim and publish while the
    //! hardware reads the doorbell, and observers racing to turn the
    //! hardware's consumer index into a position while it advances.
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    const SLOTS: usize = 4;

    /// Two producers claim and publish one entry each while the hardware
    /// reads the doorbell twice: whatever it is told is there whole (no
    /// stale slot), and the doorbell never goes back.
    #[test]
    fn published_entries_reach_the_hardware_whole_and_in_order() {
        loom::model(|| {
            let ring = Arc::new(SharedRing::one_slot_free(SLOTS as u32));
            let entries: Arc<[AtomicU64; SLOTS]> =
                Arc::new(core::array::from_fn(|_| AtomicU64::new(0)));
            let doorbell = Arc::new(AtomicU64::new(0));
            let producers: [_; 2] = core::array::from_fn(|_| {
                let (ring, entries, doorbell) = (ring.clone(), entries.clone(), doorbell.clone());
                thread::spawn(move || {
                    let claim = ring.try_claim(1).unwrap();
                    for position in claim.positions() {
                        entries[ring.slot(position)].store(position + 1, Ordering::Relaxed);
                    }
                    ring.publish(
                        claim,
                        |end| doorbell.store(end, Ordering::Release),
                        thread::yield_now,
                    );
                })
            });
            let mut told = 0;
            for _ in 0..2 {
                let prod = doorbell.load(Ordering::Acquire);
                assert!(prod >= told, "the doorbell went back");
                for position in 0..prod {
                    let entry = entries[position as usize % SLOTS].load(Ordering::Relaxed);
                    assert_eq!(entry, position + 1, "a stale entry reached the hardware");
                }
                told = prod;
            }
            for producer in producers {
                producer.join().unwrap();
            }
            assert_eq!(doorbell.load(Ordering::Relaxed), 2);
            assert_eq!(ring.published(), 2);
        });
    }

    /// Three entries are published; the hardware consumes them one by one
    /// while two CPUs observe its consumer index. No observation is ahead of
    /// what the hardware really consumed, and each CPU's observations only
    /// go forward: a stale register read can never turn into a position a
    /// whole lap ahead.
    #[test]
    fn observed_consumer_positions_are_never_ahead_and_never_go_back() {
        let mut builder = loom::model::Builder::new();
        // Enough to let either observer be overtaken between its load of
        // the shared position and its register read, and again before its
        // compare-exchange; the full search takes minutes.
        builder.preemption_bound = Some(2);
        builder.check(|| {
            let ring = Arc::new(SharedRing::wrap_bit(2));
            let claim = ring.try_claim(2).unwrap();
            ring.publish(claim, |_| {}, || {});
            // The hardware's consumer register (index and wrap bit) and how
            // many entries it has really consumed.
            let register = Arc::new(AtomicU64::new(0));
            let truth = Arc::new(AtomicU64::new(0));
            let observers: [_; 2] = core::array::from_fn(|_| {
                let (ring, register, truth) = (ring.clone(), register.clone(), truth.clone());
                thread::spawn(move || {
                    let mut last = 0;
                    for _ in 0..2 {
                        let seen = ring
                            .observe_consumed(|| register.load(Ordering::Acquire))
                            .unwrap();
                        assert!(
                            seen <= truth.load(Ordering::Acquire),
                            "ahead of the hardware"
                        );
                        assert!(seen >= last, "went back");
                        last = seen;
                    }
                })
            });
            for consumed in 1..=2u64 {
                truth.store(consumed, Ordering::Release);
                register.store(ring.index(consumed), Ordering::Release);
            }
            for observer in observers {
                observer.join().unwrap();
            }
            assert!(ring.consumed() <= 2);
            assert_eq!(
                ring.observe_consumed(|| register.load(Ordering::Acquire)),
                Ok(2)
            );
        });
    }

    /// A full ring refuses a claim until the consumer is observed past an
    /// entry: the slot the new claim reuses has been read by the hardware.
    #[test]
    fn a_claim_never_reuses_a_slot_the_hardware_has_not_read() {
        loom::model(|| {
            let ring = Arc::new(SharedRing::one_slot_free(2));
            let first = ring.try_claim(1).unwrap();
            ring.publish(first, |_| {}, || {});
            let register = Arc::new(AtomicU64::new(0));
            let read = Arc::new(AtomicU64::new(0));
            let hardware = {
                let (read, register, ring) = (read.clone(), register.clone(), ring.clone());
                thread::spawn(move || {
                    read.store(1, Ordering::Release);
                    register.store(ring.index(1), Ordering::Release);
                })
            };
            let claimed = match ring.try_claim(1) {
                Ok(claim) => Some(claim),
                Err(Full) => {
                    ring.observe_consumed(|| register.load(Ordering::Acquire))
                        .unwrap();
                    ring.try_claim(1).ok()
                }
            };
            if let Some(claim) = claimed {
                assert_eq!(
                    read.load(Ordering::Acquire),
                    1,
                    "slot reused before it was read"
                );
                ring.publish(claim, |_| {}, || {});
            }
            hardware.join().unwrap();
        });
    }

    const COMMAND: u64 = 1;
    const SYNC: u64 = 2;

    /// Claims, writes and publishes `kinds` (a driver's `queue`): their positions.
    fn queue(ring: &SharedRing, entries: &[AtomicU64], kinds: &[u64]) -> Range<u64> {
        let claim = ring.try_claim(kinds.len() as u64).unwrap();
        let positions = claim.positions();
        for (position, &kind) in positions.clone().zip(kinds) {
            entries[ring.slot(position)].store(kind, Ordering::Relaxed);
        }
        ring.publish(claim, |_| {}, thread::yield_now);
        positions
    }

    /// Two callers each submit a command and pick the completion command
    /// they will wait for, as the drivers' `execute` does: alone on the
    /// ring, one claim with a sync of their own; beside another, a sync
    /// someone claimed at or after their command, else one of their own.
    /// Whatever the interleaving, the sync a caller picks is a published
    /// sync behind its command (so the hardware completes it only after
    /// that command, SMMUv3 §4.7.3, VT-d §6.5.2.8, AMD IOMMU §2.4.1), and
    /// the latest sync recorded never goes back.
    #[test]
    fn a_shared_sync_always_comes_after_the_commands_that_wait_for_it() {
        loom::model(|| {
            let ring = Arc::new(SharedRing::one_slot_free(SLOTS as u32 * 2));
            let entries: Arc<[AtomicU64; 2 * SLOTS]> =
                Arc::new(core::array::from_fn(|_| AtomicU64::new(0)));
            let callers: [_; 2] = core::array::from_fn(|_| {
                let (ring, entries) = (ring.clone(), entries.clone());
                thread::spawn(move || {
                    if ring.is_quiet() {
                        let taken = queue(&ring, &entries[..], &[COMMAND, SYNC]);
                        ring.note_sync(taken.end - 1);
                        return (taken.start, taken.end - 1);
                    }
                    let taken = queue(&ring, &entries[..], &[COMMAND]);
                    if let Some(sync) = ring.sync_at_or_after(taken.end) {
                        return (taken.start, sync);
                    }
                    let own = queue(&ring, &entries[..], &[SYNC]);
                    ring.note_sync(own.start);
                    (taken.start, own.start)
                })
            });
            let mut latest = 0;
            for caller in callers {
                let (command, sync) = caller.join().unwrap();
                assert!(sync > command, "a sync before the command it serves");
                let kind = entries[ring.slot(sync)].load(Ordering::Relaxed);
                assert_eq!(kind, SYNC, "waiting for something that is no sync");
                assert!(ring.published() > sync, "waiting for an unpublished sync");
                latest = latest.max(sync + 1);
            }
            assert_eq!(
                ring.sync_at_or_after(0),
                Some(latest - 1),
                "latest sync went back"
            );
        });
    }
}
