//! ssh: not written yet.
