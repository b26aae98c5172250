#!/usr/bin/env bash
# Runs each fuzz target for N seconds (default 60), seeded with the QEMU fixtures.
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
mkdir -p corpus/devicetree corpus/acpi_tables
cp ../fixtures/*.dtb corpus/devicetree/
for f in ../fixtures/q35-*-{DMAR,IVRS,MCFG,APIC}.bin; do
    [ -e "$f" ] || continue
    case "$f" in
        *MCFG*) sel='\x00' ;; *DMAR*) sel='\x01' ;; *IVRS*) sel='\x02' ;; *) sel='\x03' ;;
    esac
    { printf "$sel"; cat "$f"; } >"corpus/acpi_tables/$(basename "$f")"
done
for target in devicetree acpi_tables; do
    cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -max_len=65536
done
