//! IOAS operations: allocation, ranges, allowed IOVAs, map, unmap, copy.

use crate::fill::Piece;
use crate::fill::{self, MapFill, PendingMap, PendingUnmap, Tickets};
use crate::iova::IovaSpace;
use crate::{
    Area, AreaTree, Ioas, Iommufd, ObjId, Object, OwnerId, PAGE_SIZE, Pages, Reservation, Resource,
    Services,
};
use abi::Errno;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::AtomicUsize;
use iommu::{DomainHandle, IommuUnit, IovaRange, Prot, UnitId};

/// What `ioas_iova_ranges` reports: the usable ranges and the IOVA alignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IovaRanges {
    /// Every IOVA range no reserved range touches, in order.
    pub ranges: Vec<IovaRange>,
    /// What every area's IOVA, length and user page offset are multiples of.
    pub alignment: u64,
}

impl IovaRanges {
    /// Writes the ranges into the caller's array, as many as fit; `EMSGSIZE`
    /// when that is not all of them (the caller reports `ranges.len()` back
    /// in either case), as Linux's `iommufd_ioas_iova_ranges`, which fills the
    /// first `num_iovas` entries before it says the array is too small.
    pub fn copy_to(&self, out: &mut [abi::IovaRangeEntry]) -> Result<u32, Errno> {
        let count = u32::try_from(self.ranges.len()).map_err(|_| Errno::EOVERFLOW)?;
        for (slot, r) in out.iter_mut().zip(&self.ranges) {
            *slot = abi::IovaRangeEntry {
                start: r.start,
                last: r.last,
            };
        }
        if out.len() < self.ranges.len() {
            return Err(Errno::EMSGSIZE);
        }
        Ok(count)
    }
}

/// The alignment of an automatic IOVA for `len` bytes starting at address
/// `addr` (the user address, or the source IOVA of a copy; 0 = any): `len`
/// rounded up to a power of two, capped by `addr`'s own alignment, so that
/// the IOVA lines up with the pages as far as they can form large leaves
/// (Linux `iopt_alloc_iova`). `EINVAL` below `min`, the IOAS alignment, as
/// Linux: such a mapping could not use the domains' smallest page.
fn automatic_alignment(len: u64, addr: u64, min: u64) -> Result<u64, Errno> {
    let rounded = len.checked_next_power_of_two().unwrap_or(1 << 63);
    let alignment = match addr {
        0 => rounded,
        _ => rounded.min(1 << addr.trailing_zeros()),
    };
    if alignment < min {
        return Err(Errno::EINVAL);
    }
    Ok(alignment)
}

/// Sorts and merges ranges (touching ranges merge).
fn normalize(mut ranges: Vec<IovaRange>) -> Vec<IovaRange> {
    ranges.sort_unstable();
    let mut out: Vec<IovaRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(prev) if prev.last.checked_add(1).is_none_or(|next| r.start <= next) => {
                prev.last = prev.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

/// `allowed` (everything when empty) minus every reserved range.
pub(crate) fn usable_ranges(allowed: &[IovaRange], reserved: &[Reservation]) -> Vec<IovaRange> {
    let base = if allowed.is_empty() {
        alloc::vec![IovaRange::FULL]
    } else {
        normalize(allowed.to_vec())
    };
    let holes = normalize(reserved.iter().map(|r| r.range).collect());
    let mut out = Vec::new();
    for b in base {
        let mut cursor = Some(b.start);
        for h in holes.iter().filter(|h| h.intersects(&b)) {
            let Some(c) = cursor else { break };
            if h.start > c {
                out.push(IovaRange {
                    start: c,
                    last: h.start - 1,
                });
            }
            cursor = h.last.checked_add(1);
        }
        if let Some(c) = cursor
            && c <= b.last
        {
            out.push(IovaRange {
                start: c,
                last: b.last,
            });
        }
    }
    out
}

impl Ioas {
    /// An empty IOAS whose areas count into `owner_areas`.
    pub(crate) fn new(owner_areas: Arc<AtomicUsize>) -> Self {
        Self {
            areas: AreaTree::new(owner_areas),
            allowed: Vec::new(),
            reserved: Vec::new(),
            space: IovaSpace::build(&[IovaRange::FULL], core::iter::empty()),
            domains: Vec::new(),
            handles: alloc::sync::Arc::from([]),
            // Byte granular until a domain is attached (Linux: an
            // io_pagetable without domains has `iova_alignment` 1).
            alignment: 1,
            lost_domains: 0,
            huge_pages: true,
        }
    }

    fn area_ranges(&self) -> impl Iterator<Item = IovaRange> + Clone + '_ {
        self.areas.iter().map(|(&start, a)| IovaRange {
            start,
            last: a.last,
        })
    }

    /// Recomputes the hole index after the allowed or reserved ranges changed.
    pub(crate) fn rebuild(&mut self) {
        let usable = usable_ranges(&self.allowed, &self.reserved);
        self.space = IovaSpace::build(&usable, self.area_ranges());
    }

    pub(crate) fn overlaps_area(&self, r: IovaRange) -> bool {
        // Areas are disjoint: the last one starting at or before `r.last` reaches
        // furthest among those that could intersect.
        self.areas
            .range(..=r.last)
            .next_back()
            .is_some_and(|(_, a)| a.last >= r.start)
    }

    pub(crate) fn overlaps_reserved(&self, r: IovaRange) -> bool {
        self.reserved.iter().any(|x| x.range.intersects(&r))
    }

    pub(crate) fn overlaps_allowed(&self, r: IovaRange) -> bool {
        self.allowed.iter().any(|x| x.intersects(&r))
    }

    /// Validates a caller-chosen IOVA range (Linux `iopt_check_iova`).
    fn check_fixed(&self, iova: u64, len: u64) -> Result<IovaRange, Errno> {
        if !iova.is_multiple_of(self.alignment) {
            return Err(Errno::EINVAL);
        }
        let range = IovaRange::from_len(iova, len).ok_or(Errno::EOVERFLOW)?;
        if self.overlaps_reserved(range) {
            return Err(Errno::EINVAL);
        }
        if self.overlaps_area(range) {
            return Err(Errno::EEXIST);
        }
        Ok(range)
    }

    /// Claims the IOVA for a new mapping of `len` bytes from user address
    /// `addr`: checks a fixed one, or allocates ([`automatic_alignment`]).
    /// An automatic IOVA aligned to less than a page starts in a page of its
    /// own at `addr`'s offset in its page, as Linux's `iopt_alloc_iova` ORs
    /// `page_offset` into the aligned start (of a page-aligned hole); the
    /// part of the page before the offset stays free.
    fn claim_iova(&mut self, fixed: Option<u64>, len: u64, addr: u64) -> Result<u64, Errno> {
        if let Some(iova) = fixed {
            let range = self.check_fixed(iova, len)?;
            self.space.take(range);
            return Ok(iova);
        }
        let alignment = automatic_alignment(len, addr, self.alignment)?;
        if alignment >= PAGE_SIZE {
            return self.space.alloc(len, alignment).ok_or(Errno::ENOSPC);
        }
        let offset = addr % PAGE_SIZE;
        let padded = len.checked_add(offset).ok_or(Errno::EOVERFLOW)?;
        let base = self.space.alloc(padded, PAGE_SIZE).ok_or(Errno::ENOSPC)?;
        if offset != 0 {
            self.space.release(IovaRange {
                start: base,
                last: base + (offset - 1),
            });
        }
        Ok(base + offset)
    }

    /// [`area_fits`] this IOAS's alignment.
    fn fits_alignment(&self, iova: u64, len: u64, page_offset: u64) -> bool {
        area_fits(self.alignment, iova, len, page_offset)
    }
}

/// Whether an area of `len` bytes at `iova` over user bytes that start
/// `page_offset` into their page can be mapped by domains whose smallest
/// page is `alignment`: all three multiples of it (Linux `iopt_check_iova`,
/// `iopt_alloc_area_pages`, `iopt_insert_area`, and at attach
/// `iopt_check_iova_alignment`).
pub(crate) fn area_fits(alignment: u64, iova: u64, len: u64, page_offset: u64) -> bool {
    [iova, len, page_offset]
        .iter()
        .all(|value| value.is_multiple_of(alignment))
}

fn check_prot(prot: Prot) -> Result<(), Errno> {
    if !prot.read && !prot.write {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

impl<U: IommuUnit, S: Services> Iommufd<U, S> {
    /// Creates an empty IOAS (no geometry: the attached units give it one).
    pub fn ioas_alloc(&mut self, owner: OwnerId) -> Result<ObjId, Errno> {
        self.owners.get(&owner).map_or(Ok(1), |o| o.peek_id())?;
        self.admit(owner, Resource::ObjectSlot)?;
        self.services.charge(Resource::ObjectSlot)?;
        self.services.charge(Resource::IovaNode)?;
        let o = self.owners.entry(owner).or_default();
        let ioas = Ioas::new(Arc::clone(&o.areas));
        Ok(o.insert(Object::Ioas(alloc::boxed::Box::new(ioas))))
    }

    /// Removes an IOAS no HWPT uses; its areas are in no domain, so their pages
    /// can be unpinned at once.
    pub(crate) fn destroy_ioas(&mut self, owner: OwnerId, id: ObjId) -> Result<(), Errno> {
        // A map still filling it finishes first.
        if self
            .owner(owner)?
            .ioas(id)?
            .areas
            .values()
            .any(|area| area.filling)
        {
            return Err(Errno::EBUSY);
        }
        let Some(Object::Ioas(ioas)) = self.owner_mut(owner)?.remove(id) else {
            return Err(Errno::ENOENT);
        };
        for area in ioas.areas.values() {
            if ioas.lost_domains == 0 {
                self.put_pages(area.pages);
            } else {
                self.quarantine_pages(area.pages);
            }
        }
        Ok(())
    }

    /// The usable IOVA ranges (allowed, or everything, minus reserved) and the
    /// alignment every mapping must respect.
    /// What a task may map at fixed IOVAs: everything but the reserved
    /// ranges (devices' reserved regions, outside the units' apertures). The
    /// allowed ranges are not subtracted: they bound only automatic allocation,
    /// which stays inside what is reported (Linux `iommufd_ioas_iova_ranges`
    /// reports the holes of `reserved_itree`).
    pub fn ioas_iova_ranges(&self, owner: OwnerId, id: ObjId) -> Result<IovaRanges, Errno> {
        let ioas = self.owner(owner)?.ioas(id)?;
        Ok(IovaRanges {
            ranges: usable_ranges(&[], &ioas.reserved),
            alignment: ioas.alignment,
        })
    }

    /// The areas of an IOAS as (iova, length), in order.
    pub fn ioas_areas(&self, owner: OwnerId, id: ObjId) -> Result<Vec<(u64, u64)>, Errno> {
        let ioas = self.owner(owner)?.ioas(id)?;
        Ok(ioas
            .areas
            .iter()
            .map(|(&s, a)| (s, a.last - s + 1))
            .collect())
    }

    /// The free IOVA holes of an IOAS (usable minus areas), in order.
    pub fn ioas_holes(&self, owner: OwnerId, id: ObjId) -> Result<Vec<IovaRange>, Errno> {
        Ok(self.owner(owner)?.ioas(id)?.space.holes().collect())
    }

    /// Replaces the ranges automatic allocation may use (empty = everything).
    /// `EINVAL` for a range of one byte or fewer (start >= last, as Linux's
    /// `iommufd_ioas_load_iovas`) or overlapping ranges, `EADDRINUSE` when
    /// one intersects a reserved range; nothing changes on error.
    pub fn ioas_allow_iovas(
        &mut self,
        owner: OwnerId,
        id: ObjId,
        ranges: &[IovaRange],
    ) -> Result<(), Errno> {
        let ioas = self.owner(owner)?.ioas(id)?;
        if ranges.iter().any(|r| r.start >= r.last) {
            return Err(Errno::EINVAL);
        }
        let mut sorted = ranges.to_vec();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0].last >= w[1].start) {
            return Err(Errno::EINVAL);
        }
        if sorted.iter().any(|r| ioas.overlaps_reserved(*r)) {
            return Err(Errno::EADDRINUSE);
        }
        self.services.charge(Resource::IovaNode)?;
        let ioas = self.owner_mut(owner)?.ioas_mut(id)?;
        ioas.allowed = sorted;
        ioas.rebuild();
        Ok(())
    }

    pub(crate) fn ioas_domains(
        &self,
        owner: OwnerId,
        id: ObjId,
    ) -> Result<alloc::sync::Arc<[(UnitId, DomainHandle)]>, Errno> {
        Ok(self.owner(owner)?.ioas(id)?.handles.clone())
    }

    /// Maps `pieces` into every domain, all or nothing. On error the second value
    /// tells whether the rollback flushes completed (if not, the pages behind the
    /// pieces must never be released).
    pub(crate) fn map_all(
        &mut self,
        domains: &[(UnitId, DomainHandle)],
        pieces: &[Piece],
        prot: Prot,
        huge_pages: bool,
    ) -> Result<(), (Errno, bool)> {
        let pages = &self.pages;
        fill::map_into_domains(
            &mut self.units,
            |p| pages.get(p.pages).map_or((&[], 0), |p| (&p.runs, p.head())),
            domains,
            pieces,
            prot,
            huge_pages,
        )
    }

    /// `IOMMU_OPTION_HUGE_PAGES` of an IOAS: reads it (`set` = `None`) or
    /// changes it. Turning huge pages off is `EINVAL` once a domain of the IOAS
    /// maps an area (they may already use large pages), as Linux's
    /// `iopt_disable_large_pages`; on again is always fine (new mappings only).
    pub fn ioas_option_huge_pages(
        &mut self,
        owner: OwnerId,
        id: ObjId,
        set: Option<bool>,
    ) -> Result<bool, Errno> {
        let ioas = self.owner_mut(owner)?.ioas_mut(id)?;
        match set {
            None => {}
            Some(false)
                if ioas.huge_pages && !ioas.handles.is_empty() && !ioas.areas.is_empty() =>
            {
                return Err(Errno::EINVAL);
            }
            Some(on) => ioas.huge_pages = on,
        }
        Ok(ioas.huge_pages)
    }

    /// Unmaps whole pieces from a domain and flushes; false if the flush failed.
    pub(crate) fn unmap_pieces(
        &mut self,
        unit: UnitId,
        domain: DomainHandle,
        pieces: &[Piece],
    ) -> bool {
        fill::unmap_from_domain(&mut self.units, unit, domain, pieces)
    }

    /// Pins `[user_va, user_va + len)` and maps it at `iova` (or at an automatic
    /// IOVA, naturally aligned, never 0) in every domain of the IOAS.
    /// Returns the IOVA.
    pub fn ioas_map(
        &mut self,
        owner: OwnerId,
        id: ObjId,
        user_va: u64,
        len: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64, Errno> {
        match self.map_step(owner, id, user_va, len, iova, prot)? {
            Step::Done(iova) => Ok(iova),
            Step::Pending(mut pending) => {
                pending.run();
                self.ioas_map_finish(pending)
            }
        }
    }

    /// [`Self::ioas_map`] up to the domains' page tables: checks, pins, sets
    /// the IOVA range aside (an area marked as filling) and takes tickets on
    /// the units, whose page-table writes and flushes [`PendingMap::run`]
    /// makes without the caller's lock. Units that cannot share their
    /// mapping calls are filled here, under it.
    pub fn ioas_map_begin(
        &mut self,
        owner: OwnerId,
        id: ObjId,
        user_va: u64,
        len: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<PendingMap<U>, Errno> {
        Ok(match self.map_step(owner, id, user_va, len, iova, prot)? {
            Step::Done(iova) => PendingMap::done(owner, id, iova, len, prot),
            Step::Pending(pending) => pending,
        })
    }

    /// [`Self::ioas_map_begin`], whose one-step maps [`Self::ioas_map`]
    /// completes without building a pending map.
    fn map_step(
        &mut self,
        owner: OwnerId,
        id: ObjId,
        user_va: u64,
        len: u64,
        iova: Option<u64>,
        prot: Prot,
    ) -> Result<Step<u64, PendingMap<U>>, Errno> {
        check_prot(prot)?;
        // Asked before the IOAS is borrowed, answered where the call charges.
        let admitted = self.admit(owner, Resource::Area);
        // One lookup of the IOAS serves the whole call: the other fields of
        // the core (services, pages, units) are borrowed beside it.
        let ioas = self
            .owners
            .get_mut(&owner)
            .ok_or(Errno::ENOENT)?
            .ioas_mut(id)?;
        if len == 0 || !ioas.fits_alignment(0, len, user_va % PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        user_va.checked_add(len - 1).ok_or(Errno::EOVERFLOW)?;
        let (pinned_va, pinned_len) = crate::page_span(user_va, len);
        if let Some(iova) = iova {
            ioas.check_fixed(iova, len)?;
        }
        admitted?;
        self.services.charge(Resource::Area)?;
        self.services.charge(Resource::IovaNode)?;
        self.services.charge(Resource::PinnedPages)?;
        let iova = ioas.claim_iova(iova, len, user_va)?;
        let range = IovaRange {
            start: iova,
            last: iova + (len - 1),
        };
        let mut runs = self.spare_runs.pop().unwrap_or_default();
        if let Err(e) = self
            .services
            .pin(owner, pinned_va, pinned_len, prot.write, &mut runs)
        {
            runs.clear();
            self.spare_runs.push(runs);
            ioas.space.release(range);
            return Err(e);
        }
        let huge_pages = ioas.huge_pages;
        let fill = Tickets::take(&mut self.units, &ioas.handles).map(|tickets| MapFill {
            tickets,
            runs: runs.clone(),
            head: user_va % PAGE_SIZE,
            huge_pages,
        });
        let pages = self.pages.insert(Pages {
            owner,
            va: user_va,
            len,
            runs,
            refs: 1,
            doomed: false,
        });
        let piece = Piece {
            iova,
            len,
            pages,
            offset: 0,
        };
        if fill.is_none() {
            // Units that do not share their mapping calls are filled now,
            // under the lock, and the map completes in one step.
            let table = &self.pages;
            if let Err((e, clean)) = fill::map_into_domains(
                &mut self.units,
                |p| table.get(p.pages).map_or((&[], 0), |p| (&p.runs, p.head())),
                &ioas.handles,
                &[piece],
                prot,
                huge_pages,
            ) {
                ioas.space.release(range);
                if clean {
                    self.put_pages(pages);
                } else {
                    self.quarantine_pages(pages);
                }
                return Err(e);
            }
        }
        ioas.areas.insert(
            iova,
            Area {
                last: range.last,
                pages,
                offset: 0,
                prot,
                filling: fill.is_some(),
            },
        );
        let Some(fill) = fill else {
            return Ok(Step::Done(iova));
        };
        Ok(Step::Pending(PendingMap {
            owner,
            ioas: id,
            iova,
            len,
            pages,
            prot,
            domains: Some(ioas.handles.clone()),
            fill: Some(fill),
            outcome: Ok(()),
            finished: None,
        }))
    }

    /// Completes a map [`Self::ioas_map_begin`] set up and its fill ran: the
    /// area becomes an ordinary one, or, when the fill failed, goes again
    /// with its IOVAs and pages (quarantined when a rollback flush failed).
    /// `ENOENT` when the owner was torn down meanwhile (which released it).
    pub fn ioas_map_finish(&mut self, mut pending: PendingMap<U>) -> Result<u64, Errno> {
        if let Some(iova) = pending.finished {
            return Ok(iova);
        }
        // A fill that never ran is run now, under the lock.
        pending.run();
        let PendingMap {
            owner,
            ioas: id,
            iova,
            pages,
            domains,
            outcome,
            ..
        } = pending;
        let ioas = self
            .owners
            .get_mut(&owner)
            .and_then(|o| o.ioas_mut(id).ok())
            .filter(|ioas| {
                ioas.areas
                    .get(&iova)
                    .is_some_and(|area| area.filling && area.pages == pages)
            })
            .ok_or(Errno::ENOENT)?;
        let Err((e, mut clean)) = outcome else {
            if let Some(area) = ioas.areas.get_mut(&iova) {
                area.filling = false;
            }
            return Ok(iova);
        };
        let area = ioas.areas.remove(&iova).expect("checked above");
        let piece = Piece {
            iova,
            len: area.last - iova + 1,
            pages,
            offset: 0,
        };
        // Domains attached while it filled got the area by replay.
        for &(unit, domain) in ioas.handles.iter() {
            if !domains.as_deref().unwrap_or(&[]).contains(&(unit, domain)) {
                clean &= fill::unmap_from_domain(&mut self.units, unit, domain, &[piece]);
            }
        }
        ioas.space.release(IovaRange {
            start: iova,
            last: area.last,
        });
        if clean {
            self.put_pages(pages);
        } else {
            self.quarantine_pages(pages);
        }
        Err(e)
    }

    /// Unmaps the whole areas inside `[iova, iova + len)`; `(0, u64::MAX)` unmaps
    /// everything (and succeeds on an empty IOAS). `ENOENT` when nothing is mapped
    /// there or the range cuts an area; `EBUSY` when a map into it is still
    /// filling. Pages are released after the flush. Returns the bytes unmapped.
    pub fn ioas_unmap(
        &mut self,
        owner: OwnerId,
        id: ObjId,
        iova: u64,
        len: u64,
    ) -> Result<u64, Errno> {
        match self.unmap_step(owner, id, iova, len)? {
            Step::Done(result) => result,
            Step::Pending(mut pending) => {
                pending.run();
                self.ioas_unmap_finish(pending)
            }
        }
    }

    /// [`Self::ioas_unmap`] up to the domains: checks the range, takes its
    /// areas out of the tree (their IOVAs stay claimed, so nothing maps
    /// there meanwhile) and takes tickets on the units, whose unmaps and
    /// flushes [`PendingUnmap::run`] makes without the caller's lock.
    pub fn ioas_unmap_begin(
        &mut self,
        owner: OwnerId,
        id: ObjId,
        iova: u64,
        len: u64,
    ) -> Result<PendingUnmap<U>, Errno> {
        Ok(match self.unmap_step(owner, id, iova, len)? {
            Step::Done(result) => PendingUnmap::done(owner, id, result),
            Step::Pending(pending) => pending,
        })
    }

    /// [`Self::ioas_unmap_begin`], whose one-step unmaps
    /// [`Self::ioas_unmap`] completes without building a pending unmap.
    fn unmap_step(
        &mut self,
        owner: OwnerId,
        id: ObjId,
        iova: u64,
        len: u64,
    ) -> Result<Step<Result<u64, Errno>, PendingUnmap<U>>, Errno> {
        // The IOAS first, as Linux's iommufd_ioas_unmap looks it up before it
        // checks the range.
        let ioas = self
            .owners
            .get_mut(&owner)
            .ok_or(Errno::ENOENT)?
            .ioas_mut(id)?;
        let all = iova == 0 && len == u64::MAX;
        let range = if all {
            IovaRange::FULL
        } else if len == 0 {
            return Err(Errno::EINVAL);
        } else {
            IovaRange::from_len(iova, len).ok_or(Errno::EOVERFLOW)?
        };
        let scan = scan_unmap(ioas, range, all)?;
        let empty = scan.count == 0;
        let tickets = match empty {
            true => None,
            false => Tickets::take(&mut self.units, &ioas.handles),
        };
        if tickets.is_none() && !empty {
            // Units that do not share their mapping calls: the unmap runs
            // here, under the lock, in one step (one IOAS lookup).
            let releasable = ioas.lost_domains == 0;
            let areas = ioas.areas.range(scan.first..=range.last);
            let areas = areas.map(|(&start, area)| (start, area));
            let flushed = fill::unmap_areas(&mut self.units, &ioas.handles, areas);
            let mut bytes = 0u64;
            let mut batch = [0u64; UNMAP_BATCH];
            let mut left = Left {
                count: scan.count,
                next: Some(scan.first),
            };
            let mut taken = take_areas(ioas, range, &mut left, &mut batch, &mut bytes);
            loop {
                for &pages in &batch[..taken] {
                    if flushed && releasable {
                        self.put_pages(pages);
                    } else {
                        self.quarantine_pages(pages);
                    }
                }
                if taken < UNMAP_BATCH {
                    break;
                }
                let ioas = self.owner_mut(owner)?.ioas_mut(id)?;
                taken = take_areas(ioas, range, &mut left, &mut batch, &mut bytes);
            }
            return Ok(Step::Done(if flushed {
                Ok(bytes)
            } else {
                Err(Errno::EIO)
            }));
        }
        let areas: Vec<(u64, Area)> = ioas
            .areas
            .range(scan.first..=range.last)
            .map(|(&start, &area)| (start, area))
            .collect();
        for (start, _) in &areas {
            ioas.areas.remove(start);
        }
        Ok(Step::Pending(PendingUnmap {
            owner,
            ioas: id,
            areas,
            domains: Some(ioas.handles.clone()),
            tickets,
            flushed: true,
            // A domain the unit could not free may still reach every area.
            releasable: ioas.lost_domains == 0,
            finished: None,
        }))
    }

    /// Completes an unmap [`Self::ioas_unmap_begin`] set up and whose unmaps
    /// ran: gives the IOVAs back and releases the pages (quarantines them
    /// when a domain may still reach them). Returns the bytes unmapped, or
    /// `EIO` when a flush failed.
    pub fn ioas_unmap_finish(&mut self, mut pending: PendingUnmap<U>) -> Result<u64, Errno> {
        if let Some(finished) = pending.finished {
            return finished;
        }
        pending.run();
        let mut bytes = 0u64;
        // The IOAS may be gone (its owner torn down meanwhile); the areas
        // were out of its tree, so their pages are still this call's.
        let mut ioas = self
            .owners
            .get_mut(&pending.owner)
            .and_then(|o| o.ioas_mut(pending.ioas).ok());
        for (start, area) in &pending.areas {
            if let Some(ioas) = ioas.as_deref_mut() {
                ioas.space.release(IovaRange {
                    start: *start,
                    last: area.last,
                });
            }
            bytes = bytes.wrapping_add(area.last - start + 1);
        }
        for (_, area) in &pending.areas {
            if pending.flushed && pending.releasable {
                self.put_pages(area.pages);
            } else {
                self.quarantine_pages(area.pages);
            }
        }
        if !pending.flushed {
            return Err(Errno::EIO);
        }
        Ok(bytes)
    }

    /// Maps the pages behind `[src_iova, src_iova + len)` of `src` into `dst` at
    /// `dst_iova` (or an automatic IOVA), sharing the pins. `ENOENT` when the source
    /// range has a hole. Returns the destination IOVA.
    #[allow(clippy::too_many_arguments)]
    pub fn ioas_copy(
        &mut self,
        owner: OwnerId,
        src: ObjId,
        src_iova: u64,
        len: u64,
        dst: ObjId,
        dst_iova: Option<u64>,
        prot: Prot,
    ) -> Result<u64, Errno> {
        check_prot(prot)?;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let src_range = IovaRange::from_len(src_iova, len).ok_or(Errno::EOVERFLOW)?;
        let o = self.owner(owner)?;
        let src_ioas = o.ioas(src)?;
        let dst_ioas = o.ioas(dst)?;
        // The source pieces, which must cover the range without a hole.
        let mut pieces = Vec::new();
        let first = src_ioas
            .areas
            .range(..=src_range.start)
            .next_back()
            .filter(|(_, a)| a.last >= src_range.start)
            .ok_or(Errno::ENOENT)?;
        let mut cursor = src_range.start;
        let mut covered = false;
        for (&start, area) in core::iter::once(first).chain(
            src_ioas
                .areas
                .range(src_range.start.saturating_add(1)..=src_range.last),
        ) {
            if start > cursor {
                return Err(Errno::ENOENT);
            }
            if area.filling {
                return Err(Errno::EBUSY);
            }
            let last = area.last.min(src_range.last);
            pieces.push(Piece {
                iova: cursor - src_range.start,
                len: last - cursor + 1,
                pages: area.pages,
                offset: area.offset + (cursor - start),
            });
            if last == src_range.last {
                covered = true;
                break;
            }
            cursor = last + 1;
        }
        if !covered {
            return Err(Errno::ENOENT);
        }
        // Each piece becomes an area of the destination, which its domains
        // must be able to map: its user bytes' page offset and its length
        // aligned as an `ioas_map`'s would be (Linux checks the total length
        // and each area's page offset).
        let user_address = |p: &Piece| {
            self.pages
                .get(p.pages)
                .map_or(0, |pages| pages.user_address(p.offset))
        };
        if !dst_ioas.fits_alignment(0, len, 0)
            || pieces
                .iter()
                .any(|p| !dst_ioas.fits_alignment(0, p.len, user_address(p) % PAGE_SIZE))
        {
            return Err(Errno::EINVAL);
        }
        // An automatic IOVA follows the first byte's user address, as
        // Linux's `iopt_alloc_area_pages` does.
        let first_user_address = user_address(&pieces[0]);
        if let Some(iova) = dst_iova {
            dst_ioas.check_fixed(iova, len)?;
        }
        let domains = self.ioas_domains(owner, dst)?;
        self.admit(owner, Resource::Area)?;
        self.services.charge(Resource::Area)?;
        self.services.charge(Resource::IovaNode)?;
        let base =
            self.owner_mut(owner)?
                .ioas_mut(dst)?
                .claim_iova(dst_iova, len, first_user_address)?;
        let dst_range = IovaRange {
            start: base,
            last: base + (len - 1),
        };
        for p in &mut pieces {
            p.iova += base;
        }
        let huge_pages = self.owner(owner)?.ioas(dst)?.huge_pages;
        if let Err((e, clean)) = self.map_all(&domains, &pieces, prot, huge_pages) {
            self.owner_mut(owner)?
                .ioas_mut(dst)?
                .space
                .release(dst_range);
            if !clean {
                // A device may still reach the shared pages: leak one reference
                // each so that they stay pinned for good.
                for p in &pieces {
                    if let Some(pages) = self.pages.get_mut(p.pages) {
                        pages.refs += 1;
                    }
                }
            }
            return Err(e);
        }
        for p in &pieces {
            if let Some(pages) = self.pages.get_mut(p.pages) {
                pages.refs += 1;
            }
        }
        let ioas = self.owner_mut(owner)?.ioas_mut(dst)?;
        for p in &pieces {
            ioas.areas.insert(
                p.iova,
                Area {
                    filling: false,
                    last: p.iova + (p.len - 1),
                    pages: p.pages,
                    offset: p.offset,
                    prot,
                },
            );
        }
        Ok(base)
    }
}

/// How the first step of a map or unmap ended: the whole call, for units
/// that do not share their mapping calls, or the part to run without the
/// lock.
enum Step<T, P> {
    Done(T),
    Pending(P),
}

/// Areas one step of an unmap under the lock removes before their pages
/// are released.
const UNMAP_BATCH: usize = 8;

/// What [`scan_unmap`] found in an unmap's range: how many areas, and the
/// first one's start.
struct UnmapScan {
    count: usize,
    first: u64,
}

/// The unmap's checks in one pass over the tree, from the last area that
/// starts in `range` back to the first one before it: an area cut by either
/// end of the range, or no area at all (unless the whole space was asked
/// for), is `ENOENT` (Linux `iopt_unmap_iova_range`); an area still being
/// filled by a map without the lock is `EBUSY`, reported after those.
fn scan_unmap(ioas: &Ioas, range: IovaRange, all: bool) -> Result<UnmapScan, Errno> {
    let mut scan = UnmapScan {
        count: 0,
        first: range.start,
    };
    let mut busy = false;
    for (&start, area) in ioas.areas.range(..=range.last).rev() {
        if start < range.start {
            if area.last >= range.start {
                return Err(Errno::ENOENT);
            }
            break;
        }
        if scan.count == 0 && area.last > range.last {
            return Err(Errno::ENOENT);
        }
        busy |= area.filling;
        scan.count += 1;
        scan.first = start;
    }
    if scan.count == 0 && !all {
        return Err(Errno::ENOENT);
    }
    if busy {
        return Err(Errno::EBUSY);
    }
    Ok(scan)
}

/// The areas of an unmap not yet taken out of the tree: how many, and the
/// next one's start when it is known without a search.
struct Left {
    count: usize,
    next: Option<u64>,
}

/// Removes up to [`UNMAP_BATCH`] of the areas `left` counts from `ioas`
/// (their IOVAs go back to the free space), adds their bytes to `bytes` and
/// their pages to `batch`; returns how many it took.
fn take_areas(
    ioas: &mut Ioas,
    range: IovaRange,
    left: &mut Left,
    batch: &mut [u64; UNMAP_BATCH],
    bytes: &mut u64,
) -> usize {
    let mut taken = 0;
    while taken < UNMAP_BATCH && left.count > 0 {
        let start = match left.next.take() {
            Some(start) => start,
            None => match ioas.areas.range(range.start..=range.last).next() {
                Some((&start, _)) => start,
                None => break,
            },
        };
        let Some(area) = ioas.areas.remove(&start) else {
            break;
        };
        ioas.space.release(IovaRange {
            start,
            last: area.last,
        });
        *bytes = bytes.wrapping_add(area.last - start + 1);
        batch[taken] = area.pages;
        taken += 1;
        left.count -= 1;
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResvOwner;

    fn r(start: u64, last: u64) -> IovaRange {
        IovaRange { start, last }
    }

    fn ioas_with(areas: &[(u64, u64, bool)]) -> Ioas {
        let mut ioas = Ioas::new(Default::default());
        for &(start, last, filling) in areas {
            let area = Area {
                last,
                pages: 0,
                offset: 0,
                prot: Prot {
                    read: true,
                    write: true,
                },
                filling,
            };
            ioas.areas.insert(start, area);
        }
        ioas
    }

    #[test]
    fn an_unmap_is_checked_in_one_pass_with_cuts_before_a_fill() {
        let ioas = ioas_with(&[(0x1000, 0x2fff, false), (0x3000, 0x3fff, true)]);
        let scan = |start, last, all| {
            scan_unmap(&ioas, r(start, last), all).map(|scan| (scan.count, scan.first))
        };
        assert_eq!(scan(0x1000, 0x2fff, false), Ok((1, 0x1000)));
        // Either end inside an area, or nothing there: ENOENT (Linux
        // iopt_unmap_iova_range), even where a filling area is in range.
        assert_eq!(scan(0x2000, 0x3fff, false), Err(Errno::ENOENT));
        assert_eq!(scan(0x1000, 0x1fff, false), Err(Errno::ENOENT));
        assert_eq!(scan(0x5000, 0x5fff, false), Err(Errno::ENOENT));
        assert_eq!(scan(0x5000, 0x5fff, true).map(|s| s.0), Ok(0));
        // Whole areas, one of them filling: EBUSY.
        assert_eq!(scan(0x1000, 0x3fff, false), Err(Errno::EBUSY));
        assert_eq!(scan(0, u64::MAX, true), Err(Errno::EBUSY));
        let ioas = ioas_with(&[(0x1000, 0x2fff, false), (0x8000, 0x8fff, false)]);
        let all = scan_unmap(&ioas, IovaRange::FULL, true).map(|s| (s.count, s.first));
        assert_eq!(all, Ok((2, 0x1000)));
    }

    #[test]
    fn usable_ranges_subtract_reserved_from_allowed() {
        let resv = [Reservation {
            range: r(0xfee0_0000, 0xfeef_ffff),
            owner: ResvOwner::Device(1),
        }];
        assert_eq!(
            usable_ranges(&[], &resv),
            [r(0, 0xfedf_ffff), r(0xfef0_0000, u64::MAX)]
        );
        assert_eq!(
            usable_ranges(&[r(0x1000, 0xfee0_0fff)], &resv),
            [r(0x1000, 0xfedf_ffff)]
        );
    }

    #[test]
    fn automatic_alignment_rounds_up_capped_by_the_address() {
        // Linux `iopt_alloc_iova`: 3 pages from an unaligned-enough address
        // are aligned to 4 pages, not 2.
        assert_eq!(automatic_alignment(0x3000, 0, 0x1000), Ok(0x4000));
        assert_eq!(automatic_alignment(0x1000, 0, 0x1000), Ok(0x1000));
        assert_eq!(
            automatic_alignment(0x20_0000, 0x4020_0000, 0x1000),
            Ok(0x20_0000)
        );
        // The user address's own alignment caps it.
        assert_eq!(
            automatic_alignment(0x20_0000, 0x4000_3000, 0x1000),
            Ok(0x1000)
        );
        // Below the IOAS alignment is refused, as Linux.
        assert_eq!(
            automatic_alignment(0x1_0000, 0x4000_3000, 0x1_0000),
            Err(Errno::EINVAL)
        );
    }
}
