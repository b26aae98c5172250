//! Time from the TSC, calibrated once against the ACPI PM timer.
//!
//! The PM timer runs at a fixed 3.579545 MHz (ACPI 6.5 §4.8.3.3) but is only
//! 24 bits wide and slow to read (a port access, an exit under KVM); the TSC
//! is cheap and, once its rate is known, a fine monotonic clock.

use core::sync::atomic::Ordering;

use x86_64::instructions::port::Port;

use super::PM_TIMER_PORT;

const PM_TIMER_HZ: u64 = 3_579_545;
const PM_TIMER_MASK: u32 = 0x00FF_FFFF;
/// Calibration window: 10 ms of PM timer ticks.
const CALIBRATION_TICKS: u32 = (PM_TIMER_HZ / 100) as u32;

static TSC_HZ: spin::Once<u64> = spin::Once::new();

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn calibrate() -> u64 {
    let mut port = Port::<u32>::new(PM_TIMER_PORT.load(Ordering::Relaxed));
    // SAFETY: reading the PM timer has no side effects.
    let mut read = || unsafe { port.read() } & PM_TIMER_MASK;
    let start_ticks = read();
    let start_tsc = rdtsc();
    let mut elapsed = 0;
    // Bounded by the PM timer itself; a missing timer reads as all-ones and
    // never advances, so also bound by a generous TSC count.
    while elapsed < CALIBRATION_TICKS && rdtsc() - start_tsc < 50_000_000_000 {
        elapsed = read().wrapping_sub(start_ticks) & PM_TIMER_MASK;
    }
    let tsc = rdtsc() - start_tsc;
    if elapsed == 0 {
        // Assume 1 GHz rather than divide by zero; times will be off, not wrong-signed.
        return 1_000_000_000;
    }
    tsc * PM_TIMER_HZ / u64::from(elapsed)
}

/// Nanoseconds since an arbitrary point at boot.
pub fn now_ns() -> u64 {
    let hz = *TSC_HZ.call_once(calibrate);
    (u128::from(rdtsc()) * 1_000_000_000 / u128::from(hz)) as u64
}
