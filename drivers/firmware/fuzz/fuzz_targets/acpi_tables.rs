//! Any bytes as an MCFG, DMAR, IVRS or MADT. The first byte picks the table; the
//! signature, length and checksum are then made consistent, so libFuzzer spends its
//! effort on the table bodies instead of rediscovering the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;

const SIGNATURES: [&[u8; 4]; 4] = [b"MCFG", b"DMAR", b"IVRS", b"APIC"];
const HEADER: usize = 36;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let mut table = rest.to_vec();
    if table.len() < HEADER {
        table.resize(HEADER, 0);
    }
    let signature = SIGNATURES[usize::from(selector) % SIGNATURES.len()];
    table[..4].copy_from_slice(signature);
    // Keep the fuzzer's own length most of the time, so length handling is fuzzed too.
    if selector & 0x80 == 0 {
        let len = u32::try_from(table.len()).unwrap_or(u32::MAX);
        table[4..8].copy_from_slice(&len.to_le_bytes());
    }
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    table[9] = 0u8.wrapping_sub(sum);
    let _ = firmware::acpi::parse_mcfg(&table);
    let _ = firmware::acpi::parse_dmar(&table);
    let _ = firmware::acpi::parse_ivrs(&table);
    let _ = firmware::acpi::parse_madt(&table);
});
