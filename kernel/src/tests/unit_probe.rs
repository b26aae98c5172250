//! The platform's IOMMU as the cross-vendor tests see it (`dma_matrix.rs`,
//! `robustness.rs`): the unit behind the `iommu::IommuUnit` contract, and a
//! small per-vendor [`Probe`] for what the contract does not say (how the
//! unit names a device, which fault a DMA that finds no leaf reports, where
//! the unit's own structures are, how to ration its table memory). A
//! [`Scene`] holds what one scenario takes (domains, frames, two edus) and
//! gives all of it back.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use edu::Direction;
use iommu::{
    Access, DeviceId, DomainHandle, DomainKind, FaultReason, FaultRecord, IommuError, IommuUnit,
    Prot,
};

use crate::devices::{self, PciDevice};
use crate::memory::frames::{self, Frames};
use crate::platform::Platform;
use crate::testing::{Outcome, TestResult};

// ---- the per-vendor probe -----------------------------------------------------

/// Runs a closure on the platform's unit behind the contract.
pub(super) type WithUnit = fn(&Platform, &mut dyn FnMut(&mut dyn IommuUnit)) -> Result<(), String>;

/// Where a unit's structures are (see [`Probe::structures`]).
pub(super) type Structures =
    fn(&Platform, &[DeviceId], &[DomainHandle]) -> Result<Vec<(&'static str, u64)>, String>;

/// The unit's walk of a domain's table for an IOVA, level by level (the
/// driver's `walk_mapping`).
pub(super) type Walk =
    fn(&Platform, DomainHandle, u64, &mut dyn FnMut(&io_page_table::WalkStep)) -> Fallible;

/// A driver's `walk_mapping` answer (whether the domain has a table) as a
/// [`Walk`]'s.
fn walked(found: bool) -> Fallible {
    found.then_some(()).ok_or_else(|| "no table to walk".into())
}

/// What a scenario needs to know about a vendor that the contract does not say.
pub(super) struct Probe {
    pub vendor: &'static str,
    pub(super) with_unit: WithUnit,
    /// The unit's name for a PCI function (requester id, DeviceID, StreamID).
    pub(super) device_id: fn(&Platform, pci::Bdf) -> Option<DeviceId>,
    /// Whether the unit writes fault records at all (QEMU 10.0.2's AMD-Vi
    /// never writes its event log, docs/QEMU.md §2).
    pub(super) records_faults: fn(&Platform) -> bool,
    /// The contract's reason for a DMA that finds no leaf.
    pub(super) no_leaf_reason: fn(&Platform) -> FaultReason,
    /// Whether DMA from a device in no domain (or a blocking one) is
    /// reported: VT-d records "context not present", an SMMUv3 abort STE
    /// aborts silently (SMMUv3 §5.2 Config = 0b000).
    pub(super) blocked_reported: bool,
    /// Puts the unit in the state the matrix assumes (SMMUv3: 4 KiB granule).
    pub(super) prepare: fn(&Platform) -> Result<(), String>,
    /// The unit's own in-memory structures a device must never reach: the
    /// unit's tables and queues, the per-device entries of `devices`, the
    /// I/O page tables (and CDs) of `domains`. Only memory the hardware does
    /// not write by itself while faults are reported (an event log is left
    /// out: the blocked DMAs' own records land there).
    pub(super) structures: Structures,
    /// Where the unit takes table pages for domains created from now on
    /// (VT-d takes every structure from it: the unit is brought up afresh).
    pub(super) use_table_memory:
        fn(&Platform, &'static (dyn os_services::DmaMemory + Sync)) -> Result<(), String>,
    /// The walk the unit's hardware makes through a paging domain's table.
    pub(super) walk: Walk,
    /// Plays hung hardware: the unit stops processing its command or
    /// invalidation queue behind the driver's back (VT-d: QIE off; AMD-Vi:
    /// CmdBufEn off; SMMUv3: the queues off).
    pub(super) hang: fn(&Platform) -> Result<(), String>,
    /// The hardware works again; where the driver cannot notice by itself,
    /// its owner restarts it (SMMUv3 `Smmu::restart`; AMD-Vi's driver
    /// restarts its buffer on the timeout itself).
    pub(super) unhang: fn(&Platform) -> Result<(), String>,
}

/// The probe of the platform's IOMMU; `None` without one.
pub(super) fn probe(platform: &Platform) -> Option<&'static Probe> {
    match &platform.firmware {
        #[cfg(target_arch = "x86_64")]
        crate::platform::Firmware::Acpi(info) => {
            if info.dmar.is_some() {
                Some(&vendors::VTD)
            } else if info.ivrs.is_some() {
                Some(&vendors::AMDVI)
            } else {
                None
            }
        }
        #[cfg(target_arch = "aarch64")]
        crate::platform::Firmware::DeviceTree(tree) => {
            (!tree.smmus.is_empty()).then_some(&vendors::SMMUV3)
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vendors {
    use super::*;
    use crate::iommu::{amdvi, vtd};

    pub static VTD: Probe = Probe {
        vendor: "VT-d",
        with_unit: |platform, f| vtd::with_unit(platform, |unit| f(unit)),
        device_id: |platform, bdf| vtd::device_id(platform, bdf),
        records_faults: |_| true,
        // Legacy and second-stage tables report a missing leaf as missing
        // permission (VT-d 3.4 §7.1.3: R = W = 0); first stage has its own code.
        no_leaf_reason: |platform| {
            let first_stage = vtd::with_unit(platform, |unit| {
                unit.hardware.mode() == ::vtd::Mode::ScalableFirstStage
            });
            if first_stage == Ok(true) {
                FaultReason::NotPresent
            } else {
                FaultReason::Permission
            }
        },
        blocked_reported: true,
        prepare: |_| Ok(()),
        structures: |platform, _devices, domains| {
            vtd::with_unit(platform, |unit| {
                let mut found = unit.hardware.structure_pages();
                for &domain in domains {
                    let root = unit.domain_table_root(domain).ok_or("no table root")?;
                    found.push(("I/O page table", root));
                }
                Ok(found)
            })?
        },
        use_table_memory: |platform, memory| {
            let up = vtd::bring_up_again(platform, ::vtd::Options::default(), memory)?;
            up.then_some(())
                .ok_or_else(|| "no VT-d unit in the DMAR".into())
        },
        walk: |platform, domain, iova, visit| {
            walked(vtd::with_unit(platform, |unit| {
                unit.walk_mapping(domain, iova, visit)
            })?)
        },
        hang: |platform| {
            let queued = vtd::with_unit(platform, |unit| unit.hardware.uses_queued_invalidation())?;
            if !queued {
                return Err("the unit invalidates through registers".into());
            }
            let registers = super::super::robust_vtd::raw_registers(platform)?;
            super::super::robust_vtd::set_queue_enable(&registers, false)
        },
        unhang: |platform| {
            let registers = super::super::robust_vtd::raw_registers(platform)?;
            super::super::robust_vtd::set_queue_enable(&registers, true)
        },
    };

    pub static AMDVI: Probe = Probe {
        vendor: "AMD-Vi",
        with_unit: |platform, f| amdvi::with_unit(platform, |unit| f(unit)),
        device_id: |platform, bdf| amdvi::device_id(platform, bdf),
        records_faults: |platform| {
            static WRITES_ITS_LOG: spin::Once<bool> = spin::Once::new();
            *WRITES_ITS_LOG.call_once(|| {
                amdvi::with_unit(platform, |unit| unit.hardware.probe_event_log())
                    .is_ok_and(|probed| probed == Ok(true))
            })
        },
        no_leaf_reason: |_| FaultReason::NotPresent,
        blocked_reported: true,
        prepare: |_| Ok(()),
        structures: |platform, _devices, domains| {
            amdvi::with_unit(platform, |unit| {
                let mut found = alloc::vec![
                    ("device table", unit.hardware.device_table_phys()),
                    ("command buffer", unit.hardware.command_buffer_phys()),
                    ("completion-wait page", unit.hardware.completion_phys()),
                ];
                for &domain in domains {
                    let root = unit.page_table_root(domain).ok_or("no table root")?;
                    found.push(("I/O page table", root));
                }
                Ok(found)
            })?
        },
        use_table_memory: |platform, memory| {
            amdvi::with_unit(platform, |unit| {
                unit.set_table_memory(memory);
            })
        },
        walk: |platform, domain, iova, visit| {
            walked(amdvi::with_unit(platform, |unit| {
                unit.walk_mapping(domain, iova, visit)
            })?)
        },
        hang: |platform| {
            amdvi::with_unit(platform, |unit| {
                super::super::robust_amdvi::stall_command_buffer(unit)
            })
        },
        unhang: |_| Ok(()),
    };
}

#[cfg(target_arch = "aarch64")]
mod vendors {
    use super::*;
    use crate::iommu::smmuv3;

    pub static SMMUV3: Probe = Probe {
        vendor: "SMMUv3",
        with_unit: |platform, f| smmuv3::with_unit(platform, |unit| f(unit)),
        device_id: |platform, bdf| smmuv3::stream_id(platform, bdf).map(DeviceId),
        records_faults: |_| true,
        no_leaf_reason: |_| FaultReason::NotPresent,
        blocked_reported: false,
        prepare: |platform| {
            smmuv3::with_unit(platform, |unit| unit.set_granule(::smmuv3::Granule::K4))?
                .map_err(|err| format!("4 KiB granule: {err:?}"))
        },
        structures: |platform, devices, domains| {
            smmuv3::with_unit(platform, |unit| {
                let mut found = alloc::vec![("command queue", unit.hardware.command_queue_phys())];
                for device in devices {
                    let ste = unit.hardware.ste_phys(device.0).ok_or("no STE")?;
                    found.push(("stream table entry", ste));
                }
                for &domain in domains {
                    let (root, cd) = unit.table_phys(domain).ok_or("no table root")?;
                    found.push(("I/O page table", root));
                    if let Some(cd) = cd {
                        found.push(("context descriptor", cd));
                    }
                }
                Ok(found)
            })?
        },
        use_table_memory: |platform, memory| {
            smmuv3::with_unit(platform, |unit| unit.set_dma(memory))
        },
        walk: |platform, domain, iova, visit| {
            walked(smmuv3::with_unit(platform, |unit| {
                unit.walk_mapping(domain, iova, visit)
            })?)
        },
        hang: |platform| {
            smmuv3::with_unit(platform, |unit| unit.hardware.shutdown())?
                .map_err(|err| format!("queues off: {err:?}"))
        },
        unhang: |platform| {
            smmuv3::with_unit(platform, |unit| unit.hardware.restart())?
                .map_err(|err| format!("restart: {err:?}"))
        },
    };
}

impl Probe {
    /// Runs `f` on the platform's unit.
    pub(super) fn unit<R>(
        &self,
        platform: &Platform,
        f: impl FnOnce(&mut dyn IommuUnit) -> R,
    ) -> Fallible<R> {
        let mut f = Some(f);
        let mut result = None;
        (self.with_unit)(platform, &mut |unit| {
            if let Some(f) = f.take() {
                result = Some(f(unit));
            }
        })?;
        result.ok_or_else(|| format!("{}: no unit", self.vendor))
    }
}

// ---- the scene: a unit, two edus, frames ------------------------------------

pub(super) type Fallible<T = ()> = Result<T, String>;

pub(super) const READ_WRITE: Prot = Prot {
    read: true,
    write: true,
};
pub(super) const READ_ONLY: Prot = Prot {
    read: true,
    write: false,
};
/// The bytes each DMA moves; small, so that one DMA is one fault record.
pub(super) const DMA_LEN: usize = 64;
/// IOVAs the matrix uses: canonical, below every vendor's aperture, off the
/// x86 interrupt window and the Arm MSI doorbell.
pub(super) const IOVA_IN: u64 = 0x0010_0000;
pub(super) const IOVA_OUT: u64 = 0x0020_0000;
pub(super) const IOVA_HOLE: u64 = 0x0030_0000;
pub(super) const IOVA_BLOCK: u64 = 0x4000_0000;
pub(super) const IOVA_HIGH: u64 = 0x1_2345_6000;
pub(super) const BLOCK: u64 = 2 << 20;
/// What a frame holds where no DMA may have landed.
pub(super) const UNTOUCHED: u8 = 0x5A;

/// One edu the unit translates for, opened.
pub(super) struct Device {
    pub(super) id: DeviceId,
    pub(super) edu: edu::Edu<'static>,
}

/// Everything a scenario works with; [`Scene::finish`] gives it all back.
pub(super) struct Scene<'p> {
    pub(super) probe: &'p Probe,
    pub(super) platform: &'p Platform,
    pub(super) a: Device,
    pub(super) b: Device,
    pub(super) domains: Vec<DomainHandle>,
    pub(super) frames: Vec<Frames>,
}

/// The first two edus on bus 0 the unit names (the bridge configurations'
/// edus behind a bridge belong to the group tests).
pub(super) fn edu_pair(
    probe: &Probe,
    platform: &Platform,
) -> Fallible<[(&'static PciDevice, DeviceId); 2]> {
    let mut found = devices::edus()
        .filter(|device| device.function.bdf.bus == 0)
        .filter_map(|device| Some((device, (probe.device_id)(platform, device.function.bdf)?)));
    let a = found.next().ok_or("no edu the unit translates")?;
    let b = found.next().ok_or("no second edu the unit translates")?;
    Ok([a, b])
}

/// Runs `body` in a fresh scene; afterwards every domain is gone, both
/// devices are detached (blocked), no fault is left pending and every frame
/// the scenario took is back.
pub(super) fn scenario(
    platform: &Platform,
    body: impl FnOnce(&mut Scene<'_>) -> Fallible,
) -> TestResult {
    let Some(probe) = probe(platform) else {
        return Ok(Outcome::NotApplicable("no IOMMU in this machine"));
    };
    (probe.prepare)(platform)?;
    let [(a, a_id), (b, b_id)] = edu_pair(probe, platform)?;
    let open = |device: &PciDevice| {
        devices::open_edu(platform, device).map_err(|err| format!("open edu: {err:?}"))
    };
    let (edu_a, edu_b) = (open(a)?, open(b)?);
    settle(probe, platform, &[a_id, b_id])?;
    let free_before = frames::free_count();
    let mut scene = Scene {
        probe,
        platform,
        a: Device {
            id: a_id,
            edu: edu_a,
        },
        b: Device {
            id: b_id,
            edu: edu_b,
        },
        domains: Vec::new(),
        frames: Vec::new(),
    };
    let result = body(&mut scene);
    let finished = scene.finish();
    result?;
    finished?;
    ensure_eq!(
        frames::free_count(),
        free_before,
        "free frames after the scenario"
    );
    Ok(Outcome::Passed)
}

/// Makes the unit build what it keeps per device (context and PASID tables,
/// level-2 stream tables) before frames are counted, and empties its fault
/// log.
pub(super) fn settle(probe: &Probe, platform: &Platform, devices: &[DeviceId]) -> Fallible {
    probe.unit(platform, |unit| -> Fallible {
        let domain = unit
            .alloc_domain(DomainKind::Paging)
            .map_err(|err| format!("paging domain: {err:?}"))?;
        for &device in devices {
            let attached = unit.attach(device, domain);
            unit.detach(device);
            attached.map_err(|err| format!("attach {device:?}: {err:?}"))?;
        }
        unit.free_domain(domain)
            .map_err(|err| format!("free domain: {err:?}"))?;
        unit.drain_faults(&mut Vec::new());
        Ok(())
    })?
}

impl Scene<'_> {
    pub(super) fn unit<R>(&self, f: impl FnOnce(&mut dyn IommuUnit) -> R) -> Fallible<R> {
        self.probe.unit(self.platform, f)
    }

    pub(super) fn domain(&mut self, kind: DomainKind) -> Fallible<Option<DomainHandle>> {
        match self.unit(|unit| unit.alloc_domain(kind))? {
            Ok(domain) => {
                self.domains.push(domain);
                Ok(Some(domain))
            }
            Err(IommuError::Unsupported) => Ok(None),
            Err(err) => Err(format!("alloc {kind:?} domain: {err:?}")),
        }
    }

    pub(super) fn paging_domain(&mut self) -> Fallible<DomainHandle> {
        self.domain(DomainKind::Paging)?
            .ok_or_else(|| format!("{}: no paging domain", self.probe.vendor))
    }

    pub(super) fn attach(&self, device: DeviceId, domain: DomainHandle) -> Fallible {
        self.unit(|unit| unit.attach(device, domain))?
            .map_err(|err| format!("attach {device:?}: {err:?}"))
    }

    /// Frees a domain of the scene before its end.
    pub(super) fn free_domain(&mut self, domain: DomainHandle) -> Fallible {
        self.unit(|unit| unit.free_domain(domain))?
            .map_err(|err| format!("free domain: {err:?}"))?;
        self.domains.retain(|&held| held != domain);
        Ok(())
    }

    pub(super) fn detach(&self, device: DeviceId) -> Fallible {
        self.unit(|unit| unit.detach(device))
    }

    /// Maps and flushes what the map asks to be flushed; returns that gather.
    pub(super) fn map(
        &self,
        domain: DomainHandle,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Fallible<iommu::Gather> {
        self.unit(|unit| {
            let gather = unit
                .map(domain, iova, phys, len, prot)
                .map_err(|err| format!("map {iova:#x}: {err:?}"))?;
            unit.flush(domain, &gather)
                .map_err(|err| format!("flush after map: {err:?}"))?;
            Ok(gather)
        })?
    }

    /// Unmaps without flushing; the caller flushes the gather.
    pub(super) fn unmap_unflushed(
        &self,
        domain: DomainHandle,
        iova: u64,
        len: u64,
    ) -> Fallible<iommu::Gather> {
        let gather = self
            .unit(|unit| unit.unmap(domain, iova, len))?
            .map_err(|err| format!("unmap of {iova:#x}: {err:?}"))?;
        ensure!(!gather.is_empty(), "unmap of {iova:#x} changed nothing");
        Ok(gather)
    }

    pub(super) fn flush(&self, domain: DomainHandle, gather: &iommu::Gather) -> Fallible {
        self.unit(|unit| unit.flush(domain, gather))?
            .map_err(|err| format!("flush: {err:?}"))
    }

    pub(super) fn unmap(&self, domain: DomainHandle, iova: u64, len: u64) -> Fallible {
        let gather = self.unmap_unflushed(domain, iova, len)?;
        self.flush(domain, &gather)
    }

    /// Device A attached to a fresh paging domain that maps a source page of
    /// `fill` bytes read-only at `source` and a target page (UNTOUCHED)
    /// read-write at `target`: the domain and the target page.
    pub(super) fn copy_through(
        &mut self,
        fill: u8,
        source: u64,
        target: u64,
    ) -> Fallible<(DomainHandle, Frames)> {
        let domain = self.paging_domain()?;
        let source_page = self.frame(fill)?;
        let target_page = self.frame(UNTOUCHED)?;
        self.map(domain, source, source_page.phys, 4096, READ_ONLY)?;
        self.map(domain, target, target_page.phys, 4096, READ_WRITE)?;
        self.attach(self.a.id, domain)?;
        Ok((domain, target_page))
    }

    /// The raw smallest-page leaf the unit holds for `iova` in `domain`.
    pub(super) fn leaf_entry(&self, domain: DomainHandle, iova: u64) -> Fallible<u64> {
        let mut leaf = None;
        (self.probe.walk)(self.platform, domain, iova, &mut |step| {
            if step.level == 0 && matches!(step.kind, io_page_table::StepKind::Leaf { .. }) {
                leaf = Some(step.entry);
            }
        })?;
        leaf.ok_or_else(|| format!("no 4 KiB leaf for {iova:#x}"))
    }

    /// A frame of `fill` bytes, given back at the end of the scenario.
    pub(super) fn frame(&mut self, fill: u8) -> Fallible<Frames> {
        let frame = frames::alloc().ok_or("no frame")?;
        refill(&frame, fill);
        self.frames.push(Frames {
            phys: frame.phys,
            count: frame.count,
        });
        Ok(frame)
    }

    pub(super) fn faults(&self) -> Fallible<Vec<FaultRecord>> {
        self.unit(|unit| {
            let mut out = Vec::new();
            unit.drain_faults(&mut out);
            out
        })
    }

    pub(super) fn records_faults(&self) -> bool {
        (self.probe.records_faults)(self.platform)
    }

    /// Exactly one fault from `device` at `iova` for `access` with `reason`
    /// (nothing, where the unit records no faults).
    pub(super) fn expect_fault(
        &self,
        what: &str,
        device: DeviceId,
        iova: u64,
        access: Access,
        reason: FaultReason,
    ) -> Fallible {
        let faults = self.faults()?;
        if !self.records_faults() {
            ensure!(
                faults.is_empty(),
                "{what}: records from a unit that writes none: {faults:?}"
            );
            return Ok(());
        }
        ensure_eq!(
            faults.len(),
            1,
            format!("{what}: fault records {faults:x?}")
        );
        let fault = &faults[0];
        ensure_eq!(
            (fault.requester, fault.iova, fault.access, fault.reason),
            (device, iova, access, reason),
            format!("{what}: (requester, IOVA, access, reason)")
        );
        Ok(())
    }

    pub(super) fn expect_no_fault(&self, what: &str) -> Fallible {
        let faults = self.faults()?;
        ensure!(
            faults.is_empty(),
            "{what}: unexpected fault records {faults:x?}"
        );
        Ok(())
    }

    /// A blocked device's DMA at `address`: reported where the vendor
    /// reports it (see [`Probe::blocked_reported`]).
    pub(super) fn expect_blocked(&self, what: &str, device: DeviceId, address: u64) -> Fallible {
        if self.probe.blocked_reported {
            self.expect_fault(what, device, address, Access::Write, FaultReason::Blocked)
        } else {
            self.expect_no_fault(what)
        }
    }

    /// Detaches both devices and frees every domain and frame.
    pub(super) fn finish(self) -> Fallible {
        let (a, b) = (self.a.id, self.b.id);
        let domains = self.domains;
        let freed = self.probe.unit(self.platform, |unit| {
            unit.detach(a);
            unit.detach(b);
            let freed: Vec<_> = domains.iter().map(|&d| unit.free_domain(d)).collect();
            unit.drain_faults(&mut Vec::new());
            freed
        })?;
        for frame in self.frames {
            frames::free(frame);
        }
        ensure!(freed.iter().all(Result::is_ok), "free domains: {freed:?}");
        Ok(())
    }
}

pub(super) fn dma(device: &Device, direction: Direction, iova: u64) -> Fallible {
    device
        .edu
        .dma(direction, iova, 0, DMA_LEN)
        .map_err(|err| format!("edu DMA at {iova:#x}: {err:?}"))
}

pub(super) fn refill(frame: &Frames, fill: u8) {
    // SAFETY: the frame belongs to the scenario and is identity-mapped.
    unsafe { core::ptr::write_bytes(frame.as_mut_ptr(), fill, 4096) };
}

pub(super) fn bytes_at(frame: &Frames, offset: usize) -> Vec<u8> {
    (0..DMA_LEN)
        // SAFETY: a volatile read inside a frame the scenario owns; a device
        // may have written it.
        .map(|i| unsafe { core::ptr::read_volatile(frame.as_mut_ptr().add(offset + i)) })
        .collect()
}

pub(super) fn holds(frame: &Frames, value: u8) -> bool {
    bytes_at(frame, 0).iter().all(|&byte| byte == value)
}
