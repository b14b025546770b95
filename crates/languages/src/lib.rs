//! The languages users write: a job's JDL (a ClassAd), and a pool's
//! description (SmartFrog `.sf` or YAML). Everything here parses untrusted
//! text; nothing here runs as root (README "Security model").

pub mod description;
pub mod jdl;
