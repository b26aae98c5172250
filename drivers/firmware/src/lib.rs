//! Firmware-table parsers: ACPI (MCFG, DMAR, IVRS) and the device tree.
#![no_std]
