//! Robustness on AMD-Vi in QEMU (configuration `amdvi`), the AMD-Vi mechanisms
//! themselves: a storm of blocked DMAs with the command buffer still answering.
//! The scenarios every IOMMU shares (hostile DMA, table pages running out, a page
//! reused after unmap, a hung command buffer, whose hang `stall_command_buffer`
//! here plays) are `robustness.rs`. Reuses the scenario helpers of `tests::amdvi`.
//!
//! QEMU 10.0.2's AMD-Vi never writes its event log (docs/QEMU.md §2), so on QEMU
//! these tests prove "blocked, memory unchanged" and cannot prove "reported".
//! Event-log overflow and illegal-command halts are proven on the host against
//! the crate's model (`amdvi` unit tests `fault_storm_*`, `illegal_command_storm_*`).

use alloc::format;
use alloc::vec::Vec;

use ::iommu::IommuUnit;
use amdvi::regs::{self, Control};
use os_services::Clock;

use super::amdvi::{
    IOVA_SOURCE, IOVA_TARGET, PAGE, READ_ONLY, READ_WRITE, dma_to_ram, edus, fill_pattern,
    frame_holds, holds_pattern, open, with_scenario,
};
use crate::platform::Platform;
use crate::testing::{Test, TestResult};

pub static TESTS: &[Test] = &[Test {
    name: "robust::amdvi::storm_of_blocked_dmas_leaves_kernel_and_devices_working",
    run: storm_of_blocked_dmas_leaves_kernel_and_devices_working,
}];

/// Faulting DMA rounds of the storm (both edus at once: 2 faults per round).
const STORM_ROUNDS: usize = 150;

fn storm_of_blocked_dmas_leaves_kernel_and_devices_working(platform: &Platform) -> TestResult {
    with_scenario(platform, |s, platform| {
        let devices = edus();
        let edus_open = [open(platform, devices[0])?, open(platform, devices[1])?];
        let mut domains = Vec::new();
        for (device, seed) in devices.iter().zip([0x12u8, 0x34]) {
            let domain = s.domain()?;
            s.attach(device, domain)?;
            let source = s.frame(0)?;
            fill_pattern(&source, seed);
            s.map(domain, IOVA_SOURCE, source.phys, PAGE, READ_ONLY)?;
            domains.push(domain);
        }
        // Both devices hammer unmapped IOVAs equal to these frames' addresses.
        let victims = [s.frame(0xA5)?, s.frame(0xA5)?];
        let before = s.unit.write().hardware.counters();
        let started = crate::time::CLOCK.now_ns();
        let mut faults = 0usize;
        let mut slowest_command_ns = 0u64;
        for round in 0..STORM_ROUNDS {
            let direction = if round % 4 == 3 {
                edu::Direction::ToDevice
            } else {
                edu::Direction::ToRam
            };
            for (edu, victim) in edus_open.iter().zip(&victims) {
                let offset = (round as u64 % 16) * 64;
                edu.start_dma(direction, victim.phys + offset, 0, 256, false)
                    .map_err(|err| format!("round {round}: start: {err:?}"))?;
            }
            for edu in &edus_open {
                edu.wait_dma()
                    .map_err(|err| format!("round {round}: DMA never finished: {err:?}"))?;
            }
            faults += 2;
            // The kernel stays responsive: a command round trip completes in time.
            if round % 25 == 24 {
                let t0 = crate::time::CLOCK.now_ns();
                let mut unit = s.unit.write();
                unit.hardware
                    .run(&[])
                    .map_err(|err| format!("round {round}: COMPLETION_WAIT: {err:?}"))?;
                let mut records = Vec::new();
                unit.drain_faults(&mut records);
                slowest_command_ns = slowest_command_ns.max(crate::time::CLOCK.now_ns() - t0);
            }
        }
        let elapsed_ms = (crate::time::CLOCK.now_ns() - started) / 1_000_000;
        if !victims.iter().all(|v| frame_holds(v, 0xA5)) {
            return Err("a faulting DMA landed during the storm".into());
        }
        let cost = s.unit.write().hardware.counters().since(&before);
        // Afterwards both devices work: a mapped DMA lands.
        for ((edu, domain), seed) in edus_open.iter().zip(&domains).zip([0x12u8, 0x34]) {
            let target = s.frame(0xA5)?;
            s.map(*domain, IOVA_TARGET, target.phys, PAGE, READ_WRITE)?;
            edu.dma(edu::Direction::ToDevice, IOVA_SOURCE, 0, PAGE as usize)
                .map_err(|err| format!("after the storm: {err:?}"))?;
            dma_to_ram(edu, IOVA_TARGET)?;
            if !holds_pattern(&target, 0, seed) {
                return Err("after the storm a mapped DMA did not land".into());
            }
        }
        println!(
            "robust amdvi: storm of {faults} blocked DMAs in {elapsed_ms} ms: {} events, {} overflows, {} records dropped, slowest COMPLETION_WAIT {} us",
            cost.events,
            cost.event_overflows,
            cost.dropped_faults,
            slowest_command_ns / 1000
        );
        Ok(())
    })
}

/// Stops command processing behind the driver's back (Control.CmdBufEn=0, §3.4.3),
/// as a wedged IOMMU would look: COMPLETION_WAIT never completes.
pub(super) fn stall_command_buffer(unit: &amdvi::AmdVi) {
    let base = unit.hardware.description().mmio_base as *mut u8;
    // SAFETY: the unit's register block (identity-mapped uncached, see the glue);
    // the caller holds the unit's lock, so no driver access races this one.
    unsafe {
        let control = base.add(regs::CONTROL.0).cast::<u64>();
        let value = core::ptr::read_volatile(control);
        core::ptr::write_volatile(control, value & !Control::CMD_BUF_EN.bits());
    }
}
