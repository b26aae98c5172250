//! The registry of in-kernel tests, grouped by what they exercise.

mod foundation;

use crate::testing::Test;

/// Every test, in the order it runs.
pub static ALL: &[Test] = foundation::TESTS;
