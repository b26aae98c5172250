//! The resets a released function can be given before its next owner gets
//! it, and the configuration a reset clears (Linux `pci_reset_function`,
//! `pci_save_state` / `pci_restore_state`): a Function Level Reset where the
//! function has one (PCIe Base 6.0 §6.6.2; Device Capabilities §7.5.3.3,
//! Device Control §7.5.3.4), else a Secondary Bus Reset of the bridge above
//! (PCI-to-PCI Bridge 1.2 §3.2.5.18 Bridge Control), which resets everything
//! below it.

use core::time::Duration;

use os_services::{Clock, wait_until};

use crate::{Bdf, Capabilities, CapabilityId, ConfigSpace, offsets};

/// PCI Express capability registers, from the capability's start.
const DEVICE_CAPABILITIES: u16 = 0x04;
const DEVICE_CONTROL: u16 = 0x08;
/// Device Capabilities: Function Level Reset Capability.
const FLR_CAPABLE: u32 = 1 << 28;
/// Device Control: Initiate Function Level Reset (reads as 0).
const INITIATE_FLR: u16 = 1 << 15;
/// Bridge Control register of a type-1 header, and its Secondary Bus Reset.
const BRIDGE_CONTROL: u16 = 0x3E;
const SECONDARY_BUS_RESET: u16 = 1 << 6;
/// How long Secondary Bus Reset is held (Linux `pci_reset_secondary_bus`:
/// 2 ms, above the spec's 1 ms Trst).
const RESET_HOLD: Duration = Duration::from_millis(2);
/// After a reset, a function may not be accessed for 100 ms (PCIe Base 6.0
/// §6.6.1, §6.6.2), and may then answer Configuration Request Retry Status
/// for up to a second: it counts as back when its Vendor ID reads again.
const RESET_RECOVERY: Duration = Duration::from_millis(100);
const READY_TIMEOUT: Duration = Duration::from_secs(1);
/// The header dwords a reset clears and the kernel set: BARs, bus numbers
/// and windows (type 1), expansion ROM, interrupt line.
const SAVED_FIRST: u16 = offsets::BAR0;
const SAVED_DWORDS: usize = 12;

/// What a reset clears that the kernel had set up for a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedState {
    bdf: Bdf,
    command: u16,
    header: [u32; SAVED_DWORDS],
}

/// A function did not come back from a reset in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotReady(pub Bdf);

/// Reads what a reset of `bdf` would clear.
pub fn save(config: &dyn ConfigSpace, bdf: Bdf) -> SavedState {
    let mut header = [0; SAVED_DWORDS];
    for (index, dword) in header.iter_mut().enumerate() {
        *dword = config.read32(bdf, SAVED_FIRST + 4 * index as u16);
    }
    SavedState {
        bdf,
        command: config.read16(bdf, offsets::COMMAND),
        header,
    }
}

/// Writes back what [`save`] read: the header first, the command register
/// (decoding, bus mastering) last, as Linux restores it.
pub fn restore(config: &dyn ConfigSpace, saved: &SavedState) {
    for (index, &dword) in saved.header.iter().enumerate() {
        config.write32(saved.bdf, SAVED_FIRST + 4 * index as u16, dword);
    }
    config.set_command(saved.bdf, crate::Command::from_bits_retain(saved.command));
}

/// Whether `bdf` has a Function Level Reset.
pub fn supports_flr(config: &dyn ConfigSpace, bdf: Bdf) -> bool {
    Capabilities::offset_of(config, bdf, CapabilityId::PCI_EXPRESS)
        .is_some_and(|at| config.read32(bdf, at + DEVICE_CAPABILITIES) & FLR_CAPABLE != 0)
}

fn wait(clock: &dyn Clock, time: Duration) {
    let _ = wait_until(clock, time, || None::<()>);
}

/// Waits until `bdf` answers configuration reads again after a reset.
fn wait_ready(config: &dyn ConfigSpace, clock: &dyn Clock, bdf: Bdf) -> Result<(), NotReady> {
    wait(clock, RESET_RECOVERY);
    wait_until(clock, READY_TIMEOUT, || {
        (config.read16(bdf, offsets::VENDOR_ID) != u16::MAX).then_some(())
    })
    .map_err(|_| NotReady(bdf))
}

/// Resets function `bdf` alone (it must support it: [`supports_flr`]) and
/// restores its configuration.
pub fn function_level_reset(
    config: &dyn ConfigSpace,
    clock: &dyn Clock,
    bdf: Bdf,
) -> Result<(), NotReady> {
    let Some(at) = Capabilities::offset_of(config, bdf, CapabilityId::PCI_EXPRESS) else {
        return Ok(());
    };
    let saved = save(config, bdf);
    let control = config.read16(bdf, at + DEVICE_CONTROL);
    config.write16(bdf, at + DEVICE_CONTROL, control | INITIATE_FLR);
    let ready = wait_ready(config, clock, bdf);
    restore(config, &saved);
    ready
}

/// Resets every function below `bridge` with its Secondary Bus Reset and
/// restores the configuration of `below` (the functions there, bridges
/// included).
pub fn secondary_bus_reset(
    config: &dyn ConfigSpace,
    clock: &dyn Clock,
    bridge: Bdf,
    below: &[Bdf],
) -> Result<(), NotReady> {
    let saved: alloc::vec::Vec<SavedState> = below.iter().map(|&bdf| save(config, bdf)).collect();
    let control = config.read16(bridge, BRIDGE_CONTROL);
    config.write16(bridge, BRIDGE_CONTROL, control | SECONDARY_BUS_RESET);
    wait(clock, RESET_HOLD);
    config.write16(bridge, BRIDGE_CONTROL, control & !SECONDARY_BUS_RESET);
    let mut ready = Ok(());
    for state in &saved {
        let back = wait_ready(config, clock, state.bdf);
        ready = ready.and(back);
        restore(config, state);
    }
    ready
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;

    use super::*;
    use crate::model::{Model, ModelFunction};

    /// A clock that moves a millisecond each time it is read.
    struct Ticking(core::cell::Cell<u64>);

    impl Clock for Ticking {
        fn now_ns(&self) -> u64 {
            let now = self.0.get() + 1_000_000;
            self.0.set(now);
            now
        }
    }

    fn edu() -> ModelFunction {
        ModelFunction::new(0x1234, 0x11E8, 0x00FF00).with_mem32_bar(0, 1 << 20, false)
    }

    #[test]
    fn flr_is_offered_only_where_device_capabilities_say_so() {
        let mut capable = edu().with_pcie_port_type(0);
        capable.set32(0x44, FLR_CAPABLE);
        let model = Model::with(vec![
            (Bdf::new(0, 1, 0), capable),
            (Bdf::new(0, 2, 0), edu().with_pcie_port_type(0)),
            (Bdf::new(0, 3, 0), edu()),
        ]);
        assert!(supports_flr(&model, Bdf::new(0, 1, 0)));
        assert!(!supports_flr(&model, Bdf::new(0, 2, 0)));
        assert!(!supports_flr(&model, Bdf::new(0, 3, 0)));
        let clock = Ticking(Default::default());
        function_level_reset(&model, &clock, Bdf::new(0, 1, 0)).unwrap();
        let writes = model.writes.borrow();
        assert!(
            writes
                .iter()
                .any(|&(bdf, offset, value)| bdf == Bdf::new(0, 1, 0)
                    && offset == 0x48
                    && value & u32::from(INITIATE_FLR) != 0),
            "no FLR initiated: {writes:?}"
        );
    }

    /// The bridge's Secondary Bus Reset is asserted, then released, and the
    /// BAR and command of the function below come back as they were.
    #[test]
    fn a_secondary_bus_reset_restores_what_it_cleared() {
        let bridge = Bdf::new(0, 6, 0);
        let below = Bdf::new(1, 1, 0);
        let model = Model::with(vec![
            (bridge, ModelFunction::bridge(0x1B36, 0x000E)),
            (below, edu()),
        ]);
        model.write32(below, offsets::BAR0, 0x1000_0000);
        model.set_command(below, crate::Command::MEMORY_SPACE);
        let saved = save(&model, below);
        // What a reset does to the function, as QEMU's bus reset does.
        {
            let mut functions = model.functions.borrow_mut();
            let function = functions.get_mut(&below).unwrap();
            function.set32(offsets::BAR0 as usize, 0);
            function.set32(offsets::COMMAND as usize, 0);
        }
        restore(&model, &saved);
        assert_eq!(model.read32(below, offsets::BAR0), 0x1000_0000);
        assert!(model.command(below).contains(crate::Command::MEMORY_SPACE));

        let clock = Ticking(Default::default());
        model.writes.borrow_mut().clear();
        secondary_bus_reset(&model, &clock, bridge, &[below]).unwrap();
        let control: vec::Vec<u32> = model
            .writes
            .borrow()
            .iter()
            .filter(|&&(bdf, offset, _)| bdf == bridge && offset == 0x3C)
            .map(|&(_, _, value)| value >> 16)
            .collect();
        assert_eq!(
            control,
            [u32::from(SECONDARY_BUS_RESET), 0],
            "asserted, then released"
        );
        assert_eq!(model.read32(below, offsets::BAR0), 0x1000_0000);
    }

    #[test]
    fn a_function_that_never_comes_back_is_reported() {
        let model = Model::with(vec![(Bdf::new(0, 6, 0), ModelFunction::bridge(1, 2))]);
        let clock = Ticking(Default::default());
        assert_eq!(
            secondary_bus_reset(&model, &clock, Bdf::new(0, 6, 0), &[Bdf::new(1, 0, 0)]),
            Err(NotReady(Bdf::new(1, 0, 0)))
        );
    }
}
