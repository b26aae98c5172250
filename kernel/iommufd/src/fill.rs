//! Filling an IOAS's domains, and emptying them: the page-table writes and
//! IOTLB flushes of `IOAS_MAP` and `IOAS_UNMAP`, which are most of their time.
//!
//! They reach the units one of two ways ([`Reach`]): exclusively, under the
//! caller's lock (`&mut U`, every unit), or through [`Tickets`] beside other
//! CPUs' fills with the caller's lock dropped (`&U` and the units' shared
//! calls, where [`IommuUnit::shares_mapping`]). The second is what lets
//! several CPUs map and unmap at once: the core sets the IOVA range aside
//! under the lock (claimed in the IOAS's space and marked as filling, or
//! taken out of the area tree), hands out a [`PendingMap`] or
//! [`PendingUnmap`] to run without it, and finishes the bookkeeping under
//! the lock again (Linux `iopt_map_pages`: areas reserved under
//! `iova_rwsem`, filled under `domains_rwsem` for read).

use abi::Errno;
use alloc::sync::Arc;
use alloc::vec::Vec;
use iommu::{DomainHandle, Gather, IommuError, IommuUnit, Prot, UnitId};

use crate::units::{FillTicket, Units};
use crate::{Area, ObjId, OwnerId, PhysRun, errno, for_each_piece, merge_gather};

/// A run of an area: `len` bytes at `iova` backed by `pages` from `offset`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Piece {
    pub iova: u64,
    pub len: u64,
    pub pages: u64,
    pub offset: u64,
}

/// How a fill reaches the units.
pub(crate) trait Reach {
    /// The page sizes of `unit`'s domains.
    fn page_sizes(&self, unit: UnitId) -> u64;
    fn map(
        &mut self,
        unit: UnitId,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, IommuError>;
    fn unmap(
        &mut self,
        unit: UnitId,
        domain: DomainHandle,
        iova: u64,
        len: u64,
    ) -> Result<Gather, IommuError>;
    fn flush(
        &mut self,
        unit: UnitId,
        domain: DomainHandle,
        gather: &Gather,
    ) -> Result<(), IommuError>;
}

/// Exclusively, under the caller's lock.
impl<U: IommuUnit> Reach for Units<U> {
    fn page_sizes(&self, unit: UnitId) -> u64 {
        self[unit.0 as usize].info().page_sizes
    }

    fn map(
        &mut self,
        unit: UnitId,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, IommuError> {
        self[unit.0 as usize].map(domain, iova, phys, len, prot)
    }

    fn unmap(
        &mut self,
        unit: UnitId,
        domain: DomainHandle,
        iova: u64,
        len: u64,
    ) -> Result<Gather, IommuError> {
        self[unit.0 as usize].unmap(domain, iova, len)
    }

    fn flush(
        &mut self,
        unit: UnitId,
        domain: DomainHandle,
        gather: &Gather,
    ) -> Result<(), IommuError> {
        self[unit.0 as usize].flush(domain, gather)
    }
}

/// The units one fill may use through `&U`, beside other CPUs' fills.
///
/// Made only by the core, for IOVA ranges it has set aside for this one
/// fill: claimed in the IOAS's space and in no other operation's hands, so
/// that concurrent calls on one domain never touch the same IOVA (the
/// shared calls' contract, `IommuUnit::map_shared`).
pub(crate) struct Tickets<U> {
    held: Vec<(UnitId, FillTicket<U>)>,
}

impl<U: IommuUnit> Tickets<U> {
    /// Tickets on every unit of `domains`, if each shares its mapping
    /// calls; `None` (the fill runs exclusively) otherwise.
    pub(crate) fn take(units: &mut Units<U>, domains: &[(UnitId, DomainHandle)]) -> Option<Self> {
        let mut held: Vec<(UnitId, FillTicket<U>)> = Vec::new();
        for &(unit, _) in domains {
            if held.iter().any(|(id, _)| *id == unit) {
                continue;
            }
            if !units[unit.0 as usize].shares_mapping() {
                return None;
            }
            held.push((unit, units.ticket(unit.0 as usize)));
        }
        Some(Self { held })
    }

    fn unit(&self, unit: UnitId) -> &U {
        // Every unit of the fill's domains has a ticket (`take`).
        let (_, ticket) = self
            .held
            .iter()
            .find(|(id, _)| *id == unit)
            .expect("a ticket for every unit of the fill");
        ticket
    }
}

impl<U: IommuUnit> Reach for Tickets<U> {
    fn page_sizes(&self, unit: UnitId) -> u64 {
        self.unit(unit).info().page_sizes
    }

    fn map(
        &mut self,
        unit: UnitId,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<Gather, IommuError> {
        // SAFETY: the range is this fill's alone (see `Tickets`).
        unsafe { self.unit(unit).map_shared(domain, iova, phys, len, prot) }
    }

    fn unmap(
        &mut self,
        unit: UnitId,
        domain: DomainHandle,
        iova: u64,
        len: u64,
    ) -> Result<Gather, IommuError> {
        // SAFETY: as for `map`.
        unsafe { self.unit(unit).unmap_shared(domain, iova, len) }
    }

    fn flush(
        &mut self,
        unit: UnitId,
        domain: DomainHandle,
        gather: &Gather,
    ) -> Result<(), IommuError> {
        self.unit(unit).flush_shared(domain, gather)
    }
}

/// Maps `len` bytes at `iova` of `domain` to the pinned `runs` from `offset`,
/// in steps of at most `chunk` bytes; all or nothing (what it mapped before
/// an error is unmapped and flushed; `Timeout` if that failed, when the
/// pages must never be released).
#[allow(clippy::too_many_arguments)]
pub(crate) fn map_pieces(
    reach: &mut impl Reach,
    unit: UnitId,
    domain: DomainHandle,
    iova: u64,
    runs: &[PhysRun],
    offset: u64,
    len: u64,
    prot: Prot,
    chunk: u64,
) -> Result<Gather, IommuError> {
    let mut gather = Gather::default();
    let mut done = 0u64;
    let result = for_each_piece(runs, offset, len, |phys, piece| {
        let mut at = 0;
        while at < piece {
            let step = chunk.min(piece - at);
            let g = reach.map(unit, domain, iova + done, phys + at, step, prot)?;
            merge_gather(&mut gather, &g);
            done += step;
            at += step;
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok(gather),
        Err(e) => {
            if done != 0 {
                match reach.unmap(unit, domain, iova, done) {
                    Ok(g) => merge_gather(&mut gather, &g),
                    // Still mapped: the caller must not release these pages.
                    Err(_) => return Err(IommuError::Timeout),
                }
            }
            if !gather.is_empty() && reach.flush(unit, domain, &gather).is_err() {
                // The caller must not release these pages: report the flush failure.
                return Err(IommuError::Timeout);
            }
            Err(e)
        }
    }
}

/// Maps `pieces` into every domain, all or nothing; `runs_of` gives a
/// piece's pinned runs and where its pages' byte 0 lies in them. On error
/// the second value tells whether the rollback flushes completed (if not,
/// the pages behind the pieces must never be released).
pub(crate) fn map_into_domains<'r>(
    reach: &mut impl Reach,
    runs_of: impl Fn(&Piece) -> (&'r [PhysRun], u64),
    domains: &[(UnitId, DomainHandle)],
    pieces: &[Piece],
    prot: Prot,
    huge_pages: bool,
) -> Result<(), (Errno, bool)> {
    for (done_domains, &(unit, domain)) in domains.iter().enumerate() {
        let chunk = if huge_pages {
            u64::MAX
        } else {
            // The domain's smallest page (Linux `batch_iommu_map_small`).
            1 << reach.page_sizes(unit).trailing_zeros()
        };
        let mut gather = Gather::default();
        let mut failed = None;
        for (i, p) in pieces.iter().enumerate() {
            let (runs, head) = runs_of(p);
            match map_pieces(
                reach,
                unit,
                domain,
                p.iova,
                runs,
                head + p.offset,
                p.len,
                prot,
                chunk,
            ) {
                Ok(g) => merge_gather(&mut gather, &g),
                Err(e) => {
                    failed = Some((i, e));
                    break;
                }
            }
        }
        if failed.is_none()
            && !gather.is_empty()
            && let Err(e) = reach.flush(unit, domain, &gather)
        {
            failed = Some((pieces.len(), e));
        }
        if let Some((mapped, e)) = failed {
            let mut clean = e != IommuError::Timeout;
            clean &= unmap_from_domain(reach, unit, domain, &pieces[..mapped]);
            for &(unit, domain) in &domains[..done_domains] {
                clean &= unmap_from_domain(reach, unit, domain, pieces);
            }
            return Err((errno(e), clean));
        }
    }
    Ok(())
}

/// Unmaps whole pieces from one domain and flushes; false if a piece stayed
/// mapped or the flush failed.
pub(crate) fn unmap_from_domain(
    reach: &mut impl Reach,
    unit: UnitId,
    domain: DomainHandle,
    pieces: &[Piece],
) -> bool {
    let mut gather = Gather::default();
    let mut unmapped = true;
    for p in pieces {
        match reach.unmap(unit, domain, p.iova, p.len) {
            Ok(g) => merge_gather(&mut gather, &g),
            Err(_) => unmapped = false,
        }
    }
    let flushed = gather.is_empty() || reach.flush(unit, domain, &gather).is_ok();
    unmapped && flushed
}

/// Unmaps whole areas from every domain, one flush per domain; false if
/// an area stayed mapped or a flush failed (then no page behind them may
/// be released).
pub(crate) fn unmap_areas<'a>(
    reach: &mut impl Reach,
    domains: &[(UnitId, DomainHandle)],
    areas: impl Iterator<Item = (u64, &'a Area)> + Clone,
) -> bool {
    let mut flushed = true;
    for &(unit, domain) in domains {
        let mut gather = Gather::default();
        for (start, area) in areas.clone() {
            // An area the unit could not unmap is still mapped: its pages
            // must never be released.
            match reach.unmap(unit, domain, start, area.last - start + 1) {
                Ok(g) => merge_gather(&mut gather, &g),
                Err(_) => flushed = false,
            }
        }
        if !gather.is_empty() {
            flushed &= reach.flush(unit, domain, &gather).is_ok();
        }
    }
    flushed
}

/// An `IOAS_MAP` whose IOVA range is set aside (the area is in the tree,
/// marked as filling) and whose domains are still to be filled: [`Self::run`]
/// without the caller's lock, then `Iommufd::ioas_map_finish` under it.
pub struct PendingMap<U> {
    pub(crate) owner: OwnerId,
    pub(crate) ioas: ObjId,
    pub(crate) iova: u64,
    pub(crate) len: u64,
    pub(crate) pages: u64,
    pub(crate) prot: Prot,
    /// The domains the fill maps into (others, attached meanwhile, get the
    /// area by replay); `None` when the map completed under the lock.
    pub(crate) domains: Option<Arc<[(UnitId, DomainHandle)]>>,
    /// What still has to run; `None` once it ran (or ran under the lock).
    pub(crate) fill: Option<MapFill<U>>,
    pub(crate) outcome: Result<(), (Errno, bool)>,
    /// The map completed under the lock already (units that do not share
    /// their mapping calls): its IOVA.
    pub(crate) finished: Option<u64>,
}

/// What a pending map's fill needs without the core.
pub(crate) struct MapFill<U> {
    pub(crate) tickets: Tickets<U>,
    /// The pinned pages (a copy: the core's table stays under the lock).
    pub(crate) runs: Vec<PhysRun>,
    /// Where the user range's byte 0 lies in `runs`.
    pub(crate) head: u64,
    pub(crate) huge_pages: bool,
}

impl<U: IommuUnit> PendingMap<U> {
    /// A map that completed under the lock at `iova`.
    pub(crate) fn done(owner: OwnerId, ioas: ObjId, iova: u64, len: u64, prot: Prot) -> Self {
        Self {
            owner,
            ioas,
            iova,
            len,
            pages: 0,
            prot,
            domains: None,
            fill: None,
            outcome: Ok(()),
            finished: Some(iova),
        }
    }

    /// Fills the domains; needs no lock. Gives the tickets back.
    pub fn run(&mut self) {
        let Some(mut fill) = self.fill.take() else {
            return;
        };
        let piece = Piece {
            iova: self.iova,
            len: self.len,
            pages: self.pages,
            offset: 0,
        };
        let (runs, head) = (&fill.runs[..], fill.head);
        self.outcome = map_into_domains(
            &mut fill.tickets,
            |_| (runs, head),
            self.domains.as_deref().unwrap_or(&[]),
            &[piece],
            self.prot,
            fill.huge_pages,
        );
    }
}

/// An `IOAS_UNMAP` whose areas are out of the tree (their IOVAs still
/// claimed, so nobody maps there) and still to be unmapped and flushed:
/// [`Self::run`] without the caller's lock, then `Iommufd::ioas_unmap_finish`.
pub struct PendingUnmap<U> {
    pub(crate) owner: OwnerId,
    pub(crate) ioas: ObjId,
    pub(crate) areas: Vec<(u64, Area)>,
    /// The domains to unmap from, while that still has to run.
    pub(crate) domains: Option<Arc<[(UnitId, DomainHandle)]>>,
    /// Tickets while the unmap still has to run.
    pub(crate) tickets: Option<Tickets<U>>,
    /// Every domain unmapped every area and flushed.
    pub(crate) flushed: bool,
    /// No domain of the IOAS was lost: the pages may be released.
    pub(crate) releasable: bool,
    /// The unmap completed under the lock already (units that do not share
    /// their mapping calls): its result.
    pub(crate) finished: Option<Result<u64, Errno>>,
}

impl<U: IommuUnit> PendingUnmap<U> {
    /// An unmap that completed under the lock with `result`.
    pub(crate) fn done(owner: OwnerId, ioas: ObjId, result: Result<u64, Errno>) -> Self {
        Self {
            owner,
            ioas,
            areas: Vec::new(),
            domains: None,
            tickets: None,
            flushed: true,
            releasable: true,
            finished: Some(result),
        }
    }

    /// Unmaps and flushes; needs no lock. Gives the tickets back.
    pub fn run(&mut self) {
        if let Some(mut tickets) = self.tickets.take() {
            let domains = self.domains.as_deref().unwrap_or(&[]);
            let areas = self.areas.iter().map(|(start, area)| (*start, area));
            self.flushed = unmap_areas(&mut tickets, domains, areas);
        }
    }
}
