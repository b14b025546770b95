//! Admission policy (in progress).
