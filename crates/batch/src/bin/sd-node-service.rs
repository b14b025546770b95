//! `sd-node-service`: serves the HTCondor hooks of this node, as root, on
//! the host. A binary of its own, apart from the `sd` command: what holds
//! root here links no parser of user text (README "Security model").

use sd_batch::node_service;
use sd_site::SiteConfig;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: sd-node-service [--config PATH] [--socket PATH] [--pid-file PATH] [--any-caller]

Serves the HTCondor job hooks of this node (run as root, on the host).
HTCondor runs its job hooks as the job's owner; they ask this service, over
a Unix socket, to deploy and tear down the job's domain. It knows the caller
from the kernel (SO_PEERCRED), serves only processes under a condor_starter
(unless --any-caller), deploys for the caller's uid and tears down only the
caller's deployments. Logs go to LOG_DIR/sd-hooks.log and syslog. Stops on
SIGTERM.

  --config PATH    the site configuration ($SD_CONFIG, else /etc/smartdomains/site.yaml)
  --socket PATH    the socket the hooks connect to (default /run/smartdomains/node.sock;
                   bind-mount its directory into HTCondor's root, if it has one)
  --pid-file PATH  write our PID here
  --any-caller     serve any local user, not only HTCondor job hooks";

fn main() -> ExitCode {
    let mut config = None;
    let mut socket = PathBuf::from(node_service::DEFAULT_SOCKET);
    let mut pid_file = None;
    let mut any_caller = false;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let parsed = match arg.to_str() {
            Some("--config") => value("--config").map(|v| config = Some(v)),
            Some("--socket") => value("--socket").map(|v| socket = v),
            Some("--pid-file") => value("--pid-file").map(|v| pid_file = Some(v)),
            Some("--any-caller") => {
                any_caller = true;
                Ok(())
            }
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => Err(format!("unknown argument {arg:?}")),
        };
        if let Err(e) = parsed {
            eprintln!("sd-node-service: {e}\n\n{USAGE}");
            return ExitCode::from(sd_site::ExitCode::REFUSED as u8);
        }
    }
    let config = config.unwrap_or_else(SiteConfig::default_path);
    let code = node_service::serve(&config, &socket, pid_file.as_deref(), any_caller);
    ExitCode::from(code as u8)
}
