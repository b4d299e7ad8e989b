//! Test fixtures shared by the test suites of several crates. Not shipped.

pub mod debian;
pub mod pg;
pub mod pypi;
pub mod rpm;
pub mod s3s;
