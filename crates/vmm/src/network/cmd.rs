//! Running Debian's `ip` and `nft`: fixed argument vectors, nft scripts on
//! stdin (`nft -f -`), and what they print bounded in the error.

use super::NetworkError;
use std::io::Write;
use std::process::{Command, Stdio};

/// At most this much of a tool's stderr goes into an error message.
const MAX_STDERR: usize = 2048;

fn tool_path(tool: &str) -> &'static str {
    match tool {
        "ip" => "/usr/sbin/ip",
        "nft" => "/usr/sbin/nft",
        "bridge" => "/usr/sbin/bridge",
        _ => unreachable!("only ip, bridge and nft are run"),
    }
}

/// Output of a finished command.
pub(super) struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

fn bounded(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= MAX_STDERR {
        return text.to_string();
    }
    let mut cut = MAX_STDERR;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// Runs `tool args...` (with `stdin` fed if given); a tool that cannot be
/// started is an error, a non-zero exit is returned as `ok: false`.
pub(super) fn run_raw(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<Ran, NetworkError> {
    let path = tool_path(tool);
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn_err = |source| NetworkError::Tool {
        tool: path,
        source,
        package: if tool == "nft" {
            "nftables"
        } else {
            "iproute2"
        },
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        // A failed write shows as nft's own error below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    // Our own listings are small; a huge one is cut rather than held.
    let mut stdout = out.stdout;
    stdout.truncate(1 << 20);
    Ok(Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: bounded(&out.stderr),
    })
}

/// Runs `tool args...`; a non-zero exit is [`NetworkError::Command`].
pub(super) fn run(tool: &str, args: &[&str]) -> Result<String, NetworkError> {
    let ran = run_raw(tool, args, None)?;
    if ran.ok {
        Ok(ran.stdout)
    } else {
        Err(NetworkError::Command {
            command: format!("{tool} {}", args.join(" ")),
            stderr: ran.stderr,
        })
    }
}

/// Applies an nft script in one transaction (`nft -f -`).
pub(super) fn nft_script(what: &str, script: &str) -> Result<(), NetworkError> {
    let ran = run_raw("nft", &["-f", "-"], Some(script))?;
    if ran.ok {
        Ok(())
    } else {
        Err(NetworkError::Command {
            command: format!("nft -f - ({what})"),
            stderr: ran.stderr,
        })
    }
}

/// Whether network interface `name` exists (in this network namespace:
/// asks `ip`, not /sys, whose view is the namespace that mounted it).
pub(super) fn link_exists(name: &str) -> Result<bool, NetworkError> {
    let ran = run_raw("ip", &["-o", "link", "show", "dev", name], None)?;
    if ran.ok {
        Ok(true)
    } else if ran.stderr.contains("does not exist") {
        Ok(false)
    } else {
        Err(NetworkError::Command {
            command: format!("ip -o link show dev {name}"),
            stderr: ran.stderr,
        })
    }
}

/// The bridge link `name` is a port of: Ok(None) if it is on none or does
/// not exist (the caller tells those apart with [`link_exists`]). Asks
/// `ip`, not /sys, which shows the netns it was mounted in.
pub(super) fn master_of(name: &str) -> Result<Option<String>, NetworkError> {
    let ran = run_raw("ip", &["-o", "link", "show", "dev", name], None)?;
    if !ran.ok {
        return Ok(None);
    }
    let mut words = ran.stdout.split_whitespace();
    Ok(words
        .by_ref()
        .find(|w| *w == "master")
        .and(words.next())
        .map(str::to_string))
}

/// Deletes link `name`; one already gone is fine. Returns whether it was there.
pub(super) fn delete_link(name: &str) -> Result<bool, NetworkError> {
    if !link_exists(name)? {
        return Ok(false);
    }
    let ran = run_raw("ip", &["link", "delete", "dev", name], None)?;
    if ran.ok || ran.stderr.contains("Cannot find device") || !link_exists(name)? {
        Ok(true)
    } else {
        Err(NetworkError::Command {
            command: format!("ip link delete dev {name}"),
            stderr: ran.stderr,
        })
    }
}

/// Whether nft table `family name` exists.
pub(super) fn table_exists(family: &str, name: &str) -> Result<bool, NetworkError> {
    let ran = run_raw("nft", &["list", "table", family, name], None)?;
    if ran.ok {
        Ok(true)
    } else if ran.stderr.contains("No such file or directory")
        || ran.stderr.contains("does not exist")
    {
        Ok(false)
    } else {
        Err(NetworkError::Command {
            command: format!("nft list table {family} {name}"),
            stderr: ran.stderr,
        })
    }
}

/// Deletes nft table `family name`; one already gone is fine.
pub(super) fn delete_table(family: &str, name: &str) -> Result<bool, NetworkError> {
    if !table_exists(family, name)? {
        return Ok(false);
    }
    // `destroy` (nft 1.0.8) would be one step; Debian 12 has 1.0.6.
    let ran = run_raw("nft", &["delete", "table", family, name], None)?;
    if ran.ok || !table_exists(family, name)? {
        Ok(true)
    } else {
        Err(NetworkError::Command {
            command: format!("nft delete table {family} {name}"),
            stderr: ran.stderr,
        })
    }
}

/// Writes a sysctl of this network namespace (`/proc/sys/net/...` is the
/// caller's namespace, read at open).
pub(super) fn sysctl(path: &str, value: &str) -> Result<(), NetworkError> {
    let full = format!("/proc/sys/{path}");
    std::fs::write(&full, value).map_err(|source| NetworkError::Sysctl { path: full, source })
}
