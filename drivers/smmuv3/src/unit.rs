//! The SMMU behind the `iommu` driver contract: domains, attach/detach through
//! STEs, fault routing to the owning domain.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use iommu::{
    Access, DeviceId, DomainHandle, DomainKind, FaultReason, FaultRecord, Gather, HwInfo,
    IommuError, IommuUnit, IovaRange, NestedInvalidation, Prot, ReservedKind, ReservedRegion,
    UnitId, UnitInfo, UnitKind,
};

use crate::event::{EventKind, Fault};
use crate::smmu::{Error, Smmu};
use crate::ste::Ste;

/// What a domain translates with.
#[derive(Debug)]
enum DomainState {
    Blocked,
    Identity,
}

#[derive(Debug)]
struct Domain {
    state: DomainState,
    /// StreamIDs attached.
    streams: Vec<u32>,
    /// Faults of this domain's streams, drained and not yet taken.
    faults: Vec<Fault>,
}

/// One SMMUv3 as an [`IommuUnit`].
pub struct SmmuUnit<'a> {
    pub smmu: Smmu<'a>,
    id: UnitId,
    domains: Vec<Option<Domain>>,
    attached: BTreeMap<u32, DomainHandle>,
    /// The MSI doorbell page devices write to (GICv2m frame / ITS translater).
    msi_doorbell: Option<IovaRange>,
    /// Faults of streams that belong to no domain.
    unowned: Vec<Fault>,
}

impl From<Error> for IommuError {
    fn from(err: Error) -> Self {
        match err {
            Error::NoMemory => IommuError::NoMemory,
            Error::Timeout(_) => IommuError::Timeout,
            Error::Unsupported(_) => IommuError::Unsupported,
            Error::BadStreamId(_) | Error::Encoding | Error::CommandRejected { .. } => {
                IommuError::Invalid
            }
        }
    }
}

/// The contract's view of one coalesced fault.
pub fn fault_record(unit: UnitId, fault: &Fault) -> FaultRecord {
    let event = &fault.event;
    FaultRecord {
        unit,
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
            other => FaultReason::Other(event_code(other)),
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
    }
}

impl<'a> SmmuUnit<'a> {
    pub fn new(smmu: Smmu<'a>, id: UnitId, msi_doorbell: Option<IovaRange>) -> Self {
        Self {
            smmu,
            id,
            domains: Vec::new(),
            attached: BTreeMap::new(),
            msi_doorbell,
            unowned: Vec::new(),
        }
    }

    fn domain(&self, handle: DomainHandle) -> Result<&Domain, IommuError> {
        self.domains
            .get(handle.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(IommuError::Invalid)
    }

    fn domain_mut(&mut self, handle: DomainHandle) -> Result<&mut Domain, IommuError> {
        self.domains
            .get_mut(handle.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(IommuError::Invalid)
    }

    fn ste_for(&self, handle: DomainHandle) -> Result<Ste, IommuError> {
        Ok(match self.domain(handle)?.state {
            DomainState::Blocked => Ste::abort(),
            DomainState::Identity => Ste::bypass(),
        })
    }

    /// The domain `sid` is attached to.
    pub fn domain_of(&self, sid: u32) -> Option<DomainHandle> {
        self.attached.get(&sid).copied()
    }

    /// Drains the event queue and files each fault with the domain that owns
    /// its stream.
    pub fn collect_faults(&mut self) {
        self.smmu.drain_events();
        for fault in self.smmu.take_faults() {
            let owner = self.attached.get(&fault.event.sid).copied();
            match owner.and_then(|h| self.domains.get_mut(h.0 as usize)?.as_mut()) {
                Some(domain) => domain.faults.push(fault),
                None => self.unowned.push(fault),
            }
        }
    }

    /// Takes the coalesced faults of `domain` (with their event counts).
    pub fn take_domain_faults(&mut self, domain: DomainHandle) -> Vec<Fault> {
        self.collect_faults();
        self.domain_mut(domain)
            .map(|d| core::mem::take(&mut d.faults))
            .unwrap_or_default()
    }

    /// Takes the coalesced faults of streams no domain owns.
    pub fn take_unowned_faults(&mut self) -> Vec<Fault> {
        self.collect_faults();
        core::mem::take(&mut self.unowned)
    }
}

impl IommuUnit for SmmuUnit<'_> {
    fn info(&self) -> UnitInfo {
        let ias = self.smmu.features().idr5().output_bits().unwrap_or(32);
        let page_sizes = self
            .smmu
            .features()
            .idr5()
            .granules()
            .fold(0, |sizes, g| sizes | g.size());
        UnitInfo {
            name: "arm-smmu-v3",
            kind: UnitKind::ArmSmmuV3,
            aperture: IovaRange {
                start: 0,
                last: (1u64 << ias.min(48)) - 1,
            },
            page_sizes: if page_sizes == 0 { 1 << 12 } else { page_sizes },
            nesting: None,
        }
    }

    fn reserved_regions(&self, _device: DeviceId) -> Vec<ReservedRegion> {
        self.msi_doorbell
            .map(|range| {
                vec![ReservedRegion {
                    range,
                    kind: ReservedKind::Msi,
                }]
            })
            .unwrap_or_default()
    }

    fn hw_info(&self) -> HwInfo {
        let features = self.smmu.features();
        HwInfo::ArmSmmuV3 {
            idr: features.idr,
            iidr: features.iidr,
            aidr: features.aidr,
        }
    }

    fn alloc_domain(&mut self, kind: DomainKind) -> Result<DomainHandle, IommuError> {
        let state = match kind {
            DomainKind::Blocked => DomainState::Blocked,
            DomainKind::Identity => DomainState::Identity,
            DomainKind::Paging | DomainKind::NestParent | DomainKind::Nested { .. } => {
                return Err(IommuError::Unsupported);
            }
        };
        let domain = Domain {
            state,
            streams: Vec::new(),
            faults: Vec::new(),
        };
        let index = match self.domains.iter().position(Option::is_none) {
            Some(free) => {
                self.domains[free] = Some(domain);
                free
            }
            None => {
                self.domains.push(Some(domain));
                self.domains.len() - 1
            }
        };
        Ok(DomainHandle(index as u32))
    }

    fn free_domain(&mut self, handle: DomainHandle) -> Result<(), IommuError> {
        if !self.domain(handle)?.streams.is_empty() {
            return Err(IommuError::Busy);
        }
        self.domains[handle.0 as usize] = None;
        Ok(())
    }

    fn map(
        &mut self,
        domain: DomainHandle,
        _iova: u64,
        _phys: u64,
        _len: u64,
        _prot: Prot,
    ) -> Result<Gather, IommuError> {
        self.domain(domain)?;
        Err(IommuError::Unsupported)
    }

    fn unmap(&mut self, _domain: DomainHandle, _iova: u64, _len: u64) -> Gather {
        Gather::default()
    }

    fn flush(&mut self, domain: DomainHandle, gather: &Gather) -> Result<(), IommuError> {
        self.domain(domain)?;
        if gather.is_empty() {
            return Ok(());
        }
        Err(IommuError::Unsupported)
    }

    fn attach(&mut self, device: DeviceId, domain: DomainHandle) -> Result<(), IommuError> {
        let sid = device.0;
        let ste = self.ste_for(domain)?;
        self.smmu.write_ste(sid, &ste)?;
        if let Some(old) = self.attached.insert(sid, domain)
            && let Ok(old) = self.domain_mut(old)
        {
            old.streams.retain(|&s| s != sid);
        }
        self.domain_mut(domain)?.streams.push(sid);
        Ok(())
    }

    fn detach(&mut self, device: DeviceId) {
        let sid = device.0;
        // Abort (V = 1, Config = 0) is silent, unlike the V = 0 of a stream
        // never attached: a detached device is expected to be quiet.
        if self.smmu.write_ste(sid, &Ste::abort()).is_err() {
            return;
        }
        if let Some(old) = self.attached.remove(&sid)
            && let Ok(old) = self.domain_mut(old)
        {
            old.streams.retain(|&s| s != sid);
        }
    }

    fn drain_faults(&mut self, out: &mut Vec<FaultRecord>) -> usize {
        self.collect_faults();
        let before = out.len();
        let id = self.id;
        for domain in self.domains.iter_mut().flatten() {
            out.extend(domain.faults.drain(..).map(|f| fault_record(id, &f)));
        }
        out.extend(self.unowned.drain(..).map(|f| fault_record(id, &f)));
        out.len() - before
    }

    fn invalidate_nested(
        &mut self,
        _domain: DomainHandle,
        _requests: &[NestedInvalidation],
    ) -> (usize, Result<(), IommuError>) {
        (0, Err(IommuError::Unsupported))
    }
}
