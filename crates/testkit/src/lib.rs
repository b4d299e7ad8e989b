//! Test fixtures shared by the test suites of several crates. Not shipped.

pub mod debian;
pub mod pypi;
pub mod rpm;
