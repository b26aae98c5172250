//! The units as the core shares them: exclusively under its caller's lock,
//! and with the fills (page-table writes and IOTLB flushes of `IOAS_MAP` and
//! `IOAS_UNMAP`) that run outside it.
//!
//! Linux's iommufd keeps the same split with a read-write semaphore per IOAS
//! (`iopt->domains_rwsem`): filling pages into the domains holds it for read,
//! adding or removing a domain for write. Here a fill holds a
//! [`FillTicket`] on each unit it writes through, taken while the caller's
//! lock is held; the core waits for a unit's tickets to be given back before
//! it reaches the unit through `&mut` (to attach, detach, allocate or free a
//! domain). A fill never needs the caller's lock, so that wait ends.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ops::{Deref, Index, IndexMut};
use core::sync::atomic::{AtomicUsize, Ordering};

/// One unit and the fills running on it.
struct UnitCell<U> {
    unit: UnsafeCell<U>,
    fills: AtomicUsize,
    /// The most fills it ever had at once (a figure).
    most_fills: AtomicUsize,
}

// SAFETY: the cell hands out `&mut U` only while no ticket exists (see
// `Units::index_mut`) and `&U` otherwise, to whichever thread holds the
// ticket or the `Units`: what `RwLock<U>` requires of `U`.
unsafe impl<U: Send + Sync> Sync for UnitCell<U> {}
// SAFETY: moving the cell moves the unit.
unsafe impl<U: Send> Send for UnitCell<U> {}

/// The core's units, indexed by `UnitId`. `units[i]` through `&self` is a
/// shared reference; through `&mut self` it first waits until no fill
/// uses unit `i` (new fills start only through `&mut self`, so none can
/// start meanwhile).
pub struct Units<U> {
    cells: Arc<[UnitCell<U>]>,
}

impl<U> Units<U> {
    pub(crate) fn new(units: Vec<U>) -> Self {
        Self {
            cells: units
                .into_iter()
                .map(|unit| UnitCell {
                    unit: UnsafeCell::new(unit),
                    fills: AtomicUsize::new(0),
                    most_fills: AtomicUsize::new(0),
                })
                .collect(),
        }
    }

    /// How many units there are.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Unit `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<&U> {
        (index < self.len()).then(|| &self[index])
    }

    /// The first unit, if any.
    pub fn first(&self) -> Option<&U> {
        self.get(0)
    }

    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut U> {
        (index < self.len()).then(|| &mut self[index])
    }

    /// The most fills one unit has had at once since the last
    /// [`Self::reset_most_fills`]: above 1 when CPUs filled tables side by
    /// side.
    pub fn most_fills(&self) -> usize {
        let most = self
            .cells
            .iter()
            .map(|cell| cell.most_fills.load(Ordering::Relaxed));
        most.max().unwrap_or(0)
    }

    /// Starts [`Self::most_fills`] again.
    pub fn reset_most_fills(&self) {
        for cell in self.cells.iter() {
            cell.most_fills.store(0, Ordering::Relaxed);
        }
    }

    /// Every unit, in order.
    pub fn iter(&self) -> Iter<'_, U> {
        Iter {
            units: self,
            next: 0,
        }
    }

    /// A ticket to use unit `index` through `&U` outside the caller's lock.
    /// Panics on an index out of range (a core bug).
    pub(crate) fn ticket(&mut self, index: usize) -> FillTicket<U> {
        let cell = &self.cells[index];
        let fills = cell.fills.fetch_add(1, Ordering::Acquire) + 1;
        cell.most_fills.fetch_max(fills, Ordering::Relaxed);
        FillTicket {
            cells: Arc::clone(&self.cells),
            index,
        }
    }
}

impl<U> Index<usize> for Units<U> {
    type Output = U;

    fn index(&self, index: usize) -> &U {
        // SAFETY: `&self` excludes `index_mut`'s `&mut U`; tickets only hand
        // out shared references.
        unsafe { &*self.cells[index].unit.get() }
    }
}

impl<U> IndexMut<usize> for Units<U> {
    fn index_mut(&mut self, index: usize) -> &mut U {
        let cell = &self.cells[index];
        // Fills hold no lock the caller holds, so they end; no new one can
        // start while `&mut self` is borrowed.
        while cell.fills.load(Ordering::Acquire) != 0 {
            core::hint::spin_loop();
        }
        // SAFETY: no ticket exists (the Acquire load saw the last one's
        // Release), no new one can be made while the returned borrow of
        // `self` lives, and `&mut self` excludes `index`'s shared ones.
        unsafe { &mut *cell.unit.get() }
    }
}

/// The units in order ([`Units::iter`]).
pub struct Iter<'a, U> {
    units: &'a Units<U>,
    next: usize,
}

impl<'a, U> Iterator for Iter<'a, U> {
    type Item = &'a U;

    fn next(&mut self) -> Option<&'a U> {
        let unit = self.units.get(self.next)?;
        self.next += 1;
        Some(unit)
    }
}

impl<'a, U> IntoIterator for &'a Units<U> {
    type Item = &'a U;
    type IntoIter = Iter<'a, U>;

    fn into_iter(self) -> Iter<'a, U> {
        self.iter()
    }
}

/// Leave to use one unit through `&U` while the core's caller has dropped
/// its lock; the core waits for it before it changes the unit.
pub struct FillTicket<U> {
    cells: Arc<[UnitCell<U>]>,
    index: usize,
}

impl<U> Deref for FillTicket<U> {
    type Target = U;

    fn deref(&self) -> &U {
        // SAFETY: while this ticket lives, `Units::index_mut` waits, so only
        // shared references to the unit exist.
        unsafe { &*self.cells[self.index].unit.get() }
    }
}

impl<U> Drop for FillTicket<U> {
    fn drop(&mut self) {
        self.cells[self.index].fills.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use core::sync::atomic::AtomicBool;

    #[test]
    fn exclusive_access_waits_for_every_ticket() {
        let mut units = Units::new(alloc::vec![0u32, 0]);
        let ticket = units.ticket(1);
        units[0] += 1; // another unit: no wait
        let released = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&released);
        let fill = std::thread::spawn(move || {
            assert_eq!(*ticket, 0);
            std::thread::sleep(std::time::Duration::from_millis(20));
            flag.store(true, Ordering::SeqCst);
            drop(ticket);
        });
        units[1] += 1;
        assert!(
            released.load(Ordering::SeqCst),
            "&mut came before the ticket was given back"
        );
        fill.join().unwrap();
        assert_eq!((units[0], units[1]), (1, 1));
    }
}
