//! What a name may be: images, hosts, VOs, accounts, LVM volumes. Shared by
//! loading (the admin's names) and admission (the user's).

use std::path::{Path, PathBuf};

/// A user or group name as NSS may return it (LDAP names can have upper
/// case and dots): not empty, no white space, ':', ',' or '/' (the
/// separators of passwd, group and paths), at most 256 bytes.
pub fn validate_account_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 256 {
        return Err("a user or group name is 1 to 256 characters".into());
    }
    if name == "*" {
        return Err("\"*\" (every user) belongs under users, not unix_groups".into());
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ':' | ',' | '/'))
    {
        return Err("a user or group name has no white space, ':', ',' or '/'".into());
    }
    Ok(())
}

/// Longest image name accepted (in the catalogue or in a request).
pub const MAX_IMAGE_NAME_LEN: usize = 128;

// ---------------------------------------------------------------------------
// Validation helpers shared with `policy`
// ---------------------------------------------------------------------------

/// An image name is `[a-z0-9][a-z0-9._-]*` (at most [`MAX_IMAGE_NAME_LEN`]
/// characters): never a path. Returns why not.
pub fn validate_image_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an image name must not be empty".into());
    }
    if name.contains(['/', '\\']) || name.contains("..") {
        return Err("an image is named by its catalogue name, never by a path".into());
    }
    if name.len() > MAX_IMAGE_NAME_LEN {
        return Err(format!(
            "an image name has at most {MAX_IMAGE_NAME_LEN} characters"
        ));
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err("an image name starts with a lower-case letter or a digit".into());
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed in an image name (lower-case letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// An RFC 1123 host name: labels of letters, digits and hyphens, 1 to 63
/// characters each, not starting or ending with a hyphen, separated by dots;
/// 253 characters at most. Returns why not.
pub fn validate_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a host name must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "a host name has at most 253 characters, this one has {}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(
                "empty label (a host name does not start or end with '.', nor contain '..')".into(),
            );
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(format!(
                "{c:?} is not allowed (letters, digits and '-' only)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    Ok(())
}

/// A VO name: `[A-Za-z0-9][A-Za-z0-9._-]*`.
pub(crate) fn validate_vo_name(name: &str) -> Result<(), String> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(
            "a VO name is letters, digits, '.', '_' and '-', starting with a letter or digit"
                .into(),
        )
    }
}

/// Longest network name: a Linux interface name (15 bytes), so the host
/// side may name an interface after it.
pub const MAX_NETWORK_NAME_LEN: usize = 15;

/// A site network's name: lower-case letters, digits and '-', starting with
/// a letter, at most [`MAX_NETWORK_NAME_LEN`] characters; `none` is
/// reserved (no network). Returns why not.
pub fn validate_network_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a network name must not be empty".into());
    }
    if name.len() > MAX_NETWORK_NAME_LEN {
        return Err(format!(
            "a network name has at most {MAX_NETWORK_NAME_LEN} characters"
        ));
    }
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return Err("a network name starts with a lower-case letter".into());
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return Err(format!(
            "{c:?} is not allowed in a network name (lower-case letters, digits, '-')"
        ));
    }
    if name == crate::NO_NETWORK {
        return Err("\"none\" is reserved: it means no network".into());
    }
    Ok(())
}

/// A Linux network interface name (a host bridge): 1 to 15 bytes of
/// letters, digits, '.', '_' and '-'. Returns why not.
pub fn validate_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err("an interface name is 1 to 15 characters".into());
    }
    if name == "." || name == ".." {
        return Err("an interface name is not \".\" or \"..\"".into());
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed in an interface name (letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// Longest volume-group or logical-volume name we accept.
pub const MAX_VOLUME_NAME_LEN: usize = 64;

/// Substrings lvm2 reserves for its internal (hidden) volumes; it would refuse
/// them anyway, we just say so before running anything.
pub(crate) const RESERVED: &[&str] = &[
    "_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_mimage", "_mlog", "_pmspare", "_rimage",
    "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig",
];

/// Checks a VG or LV name: `[a-z0-9][a-z0-9._-]*`, at most [`MAX_VOLUME_NAME_LEN`]
/// bytes, none of lvm2's reserved suffixes or prefixes. Stricter than lvm2
/// itself (no upper case, no `+`), so a name never needs quoting and never
/// looks like an option.
pub fn validate_volume_name(name: &str) -> Result<(), &'static str> {
    let bad = Err;
    let Some(first) = name.bytes().next() else {
        return bad("empty");
    };
    if name.len() > MAX_VOLUME_NAME_LEN {
        return bad("longer than 64 bytes");
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return bad("must start with a-z or 0-9");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only a-z, 0-9, '.', '_' and '-' are allowed");
    }
    if RESERVED.iter().any(|r| name.contains(r)) {
        return bad("contains a suffix lvm2 reserves for internal volumes");
    }
    if name.starts_with("pvmove") || name.starts_with("snapshot") {
        return bad("starts with a prefix lvm2 reserves (pvmove, snapshot)");
    }
    Ok(())
}

/// The device node of logical volume `vg/lv`.
pub fn volume_device_path(vg: &str, lv: &str) -> PathBuf {
    Path::new("/dev").join(vg).join(lv)
}
