//! The registry of in-kernel tests, one group per subsystem. A group that
//! does not apply to this machine returns `NotApplicable` from its tests
//! (e.g. the VT-d tests on a machine without VT-d), never "ok".

mod foundation;
mod tasks;

use crate::testing::Test;

/// Every test group, in the order they run.
pub static ALL: &[&[Test]] = &[foundation::TESTS, tasks::TESTS];
