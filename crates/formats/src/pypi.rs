//! PyPI: see module docs (in progress).
