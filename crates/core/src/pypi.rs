//! pypi
