//! SmartDomains' user side: the `sd` command's jobs (`job`: `sd run`) and
//! pools (`pool`: `sd start`, `sd terminate`, after SmartFrog). The
//! crates below it are in the README's "Architecture".

pub mod check;
pub mod console;
pub mod exec;
pub mod job;
pub mod pool;
pub mod progress;
pub mod settings;
