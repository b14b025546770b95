//! SPANK plugin (being written).
