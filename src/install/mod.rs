//! install: not written yet.
