//! ACPI tables (placeholder until the ACPI parsers land).
