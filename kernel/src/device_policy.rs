//! Which PCI functions a task may own, and why not the others.
//!
//! A task gets a function only where owning it reaches nothing beyond it:
//! Linux decides the same with `iommu_group`s (`pci_device_group`: functions
//! that can reach each other without the IOMMU seeing it share a group) and
//! VFIO's viability rules (a group is given out only whole, never with a
//! bridge or a function the kernel keeps). This is the policy half; the PCI
//! topology comes from `devices`, the translation facts from the unit.

use abi::DeviceListFlags;

use crate::devices::PciDevice;

/// PCI class codes (PCI Code and ID Assignment Specification §1): base class
/// in bits 23:16, subclass in 15:8 of `Function::class`.
const CLASS_BRIDGE: u32 = 0x06;
const CLASS_SYSTEM_PERIPHERAL: u32 = 0x08;
const SUBCLASS_IOMMU: u32 = 0x06;

/// Why `device_open` refuses a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No unit translates it: its DMA would reach all of memory.
    NotTranslated,
    /// A host bridge or a bridge to other buses: it stands for the platform
    /// or forwards other devices' traffic; it is not a device of its own.
    Bridge,
    /// The IOMMU's own function (class 08h/06h): its owner could reprogram
    /// the isolation itself.
    IommuFunction,
    /// Firmware keeps DMA going to memory it names (VT-d RMRR, AMD-Vi IVMD):
    /// that memory stays identity-mapped in the device's domain.
    FirmwareDma,
    /// BAR 0 is smaller than a page: the task would map its neighbours'
    /// registers too.
    SharedPage,
    /// Its isolation group holds an endpoint with another requester id (no
    /// ACS between them: a multi-function device, peers below a switch
    /// port or bridge), which the unit would let another owner have; such
    /// groups are not handed out whole yet. (Functions that share one
    /// requester id, behind a PCIe-to-PCI bridge, are claimed together.)
    SharedGroup,
    /// It signals MSIs and nothing isolates them (no interrupt remapping, a
    /// GICv2m doorbell that takes any SPI): its owner could raise other
    /// devices' interrupts. The command line can allow it
    /// (`allow_unsafe_interrupts`).
    UnsafeInterrupts,
}

impl Refusal {
    /// The `device_list` flags that report it.
    pub fn flags(self) -> DeviceListFlags {
        DeviceListFlags::REFUSED
            | match self {
                Refusal::NotTranslated => DeviceListFlags::empty(),
                Refusal::Bridge => DeviceListFlags::BRIDGE,
                Refusal::IommuFunction => DeviceListFlags::IOMMU_FUNCTION,
                Refusal::FirmwareDma => DeviceListFlags::FIRMWARE_DMA,
                Refusal::SharedPage => DeviceListFlags::SHARED_PAGE,
                Refusal::SharedGroup => DeviceListFlags::SHARED_GROUP,
                Refusal::UnsafeInterrupts => DeviceListFlags::UNSAFE_INTERRUPTS,
            }
    }

    /// What `device_open` answers: `EINVAL` for a function no unit names
    /// (nothing to open), `EPERM` where the kernel keeps it on purpose (as
    /// VFIO does for a group that is not viable).
    pub fn errno(self) -> abi::Errno {
        match self {
            Refusal::NotTranslated => abi::Errno::EINVAL,
            _ => abi::Errno::EPERM,
        }
    }
}

/// What the platform says about one function, for [`refusal`].
#[derive(Clone, Copy, Debug)]
pub struct Facts {
    /// A unit names (and so translates) it.
    pub translated: bool,
    /// The unit reports direct (identity) regions for it.
    pub firmware_dma: bool,
    /// It has an MSI capability and nothing isolates its messages, nor did
    /// the command line allow that.
    pub unsafe_interrupts: bool,
    /// Its isolation group (`devices::isolation_group`: no ACS between it
    /// and a peer) holds an endpoint whose DMA carries another requester
    /// id, which the unit would let another owner have.
    pub shared_group: bool,
}

/// Whether a task may own `device`, one of the machine's functions `all`.
pub fn refusal(device: &PciDevice, facts: Facts) -> Option<Refusal> {
    let function = &device.function;
    let (class, subclass) = (function.class >> 16, (function.class >> 8) & 0xFF);
    if !facts.translated {
        return Some(Refusal::NotTranslated);
    }
    if class == CLASS_BRIDGE || function.header_type.layout != pci::HeaderType::ENDPOINT {
        return Some(Refusal::Bridge);
    }
    if class == CLASS_SYSTEM_PERIPHERAL && subclass == SUBCLASS_IOMMU {
        return Some(Refusal::IommuFunction);
    }
    if facts.firmware_dma {
        return Some(Refusal::FirmwareDma);
    }
    if device.bars.iter().any(|bar| {
        matches!(*bar, pci::Bar::Memory { index: 0, size, .. } if size < abi::syscall::PAGE_SIZE)
    }) {
        return Some(Refusal::SharedPage);
    }
    if facts.shared_group {
        return Some(Refusal::SharedGroup);
    }
    if facts.unsafe_interrupts {
        return Some(Refusal::UnsafeInterrupts);
    }
    None
}
