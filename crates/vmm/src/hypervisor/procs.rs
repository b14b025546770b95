//! Finding a backend's processes in /proc by their command line: QEMU
//! domains by `-name`, Xen device models by `-xen-domid`.

/// PIDs of the processes whose arguments (argv, split at NUL) satisfy
/// `wanted` and whose real uid is one of `uids` (None: any uid).
pub(crate) fn matching(uids: Option<&[u32]>, wanted: impl Fn(&[&[u8]]) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            wanted(&args)
        })
        // The real uid (from `status`: `/proc/PID`'s owner is root for a
        // process that made itself non-dumpable).
        .filter(|pid| {
            uids.is_none_or(|uids| {
                sd_host::peer::real_uid(*pid as i32).is_some_and(|u| uids.contains(&u))
            })
        })
        .collect()
}

/// Whether `args` holds `flag` directly followed by `value`.
pub(crate) fn has_option(args: &[&[u8]], flag: &[u8], value: &[u8]) -> bool {
    args.windows(2).any(|w| w[0] == flag && w[1] == value)
}

#[cfg(test)]
mod tests {
    use super::has_option;

    #[test]
    fn an_option_is_a_flag_followed_by_its_value() {
        let args: Vec<&[u8]> = vec![b"qemu", b"-name", b"guest=a", b"-m", b"256"];
        assert!(has_option(&args, b"-name", b"guest=a"));
        assert!(!has_option(&args, b"-name", b"256"));
        assert!(!has_option(&args, b"-m", b"guest=a"));
    }
}
