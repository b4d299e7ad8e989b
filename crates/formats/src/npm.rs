//! npm: see module docs (in progress).
