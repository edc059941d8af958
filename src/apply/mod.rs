//! apply: not written yet.
