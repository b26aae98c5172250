//! Lending work that lives on one CPU's stack to other CPUs.
//!
//! The scheduler's run of tasks is a value on the stack of the CPU that
//! started it; the other CPUs help by reaching it through a shared
//! [`Offer`]. The danger is the end: the owner must not return (and free the
//! run) while a helper still looks at it, and a helper that arrives late
//! must not look at a run that is gone. [`Offer::lend`] makes that safe with
//! one atomic word holding whether an offer stands, the seats left and the
//! helpers inside:
//!
//! * a helper **joins** with one compare-exchange that needs the offer
//!   standing and a seat free, and counts itself in;
//! * the owner **withdraws** with one read-modify-write that clears the
//!   standing bit, then waits until the helpers inside have counted
//!   themselves out.
//!
//! Every join and the withdrawal are read-modify-writes of the same word, so
//! they have one order (C++ [intro.races] modification order) with no
//! sequentially consistent operations needed: a join ordered after the
//! withdrawal sees no offer, a join ordered before it is counted and waited
//! for. (A first version kept "standing" and "inside" in two words and
//! relied on `SeqCst` for both sides, the store-buffering argument; `loom`
//! models `SeqCst` as acquire-release and could not check it, which is a
//! reason to need less.)
//!
//! Sleeping helpers learn of a new offer through [`Offer::generation`],
//! bumped by each `lend`; waking them (an IPI) is the caller's part.
#![no_std]

#[cfg(not(loom))]
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// The state word: bit 63 "an offer stands", bits 32..48 the seats left,
/// bits 0..16 the helpers inside.
const STANDING: u64 = 1 << 63;
const SEAT: u64 = 1 << 32;
const SEATS_MASK: u64 = 0xFFFF << 32;
const INSIDE_MASK: u64 = 0xFFFF;
/// Most helpers one offer seats (the field's width).
pub const MAX_SEATS: u32 = 0xFFFF;

/// Where a CPU offers work of type `T` to the others (a `static`).
pub struct Offer<T> {
    state: AtomicU64,
    work: AtomicPtr<T>,
    generation: AtomicU64,
}

// SAFETY: the offer hands out `&T` to other threads only between `lend`'s
// start and the moment its helpers have left, which `lend` waits for; `T:
// Sync` makes the shared reference safe to use from them.
unsafe impl<T: Sync> Sync for Offer<T> {}

impl<T> Offer<T> {
    /// No offer standing.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Offer {
            state: AtomicU64::new(0),
            work: AtomicPtr::new(core::ptr::null_mut()),
            generation: AtomicU64::new(0),
        }
    }

    /// No offer standing.
    #[cfg(loom)]
    pub fn new() -> Self {
        Offer {
            state: AtomicU64::new(0),
            work: AtomicPtr::new(core::ptr::null_mut()),
            generation: AtomicU64::new(0),
        }
    }

    /// How many offers were made: a sleeping helper compares it with the
    /// value it last saw.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Seats of the standing offer not taken yet (0 when none stands).
    pub fn seats_left(&self) -> u32 {
        let state = self.state.load(Ordering::Acquire);
        if state & STANDING == 0 {
            return 0;
        }
        ((state & SEATS_MASK) / SEAT) as u32
    }

    /// Offers `work` to up to `seats` helpers (at most [`MAX_SEATS`]) while
    /// `owner` runs, then withdraws it and waits (calling `relax` in the
    /// loop) until every helper that joined has left. Returns what `owner`
    /// returned. Offers do not nest: one `Offer` stands for one lender.
    pub fn lend<R>(
        &self,
        work: &T,
        seats: u32,
        owner: impl FnOnce(&T) -> R,
        mut relax: impl FnMut(),
    ) -> R {
        let seats = u64::from(seats.min(MAX_SEATS));
        self.work
            .store(core::ptr::from_ref(work).cast_mut(), Ordering::Relaxed);
        // Release: a helper whose join reads this state sees `work` stored.
        let before = self
            .state
            .swap(STANDING | (seats * SEAT), Ordering::Release);
        assert_eq!(before & (STANDING | INSIDE_MASK), 0, "offers do not nest");
        self.generation.fetch_add(1, Ordering::Release);
        let result = owner(work);
        // Withdraw: no join ordered after this succeeds. Acquire with the
        // wait below: what the helpers did is done before `lend` returns.
        let mut state = self
            .state
            .fetch_and(!(STANDING | SEATS_MASK), Ordering::AcqRel);
        while state & INSIDE_MASK != 0 {
            relax();
            state = self.state.load(Ordering::Acquire);
        }
        result
    }

    /// Takes a seat of the standing offer, if one stands and a seat is free,
    /// runs `helper` on the work and leaves. `None`: nothing to help with.
    pub fn join<R>(&self, helper: impl FnOnce(&T) -> R) -> Option<R> {
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if state & STANDING == 0 || state & SEATS_MASK == 0 {
                return None;
            }
            // Acquire: pairs with `lend`'s release of the offer (and `work`).
            match self.state.compare_exchange_weak(
                state,
                state - SEAT + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => state = now,
            }
        }
        // SAFETY: this helper is counted inside a standing offer, so the
        // lender is in `lend` and will not return (its `work` stays borrowed)
        // until the count drops back; the pointer was stored before the
        // offer was released.
        let work = unsafe { &*self.work.load(Ordering::Relaxed) };
        let result = helper(work);
        // Release: everything the helper did happens before the lender's
        // acquire of a count without it.
        self.state.fetch_sub(1, Ordering::Release);
        Some(result)
    }
}

#[cfg(not(loom))]
impl<T> Default for Offer<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;

    use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::vec::Vec;

    use super::*;

    struct Work {
        alive: AtomicBool,
        helped: AtomicUsize,
    }

    #[test]
    fn helpers_join_only_while_an_offer_stands_and_within_its_seats() {
        let offer = Offer::<Work>::new();
        assert_eq!(offer.join(|_| ()), None);
        let work = Work {
            alive: AtomicBool::new(true),
            helped: AtomicUsize::new(0),
        };
        let joined = offer.lend(
            &work,
            2,
            |work| {
                let mut joined = 0;
                for _ in 0..3 {
                    if offer
                        .join(|w| w.helped.fetch_add(1, Ordering::Relaxed))
                        .is_some()
                    {
                        joined += 1;
                    }
                }
                assert_eq!(work.helped.load(Ordering::Relaxed), 2);
                joined
            },
            || {},
        );
        assert_eq!(joined, 2, "the third join found no seat");
        assert_eq!(offer.seats_left(), 0);
        assert_eq!(offer.join(|_| ()), None, "withdrawn");
        assert_eq!(offer.generation(), 1);
    }

    #[test]
    fn the_lender_waits_for_every_helper_that_joined() {
        static OFFER: Offer<Work> = Offer::new();
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let helpers: Vec<_> = (0..3)
                .map(|_| {
                    scope.spawn(|| {
                        let mut joined = 0;
                        while !stop.load(Ordering::Acquire) {
                            if OFFER
                                .join(|work| {
                                    assert!(work.alive.load(Ordering::Relaxed), "work gone");
                                    std::thread::yield_now();
                                    assert!(work.alive.load(Ordering::Relaxed), "work gone");
                                })
                                .is_some()
                            {
                                joined += 1;
                            }
                        }
                        joined
                    })
                })
                .collect();
            for _ in 0..500 {
                let work = Work {
                    alive: AtomicBool::new(true),
                    helped: AtomicUsize::new(0),
                };
                OFFER.lend(
                    &work,
                    3,
                    |_| std::thread::yield_now(),
                    std::thread::yield_now,
                );
                work.alive.store(false, Ordering::Relaxed);
            }
            stop.store(true, Ordering::Release);
            let joined: usize = helpers.into_iter().map(|h| h.join().unwrap()).sum();
            assert!(joined > 0, "no helper ever joined");
        });
    }
}

/// `RUSTFLAGS="--cfg loom" cargo test --release -p work-sharing --lib loom_model`
#[cfg(all(test, loom))]
mod loom_model {
    extern crate std;

    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::Offer;

    struct Work {
        alive: AtomicBool,
        helped: AtomicUsize,
    }

    /// A lender and two helpers, every interleaving: a helper inside the
    /// offer always finds the work alive (the lender "frees" it right after
    /// `lend` returns), and every helper that joined had finished by then
    /// (the lender counts their effects). Fails with the count's release and
    /// acquire relaxed, or with a join that checks the offer and counts
    /// itself in as two steps.
    #[test]
    fn no_helper_sees_the_work_after_lend_returns() {
        loom::model(|| {
            let offer = Arc::new(Offer::<Work>::new());
            let helpers: std::vec::Vec<_> = (0..2)
                .map(|_| {
                    let offer = offer.clone();
                    loom::thread::spawn(move || {
                        offer.join(|work| {
                            assert!(work.alive.load(Ordering::Relaxed), "work gone");
                            work.helped.fetch_add(1, Ordering::Relaxed);
                        })
                    })
                })
                .collect();
            let work = Work {
                alive: AtomicBool::new(true),
                helped: AtomicUsize::new(0),
            };
            offer.lend(&work, 2, |_| (), loom::thread::yield_now);
            let helped = work.helped.load(Ordering::Relaxed);
            // The lender may now free the work.
            work.alive.store(false, Ordering::Relaxed);
            let joined = helpers
                .into_iter()
                .map(|helper| helper.join().unwrap())
                .filter(Option::is_some)
                .count();
            assert_eq!(
                joined, helped,
                "a helper joined that the lender did not wait for"
            );
        });
    }
}
