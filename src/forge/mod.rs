//! forge: not written yet.
