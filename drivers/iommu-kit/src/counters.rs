//! Counters of the work a driver did (commands, waits, MMIO writes), read by
//! the benchmarks and by tests that check what an operation cost.

/// Declares a counters struct: `u64` fields, `Default` and `since` (the work
/// done between two readings).
///
/// ```
/// iommu_kit::counters! {
///     /// Work done by a unit.
///     pub struct Counters {
///         /// Commands queued.
///         pub commands,
///         pub waits,
///     }
/// }
/// let before = Counters { commands: 3, waits: 1 };
/// let after = Counters { commands: 5, waits: 2 };
/// assert_eq!(after.since(&before), Counters { commands: 2, waits: 1 });
/// ```
#[macro_export]
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$field_meta:meta])* $field_vis:vis $field:ident ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        $vis struct $name {
            $( $(#[$field_meta])* $field_vis $field: u64 ),*
        }

        impl $name {
            /// `self - earlier`, field by field: the work done in between.
            pub fn since(&self, earlier: &Self) -> Self {
                Self {
                    $( $field: self.$field.wrapping_sub(earlier.$field) ),*
                }
            }

        }
    };
}

/// A counters struct several CPUs add to through a shared reference: the
/// additions of one operation are made together, under a lock held only for
/// them (never across a wait on the hardware).
#[derive(Debug, Default)]
pub struct Tally<C> {
    counts: spin::Mutex<C>,
}

impl<C: Copy> Tally<C> {
    /// A tally starting at `counts`.
    pub const fn new(counts: C) -> Self {
        Self {
            counts: spin::Mutex::new(counts),
        }
    }

    /// Adds an operation's work.
    pub fn add(&self, f: impl FnOnce(&mut C)) {
        f(&mut self.counts.lock());
    }

    /// The counts so far.
    pub fn read(&self) -> C {
        *self.counts.lock()
    }
}
