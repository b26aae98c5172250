//! MADT: Multiple APIC Description Table (ACPI 6.5 §5.2.12), the parts an x86 kernel
//! needs next to DMAR/IVRS: local APIC address, CPUs, I/O APICs (whose IDs DMAR
//! device scopes and IVRS special entries refer to) and ISA interrupt overrides.

use alloc::vec::Vec;

use super::sdt::{SdtHeader, checked_table};
use crate::FirmwareError;
use crate::bytes::{le16, le32, le64, slice, u8_at};
use crate::overlap;

/// ACPI 6.5 §5.2.12 MADT offsets.
const LOCAL_APIC_ADDRESS: usize = 36;
const FLAGS: usize = 40;
const STRUCTURES_OFFSET: usize = 44;
/// Every interrupt controller structure starts with Type (u8) and Length (u8).
const STRUCT_HEADER_SIZE: usize = 2;

/// ACPI 6.5 §5.2.12 interrupt controller structure types.
const TYPE_LOCAL_APIC: u8 = 0;
const TYPE_IO_APIC: u8 = 1;
const TYPE_INTERRUPT_OVERRIDE: u8 = 2;
const TYPE_LOCAL_APIC_ADDRESS_OVERRIDE: u8 = 5;
const TYPE_LOCAL_X2APIC: u8 = 9;
/// ACPI 6.5 §5.2.12.2, .3, .5, .8, .12 structure lengths.
const LOCAL_APIC_SIZE: usize = 8;
const IO_APIC_SIZE: usize = 12;
const INTERRUPT_OVERRIDE_SIZE: usize = 10;
const LOCAL_APIC_ADDRESS_OVERRIDE_SIZE: usize = 12;
const LOCAL_X2APIC_SIZE: usize = 16;

/// A CPU: ACPI 6.5 §5.2.12.2 Processor Local APIC or §5.2.12.12 Processor Local x2APIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalApic {
    /// The processor's ACPI UID.
    pub processor_uid: u32,
    /// Its (x2)APIC ID.
    pub apic_id: u32,
    /// Bit 0 Enabled, bit 1 Online Capable.
    pub flags: u32,
}

/// ACPI 6.5 Table 5.23 Local APIC Flags: the processor is usable.
const LOCAL_APIC_ENABLED: u32 = 1 << 0;

impl LocalApic {
    /// Whether the firmware says the CPU can be started (Enabled; an
    /// Online Capable CPU needs hot-plug, which the kernel does not do).
    pub fn enabled(&self) -> bool {
        self.flags & LOCAL_APIC_ENABLED != 0
    }
}

/// ACPI 6.5 §5.2.12.3 I/O APIC Structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoApic {
    /// The I/O APIC's ID.
    pub id: u8,
    /// Its register base.
    pub address: u32,
    /// The first GSI it serves.
    pub gsi_base: u32,
}

/// ACPI 6.5 §5.2.12.5 Interrupt Source Override: ISA IRQ `source` is GSI `gsi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptOverride {
    /// 0: ISA.
    pub bus: u8,
    /// The bus-relative IRQ.
    pub source: u8,
    /// The GSI it is wired to.
    pub gsi: u32,
    /// MPS INTI flags (§5.2.12.5): bits 1:0 polarity, bits 3:2 trigger mode.
    pub flags: u16,
}

/// A parsed MADT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Madt {
    /// The table header.
    pub header: SdtHeader,
    /// The 32-bit field, replaced by a Local APIC Address Override when present.
    pub local_apic_address: u64,
    /// Bit 0 PCAT_COMPAT: dual 8259s are present.
    pub flags: u32,
    /// Enabled processors.
    pub local_apics: Vec<LocalApic>,
    /// I/O APICs.
    pub io_apics: Vec<IoApic>,
    /// ISA interrupt source overrides.
    pub overrides: Vec<InterruptOverride>,
    /// Types of structures not decoded here (NMI sources, GIC structures, ...).
    pub other_types: Vec<u8>,
}

/// Parses a whole MADT ("APIC") table (header included, checksum verified).
pub fn parse_madt(bytes: &[u8]) -> Result<Madt, FirmwareError> {
    let (header, table) = checked_table(bytes, b"APIC")?;
    let t = |offset| FirmwareError::Truncated {
        what: "MADT",
        offset,
    };
    let mut madt = Madt {
        header,
        local_apic_address: u64::from(
            le32(table, LOCAL_APIC_ADDRESS).ok_or(t(LOCAL_APIC_ADDRESS))?,
        ),
        flags: le32(table, FLAGS).ok_or(t(FLAGS))?,
        local_apics: Vec::new(),
        io_apics: Vec::new(),
        overrides: Vec::new(),
        other_types: Vec::new(),
    };
    let mut at = STRUCTURES_OFFSET;
    while at < table.len() {
        let kind = table[at];
        let length = u8_at(table, at + 1).ok_or(t(at))? as usize;
        if length < STRUCT_HEADER_SIZE {
            return Err(FirmwareError::BadLength {
                what: "MADT structure",
                offset: at,
                length,
            });
        }
        let s = slice(table, at, length).ok_or(FirmwareError::BadLength {
            what: "MADT structure",
            offset: at,
            length,
        })?;
        let need = |min: usize, what| {
            if length < min {
                Err(FirmwareError::BadLength {
                    what,
                    offset: at,
                    length,
                })
            } else {
                Ok(())
            }
        };
        match kind {
            TYPE_LOCAL_APIC => {
                need(LOCAL_APIC_SIZE, "MADT local APIC")?;
                madt.local_apics.push(LocalApic {
                    processor_uid: u32::from(s[2]),
                    apic_id: u32::from(s[3]),
                    flags: le32(s, 4).ok_or(t(at))?,
                });
            }
            TYPE_IO_APIC => {
                need(IO_APIC_SIZE, "MADT I/O APIC")?;
                madt.io_apics.push(IoApic {
                    id: s[2],
                    address: le32(s, 4).ok_or(t(at))?,
                    gsi_base: le32(s, 8).ok_or(t(at))?,
                });
            }
            TYPE_INTERRUPT_OVERRIDE => {
                need(INTERRUPT_OVERRIDE_SIZE, "MADT interrupt source override")?;
                madt.overrides.push(InterruptOverride {
                    bus: s[2],
                    source: s[3],
                    gsi: le32(s, 4).ok_or(t(at))?,
                    flags: le16(s, 8).ok_or(t(at))?,
                });
            }
            TYPE_LOCAL_APIC_ADDRESS_OVERRIDE => {
                need(
                    LOCAL_APIC_ADDRESS_OVERRIDE_SIZE,
                    "MADT local APIC address override",
                )?;
                madt.local_apic_address = le64(s, 4).ok_or(t(at))?;
            }
            TYPE_LOCAL_X2APIC => {
                need(LOCAL_X2APIC_SIZE, "MADT local x2APIC")?;
                madt.local_apics.push(LocalApic {
                    apic_id: le32(s, 4).ok_or(t(at))?,
                    flags: le32(s, 8).ok_or(t(at))?,
                    processor_uid: le32(s, 12).ok_or(t(at))?,
                });
            }
            other => madt.other_types.push(other),
        }
        at += length;
    }
    let ids = madt
        .io_apics
        .iter()
        .map(|a| (0, u64::from(a.id), u64::from(a.id)))
        .collect();
    let addresses = madt
        .io_apics
        .iter()
        .map(|a| (0, u64::from(a.address), u64::from(a.address)))
        .collect();
    if overlap::any_overlap(ids) || overlap::any_overlap(addresses) {
        return Err(FirmwareError::Overlap {
            what: "MADT I/O APICs",
        });
    }
    Ok(madt)
}
