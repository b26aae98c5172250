//! FADT (ACPI 6.5 §5.2.9, signature "FACP"): only the fixed-hardware I/O ports
//! a kernel needs to power off (PM1a control) and to keep time (PM timer).

use crate::FirmwareError;
use crate::acpi::checked_table;
use crate::bytes::{le32, u8_at};

/// ACPI 6.5 §5.2.9 Table 5.9 field offsets.
const PM1A_CNT_BLK: usize = 64;
const PM_TMR_BLK: usize = 76;
const PM_TMR_LEN: usize = 91;
const FLAGS: usize = 112;
/// Flags bit 8 TMR_VAL_EXT: the PM timer is 32 bits wide (else 24).
const FLAG_TMR_VAL_EXT: u32 = 1 << 8;
/// The PM timer block is 4 bytes long when present (§4.8.3.3).
const PM_TMR_LEN_VALUE: u8 = 4;

/// The FADT's fixed-hardware ports (legacy I/O-port fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fadt {
    /// PM1a control register block: SLP_TYP/SLP_EN for sleep states (S5 = off).
    pub pm1a_control_port: Option<u16>,
    /// ACPI PM timer (3.579545 MHz).
    pub pm_timer_port: Option<u16>,
    /// Whether the PM timer counts 32 bits (else 24).
    pub pm_timer_32bit: bool,
}

fn io_port(value: u32) -> Result<Option<u16>, FirmwareError> {
    match value {
        0 => Ok(None),
        port => u16::try_from(port)
            .map(Some)
            .map_err(|_| FirmwareError::Malformed {
                what: "FADT I/O port above 0xFFFF",
                offset: 0,
            }),
    }
}

/// Parses a whole FADT (header included, checksum verified).
pub fn parse_fadt(bytes: &[u8]) -> Result<Fadt, FirmwareError> {
    let (_, table) = checked_table(bytes, b"FACP")?;
    let field = |offset: usize, what: &'static str| {
        le32(table, offset).ok_or(FirmwareError::Truncated { what, offset })
    };
    let pm1a_control_port = io_port(field(PM1A_CNT_BLK, "FADT PM1a_CNT_BLK")?)?;
    let timer_len = u8_at(table, PM_TMR_LEN).ok_or(FirmwareError::Truncated {
        what: "FADT PM_TMR_LEN",
        offset: PM_TMR_LEN,
    })?;
    let pm_timer_port = match io_port(field(PM_TMR_BLK, "FADT PM_TMR_BLK")?)? {
        Some(port) if timer_len == PM_TMR_LEN_VALUE => Some(port),
        _ => None,
    };
    // Flags exist from FADT revision 1 on (ACPI 1.0 tables are 116 bytes).
    let flags = le32(table, FLAGS).unwrap_or(0);
    Ok(Fadt {
        pm1a_control_port,
        pm_timer_port,
        pm_timer_32bit: flags & FLAG_TMR_VAL_EXT != 0,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;
    use std::vec::Vec;

    use super::*;

    /// A 244-byte revision-6 FADT built from Table 5.9 with only the fields under test set.
    fn fadt(pm1a: u32, timer: u32, timer_len: u8, flags: u32) -> Vec<u8> {
        let mut table = vec![0u8; 244];
        table[0..4].copy_from_slice(b"FACP");
        table[4..8].copy_from_slice(&244u32.to_le_bytes());
        table[8] = 6;
        table[PM1A_CNT_BLK..PM1A_CNT_BLK + 4].copy_from_slice(&pm1a.to_le_bytes());
        table[PM_TMR_BLK..PM_TMR_BLK + 4].copy_from_slice(&timer.to_le_bytes());
        table[PM_TMR_LEN] = timer_len;
        table[FLAGS..FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
        let sum = table.iter().fold(0u8, |acc, &b| acc.wrapping_add(b));
        table[9] = 0u8.wrapping_sub(sum);
        table
    }

    #[test]
    fn reads_the_q35_ports() {
        // QEMU q35 with SeaBIOS: PM base 0x600, control at +4, timer at +8, 24-bit timer.
        let parsed = parse_fadt(&fadt(0x604, 0x608, 4, 0)).unwrap();
        assert_eq!(
            parsed,
            Fadt {
                pm1a_control_port: Some(0x604),
                pm_timer_port: Some(0x608),
                pm_timer_32bit: false
            }
        );
        assert!(
            parse_fadt(&fadt(0x604, 0x608, 4, FLAG_TMR_VAL_EXT))
                .unwrap()
                .pm_timer_32bit
        );
    }

    #[test]
    fn absent_or_short_blocks_are_none() {
        let parsed = parse_fadt(&fadt(0, 0x608, 0, 0)).unwrap();
        assert_eq!(parsed.pm1a_control_port, None);
        assert_eq!(parsed.pm_timer_port, None);
    }

    #[test]
    fn rejects_ports_above_16_bits_truncation_and_bad_checksums() {
        assert!(matches!(
            parse_fadt(&fadt(0x1_0000, 0, 0, 0)),
            Err(FirmwareError::Malformed { .. })
        ));
        let mut table = fadt(0x604, 0x608, 4, 0);
        table[20] ^= 1;
        assert!(matches!(
            parse_fadt(&table),
            Err(FirmwareError::BadChecksum { .. })
        ));
        let mut short = fadt(0x604, 0x608, 4, 0);
        short.truncate(60);
        short[4..8].copy_from_slice(&60u32.to_le_bytes());
        let sum = short.iter().fold(0u8, |acc, &b| acc.wrapping_add(b));
        short[9] = short[9].wrapping_sub(sum);
        assert!(parse_fadt(&short).is_err());
    }
}
