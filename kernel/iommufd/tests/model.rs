//! Model-based property test: random operation sequences on one IOAS with one
//! device, against a plain reference model of the IOAS semantics (areas as a
//! sorted map, usable space computed by brute force). After every step the core's
//! areas, free holes, pins and the unit's page table must match the model.

use abi::Errno;
use iommu::{Access, DeviceId, IovaRange, Prot, ReservedKind, ReservedRegion, UnitId, UnitInfo};
use iommufd::OwnerId;
use iommufd::testing::{SoftConfig, SoftCore, soft_core};
use proptest::prelude::*;
use std::collections::BTreeMap;

const O: OwnerId = OwnerId(1);
const DEV: DeviceId = DeviceId(7);
const PAGE: u64 = 0x1000;
const APERTURE_LAST: u64 = 0x7f_ffff;
const RESV: IovaRange = IovaRange {
    start: 0x40_0000,
    last: 0x40_ffff,
};
const RW: Prot = Prot {
    read: true,
    write: true,
};

fn config() -> SoftConfig {
    let mut c = SoftConfig::vtd_like();
    c.info = UnitInfo {
        aperture: IovaRange {
            start: 0,
            last: APERTURE_LAST,
        },
        ..c.info
    };
    c.reserved = vec![ReservedRegion {
        range: RESV,
        kind: ReservedKind::Msi,
    }];
    c
}

#[derive(Clone, Debug)]
enum Op {
    MapFixed {
        page: u64,
        pages: u64,
    },
    /// A fixed map of any length at any IOVA from any user address:
    /// byte granular with no domain attached, whole pages with one.
    MapBytes {
        iova: u64,
        va_offset: u64,
        len: u64,
    },
    MapAuto {
        pages: u64,
    },
    Unmap {
        page: u64,
        pages: u64,
    },
    UnmapAll,
    Allow {
        ranges: Vec<(u64, u64)>,
    },
    Attach,
    Detach,
    /// Copies a range of the first IOAS to an automatic IOVA of the second.
    Copy {
        page: u64,
        pages: u64,
    },
    /// Unmaps everything of the second IOAS.
    UnmapAll2,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..2200, 1u64..9).prop_map(|(page, pages)| Op::MapFixed { page, pages }),
        // Each of the IOVA, the length and the user address on a page
        // boundary or off it, half the time each, so that every mix occurs.
        2 => (
            (0u64..2200, proptest::option::of(1u64..PAGE)),
            (1u64..3, proptest::option::of(1u64..PAGE)),
            proptest::option::of(1u64..PAGE),
        )
            .prop_map(|((page, iova_off), (pages, len_cut), va_offset)| Op::MapBytes {
                iova: page * PAGE + iova_off.unwrap_or(0),
                va_offset: va_offset.unwrap_or(0),
                len: pages * PAGE - len_cut.unwrap_or(0),
            }),
        4 => (1u64..40).prop_map(|pages| Op::MapAuto { pages }),
        3 => (0u64..2200, 1u64..24).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        1 => Just(Op::UnmapAll),
        1 => proptest::collection::vec((0u64..2200, 0u64..300), 0..3)
            .prop_map(|ranges| Op::Allow { ranges }),
        2 => Just(Op::Attach),
        1 => Just(Op::Detach),
        3 => (0u64..2200, 1u64..16).prop_map(|(page, pages)| Op::Copy { page, pages }),
        1 => Just(Op::UnmapAll2),
    ]
}

/// The reference model: what the IOAS must look like.
#[derive(Default)]
struct Model {
    areas: BTreeMap<u64, u64>,
    /// The user VA each area maps.
    va: BTreeMap<u64, u64>,
    allowed: Vec<IovaRange>,
    attached: bool,
    /// The pin behind each area of the first IOAS.
    pin_of: BTreeMap<u64, u64>,
    next_pin: u64,
    /// Areas of the second IOAS: iova → (length, pin).
    copies: BTreeMap<u64, (u64, u64)>,
}

impl Model {
    fn reserved(&self) -> Vec<IovaRange> {
        if !self.attached {
            return vec![];
        }
        vec![
            RESV,
            IovaRange {
                start: APERTURE_LAST + 1,
                last: u64::MAX,
            },
        ]
    }

    /// Distinct pins some area still uses.
    fn live_pins(&self) -> usize {
        let mut pins: Vec<u64> = self.pin_of.values().copied().collect();
        pins.extend(self.copies.values().map(|&(_, p)| p));
        pins.sort_unstable();
        pins.dedup();
        pins.len()
    }

    fn new_pin(&mut self, iova: u64) {
        self.pin_of.insert(iova, self.next_pin);
        self.next_pin += 1;
    }

    fn overlaps_area(&self, r: IovaRange) -> bool {
        self.areas
            .iter()
            .any(|(&s, &l)| s <= r.last && r.start <= s + (l - 1))
    }

    /// Usable space by brute force over range boundaries.
    fn usable(&self) -> Vec<IovaRange> {
        let base = if self.allowed.is_empty() {
            vec![IovaRange::FULL]
        } else {
            self.allowed.clone()
        };
        subtract(base, &self.reserved())
    }

    /// What IOVA_RANGES reports: everything but the reserved ranges.
    fn reported(&self) -> Vec<IovaRange> {
        subtract(vec![IovaRange::FULL], &self.reserved())
    }

    fn holes(&self) -> Vec<IovaRange> {
        let areas: Vec<IovaRange> = self
            .areas
            .iter()
            .map(|(&s, &l)| IovaRange {
                start: s,
                last: s + (l - 1),
            })
            .collect();
        subtract(self.usable(), &areas)
    }

    fn fits(&self, len: u64, align: u64) -> bool {
        self.holes().iter().any(|h| {
            let at = h.start.max(1).div_ceil(align) * align;
            at.checked_add(len - 1).is_some_and(|end| end <= h.last) && at >= h.start
        })
    }
}

/// `base` minus `cut`, merged and sorted.
fn subtract(base: Vec<IovaRange>, cut: &[IovaRange]) -> Vec<IovaRange> {
    let mut out = base;
    for c in cut {
        let mut next = vec![];
        for r in out {
            if !r.intersects(c) {
                next.push(r);
                continue;
            }
            if r.start < c.start {
                next.push(IovaRange {
                    start: r.start,
                    last: c.start - 1,
                });
            }
            if c.last < r.last {
                next.push(IovaRange {
                    start: c.last + 1,
                    last: r.last,
                });
            }
        }
        out = next;
    }
    out.sort();
    let mut merged: Vec<IovaRange> = vec![];
    for r in out {
        match merged.last_mut() {
            Some(p) if p.last.checked_add(1) == Some(r.start) => p.last = r.last,
            _ => merged.push(r),
        }
    }
    merged
}

/// Linux `iopt_alloc_iova`: the length rounded up to a power of two, capped
/// by the alignment of the address the mapping starts from.
fn natural_raw(len: u64, addr: u64) -> u64 {
    let rounded = len.next_power_of_two();
    match addr {
        0 => rounded,
        _ => rounded.min(1 << addr.trailing_zeros()),
    }
}

/// [`natural_raw`] for the page-multiple maps of the model (at least a page).
fn natural(len: u64, addr: u64) -> u64 {
    natural_raw(len, addr).max(PAGE)
}

fn step(fd: &mut SoftCore, model: &mut Model, (ioas, ioas2): (u32, u32), dev: u32, op: &Op) {
    match op {
        Op::MapFixed { page, pages } => {
            let (iova, len) = (page * PAGE, pages * PAGE);
            let range = IovaRange::from_len(iova, len).unwrap();
            let expect = if model.reserved().iter().any(|r| r.intersects(&range)) {
                Err(Errno::EINVAL)
            } else if model.overlaps_area(range) {
                Err(Errno::EEXIST)
            } else {
                Ok(iova)
            };
            assert_eq!(
                fd.ioas_map(O, ioas, page * PAGE, len, Some(iova), RW),
                expect
            );
            if expect.is_ok() {
                model.areas.insert(iova, len);
                model.va.insert(iova, page * PAGE);
                model.new_pin(iova);
            }
        }
        Op::MapBytes {
            iova,
            va_offset,
            len,
        } => {
            let va = 0x200_0000 + va_offset;
            let range = IovaRange::from_len(*iova, *len).unwrap();
            let whole_pages = [*iova, *len, va].iter().all(|v| v % PAGE == 0);
            let misaligned = model.attached && !whole_pages;
            let reserved = model.reserved().iter().any(|r| r.intersects(&range));
            let expect = if misaligned || reserved {
                Err(Errno::EINVAL)
            } else if model.overlaps_area(range) {
                Err(Errno::EEXIST)
            } else {
                Ok(*iova)
            };
            assert_eq!(fd.ioas_map(O, ioas, va, *len, Some(*iova), RW), expect);
            if expect.is_ok() {
                model.areas.insert(*iova, *len);
                model.va.insert(*iova, va);
                model.new_pin(*iova);
            }
        }
        Op::MapAuto { pages } => {
            let len = pages * PAGE;
            let align = natural(len, 0x100_0000);
            let fits = model.fits(len, align);
            match fd.ioas_map(O, ioas, 0x100_0000, len, None, RW) {
                Ok(iova) => {
                    assert!(fits);
                    assert_ne!(iova, 0);
                    assert_eq!(iova % align, 0, "not naturally aligned");
                    let range = IovaRange::from_len(iova, len).unwrap();
                    assert!(
                        model.holes().iter().any(|h| h.contains(&range)),
                        "auto IOVA outside the free usable space"
                    );
                    model.areas.insert(iova, len);
                    model.va.insert(iova, 0x100_0000);
                    model.new_pin(iova);
                }
                Err(e) => {
                    assert_eq!(e, Errno::ENOSPC);
                    assert!(!fits, "ENOSPC although a hole fits");
                }
            }
        }
        Op::Unmap { page, pages } => {
            let range = IovaRange::from_len(page * PAGE, pages * PAGE).unwrap();
            let inside: Vec<(u64, u64)> = model
                .areas
                .iter()
                .filter(|&(&s, &l)| s <= range.last && range.start <= s + (l - 1))
                .map(|(&s, &l)| (s, l))
                .collect();
            let cut = inside
                .iter()
                .any(|&(s, l)| s < range.start || s + (l - 1) > range.last);
            let expect = if inside.is_empty() || cut {
                Err(Errno::ENOENT)
            } else {
                Ok(inside.iter().map(|&(_, l)| l).sum())
            };
            assert_eq!(fd.ioas_unmap(O, ioas, range.start, pages * PAGE), expect);
            if expect.is_ok() {
                for (s, _) in inside {
                    model.areas.remove(&s);
                    model.va.remove(&s);
                    model.pin_of.remove(&s);
                }
            }
        }
        Op::UnmapAll => {
            let total: u64 = model.areas.values().sum();
            assert_eq!(fd.ioas_unmap(O, ioas, 0, u64::MAX), Ok(total));
            model.areas.clear();
            model.va.clear();
            model.pin_of.clear();
        }
        Op::Allow { ranges } => {
            let ranges: Vec<IovaRange> = ranges
                .iter()
                .map(|&(p, n)| IovaRange {
                    start: p * PAGE,
                    last: (p + n) * PAGE + (PAGE - 1),
                })
                .collect();
            let mut sorted = ranges.clone();
            sorted.sort();
            let expect = if sorted.windows(2).any(|w| w[0].last >= w[1].start) {
                Err(Errno::EINVAL)
            } else if sorted
                .iter()
                .any(|r| model.reserved().iter().any(|x| x.intersects(r)))
            {
                Err(Errno::EADDRINUSE)
            } else {
                Ok(())
            };
            assert_eq!(fd.ioas_allow_iovas(O, ioas, &ranges), expect);
            if expect.is_ok() {
                model.allowed = sorted;
            }
        }
        Op::Attach => {
            let conflict = [
                RESV,
                IovaRange {
                    start: APERTURE_LAST + 1,
                    last: u64::MAX,
                },
            ]
            .iter()
            .any(|r| model.overlaps_area(*r) || model.allowed.iter().any(|a| a.intersects(r)))
                // An area the domain's 4 KiB pages cannot map keeps it out.
                || model
                    .areas
                    .iter()
                    .any(|(&s, &l)| [s, l, model.va[&s]].iter().any(|v| v % PAGE != 0));
            let result = fd.device_attach(O, dev, ioas);
            if model.attached {
                assert_eq!(result, Err(Errno::EBUSY));
            } else if conflict {
                assert_eq!(result, Err(Errno::EADDRINUSE));
            } else {
                assert!(result.is_ok());
                model.attached = true;
            }
        }
        Op::Copy { page, pages } => {
            let range = IovaRange::from_len(page * PAGE, pages * PAGE).unwrap();
            // The source pieces, which must cover the range without a hole.
            let mut pieces = vec![];
            let mut cursor = range.start;
            for (&s, &l) in &model.areas {
                let last = s + (l - 1);
                if last < cursor || s > range.last {
                    continue;
                }
                if s > cursor {
                    break;
                }
                let end = last.min(range.last);
                pieces.push((cursor - range.start, end - cursor + 1, model.pin_of[&s]));
                cursor = end + 1;
                if end == range.last {
                    break;
                }
            }
            let covered = cursor == range.last + 1;
            // An automatic IOVA follows the first byte's user address.
            let first_user = model
                .areas
                .range(..=range.start)
                .next_back()
                .map(|(&s, _)| model.va[&s] + (range.start - s));
            match fd.ioas_copy(O, ioas, range.start, pages * PAGE, ioas2, None, RW) {
                Ok(dst) => {
                    assert!(covered, "copy of a range with a hole succeeded");
                    assert_ne!(dst, 0);
                    let user = first_user.expect("a covered range has a first area");
                    let align = natural_raw(pages * PAGE, user);
                    if align >= PAGE {
                        assert_eq!(dst % align, 0, "not naturally aligned");
                    } else {
                        assert_eq!(dst % PAGE, user % PAGE, "the user's page offset");
                    }
                    for (offset, len, pin) in pieces {
                        let at = dst + offset;
                        assert!(
                            model
                                .copies
                                .range(..at + len)
                                .next_back()
                                .is_none_or(|(&s, &(l, _))| s + l <= at),
                            "copy overlaps an existing area"
                        );
                        model.copies.insert(at, (len, pin));
                    }
                }
                Err(e) => {
                    assert!(!covered, "copy failed: {e:?}");
                    assert_eq!(e, Errno::ENOENT);
                }
            }
        }
        Op::UnmapAll2 => {
            let total: u64 = model.copies.values().map(|&(l, _)| l).sum();
            assert_eq!(fd.ioas_unmap(O, ioas2, 0, u64::MAX), Ok(total));
            model.copies.clear();
        }
        Op::Detach => {
            let result = fd.device_detach(O, dev);
            if model.attached {
                assert_eq!(result, Ok(()));
                model.attached = false;
            } else {
                assert_eq!(result, Err(Errno::EINVAL));
            }
        }
    }
}

fn check(fd: &mut SoftCore, model: &Model, (ioas, ioas2): (u32, u32)) {
    let copies: Vec<(u64, u64)> = model.copies.iter().map(|(&s, &(l, _))| (s, l)).collect();
    assert_eq!(fd.ioas_areas(O, ioas2).unwrap(), copies);
    let areas: Vec<(u64, u64)> = model.areas.iter().map(|(&s, &l)| (s, l)).collect();
    assert_eq!(fd.ioas_areas(O, ioas).unwrap(), areas);
    // The owner's total, kept as areas come and go, is what the trees hold.
    assert_eq!(fd.area_count(O), areas.len() + copies.len());
    assert_eq!(fd.ioas_holes(O, ioas).unwrap(), model.holes());
    assert_eq!(
        fd.ioas_iova_ranges(O, ioas).unwrap().ranges,
        model.reported()
    );
    assert_eq!(fd.pinned_ranges(), model.live_pins());
    let m = fd.services();
    assert_eq!((m.pins - m.unpins) as usize, model.live_pins());
    let unit = &fd.units()[0];
    assert_eq!(unit.stale_entries(), 0);
    assert_eq!(unit.stale_uses(), 0);
    assert_eq!(fd.services().violations, 0);
    match unit.device_domain(DEV) {
        Some(domain) => {
            assert!(model.attached);
            for (&s, &l) in &model.areas {
                let va = model.va[&s];
                let first = unit.lookup(domain, s).map(|(pa, _)| pa);
                let last = unit.lookup(domain, s + (l - PAGE)).map(|(pa, _)| pa);
                assert_eq!(first, Some(fd.services().phys_of(O, va)), "area {s:#x}");
                assert_eq!(last, Some(fd.services().phys_of(O, va + (l - PAGE))));
            }
        }
        None => assert!(!model.attached),
    }
    // Translations work end to end through the IOTLB.
    if model.attached
        && let Some((&s, _)) = model.areas.iter().next()
    {
        let unit = fd.unit_mut(UnitId(0)).unwrap();
        assert!(unit.dma(DEV, s, Access::Read).is_some());
    }
}

/// 64 cases by default (CI budget); `PROPTEST_CASES` raises it for soak runs.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn ioas_matches_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        let (mut fd, _) = soft_core(&[config()]);
        let ioas = fd.ioas_alloc(O).unwrap();
        let ioas2 = fd.ioas_alloc(O).unwrap();
        let dev = fd.bind_device(O, UnitId(0), DEV).unwrap();
        let mut model = Model::default();
        for op in &ops {
            step(&mut fd, &mut model, (ioas, ioas2), dev, op);
            check(&mut fd, &model, (ioas, ioas2));
        }
        fd.teardown(O);
        prop_assert_eq!(fd.services().pinned_ranges(), 0);
        prop_assert_eq!(fd.units()[0].domain_count(), 0);
        prop_assert_eq!(fd.units()[0].table_pages(), 0);
        prop_assert_eq!(fd.services().violations, 0);
    }
}
