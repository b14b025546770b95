//! The batch systems' side of a node, what runs as root: Slurm's prolog and
//! epilog (`slurm`), HTCondor's hooks (`condor`), and the node service that
//! deploys for HTCondor's jobs (`node_service`). `frontend` is what they share:
//! a request admitted, a domain booted, a command run in it.

pub mod condor;
pub mod frontend;
pub mod hook_log;
pub mod node_service;
pub mod parse_jail;
pub mod slurm;
