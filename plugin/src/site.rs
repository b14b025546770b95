//! The site configuration: the one YAML file a site admin writes
//! (`/etc/smartdomains/site.yaml`, or `$SD_CONFIG`).
//!
//! Loading parses the file (every key is known: a typo is an error with its
//! `FILE:LINE:COLUMN`), fills in defaults, resolves paths, and checks that the
//! file makes sense as a whole (VOs name catalogue images, limits are not
//! zero, defaults fit every VO's limits …). It does not look at the disk:
//! [`SiteConfig::check_files`] does that, for `sd check-config`.
//!
//! Relative paths in the file are relative to the file's directory; catalogue
//! files (`disk`, `kernel`, `initrd`) are relative to `image_dir`.
//!
//! An image of `format: lvm` has no disk file: its base is a thin logical
//! volume (`lv:`, default: the image's name) in the site's `lvm:` volume
//! group and thin pool, and every job gets a thin snapshot of it
//! (`storage::create_lvm_job_disk`):
//!
//! ```yaml
//! lvm: { vg: sdvg, thin_pool: pool }   # thin_pool default: pool
//! images:
//!   busybox: { format: lvm, lv: busybox-base, kernel: vmlinuz, initrd: initrd.img }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_saphyr::{Location, MessageFormatter, Spanned, UserMessageFormatter};

/// Where the site configuration lives unless `$SD_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smartdomains/site.yaml";

const DEFAULT_STATE_DIR: &str = "/var/lib/smartdomains";
const DEFAULT_LOG_DIR: &str = "/var/log/smartdomains";
const DEFAULT_QEMU_BINARY: &str = "qemu-system-x86_64";
const DEFAULT_BOOT_TIMEOUT_SECS: u64 = 60;
const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 10;
/// A request (JDL) is small: 1 MiB is ~100 times the largest real one.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1 << 20;
const DEFAULT_MEMORY_MIB: u64 = 512;
const DEFAULT_VCPUS: u32 = 1;
const DEFAULT_DISK_MIB: u64 = 2048;
const DEFAULT_HOSTNAME: &str = "sd-guest";
const DEFAULT_THIN_POOL: &str = "pool";

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
// The resolved configuration
// ---------------------------------------------------------------------------

/// The site configuration, defaults filled in and paths resolved (absolute).
#[derive(Debug, Clone, Serialize)]
pub struct SiteConfig {
    /// The file this configuration was read from (absolute).
    pub path: PathBuf,
    /// Journals, sockets and overlays of running domains.
    pub state_dir: PathBuf,
    /// Directory the catalogue's files are relative to.
    pub image_dir: PathBuf,
    /// Console logs of domains.
    pub log_dir: PathBuf,
    pub backend: Backend,
    pub acceleration: Acceleration,
    pub qemu: QemuConfig,
    pub xen: XenConfig,
    pub boot_timeout_secs: u64,
    pub shutdown_timeout_secs: u64,
    /// Largest request (a JDL) root reads for a user, in bytes: checked on the
    /// open file before reading, so a huge or sparse file costs nothing.
    pub max_request_bytes: u64,
    /// What a job gets for what it does not ask for.
    pub defaults: SiteDefaults,
    /// The image catalogue, by name.
    pub images: BTreeMap<String, CatalogueImage>,
    /// The VOs this site serves, by name.
    pub vos: BTreeMap<String, VoPolicy>,
    /// VO of jobs that name none.
    pub default_vo: Option<String>,
    /// When a job's disk is kept as a new image in the store.
    pub save_images: SavePolicy,
    /// The `lvm:` section: where the bases of `format: lvm` images live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lvm: Option<LvmConfig>,
    /// The `node_limits:` section: what this node runs at most, for every
    /// front end.
    #[serde(skip_serializing_if = "NodeLimits::is_default")]
    pub node_limits: NodeLimits,
}

/// The `node_limits:` section. Checked before a deployment makes anything,
/// under a lock shared by every front end on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NodeLimits {
    /// Domains on this node at once.
    pub max_domains: u32,
    /// Domains of one uid on this node at once.
    pub max_domains_per_user: u32,
    /// Host memory no domain may have: domains share MemTotal minus this.
    pub memory_reserve_mib: u64,
}

impl Default for NodeLimits {
    fn default() -> NodeLimits {
        // Memory is what bounds a node first; the counts bound the rest
        // (a pool of 16 members of one user, as tests/pool.rs boots, fits).
        NodeLimits {
            max_domains: 32,
            max_domains_per_user: 16,
            memory_reserve_mib: 1024,
        }
    }
}

impl NodeLimits {
    fn is_default(&self) -> bool {
        *self == NodeLimits::default()
    }
}

/// The `lvm:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LvmConfig {
    /// Volume group of the thin pool.
    pub vg: String,
    /// Thin pool the base volumes (and so the job snapshots) live in.
    pub thin_pool: String,
}

/// Where an `lvm` image's base is: a thin volume `vg/lv` of pool `thin_pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LvmBase {
    pub vg: String,
    pub thin_pool: String,
    pub lv: String,
}

/// When a job's disk becomes a new image in the site's image store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SavePolicy {
    /// Never; a job that asks (`SaveImage = true`) is refused.
    Never,
    /// When the job asks.
    OnRequest,
    /// When the job asks and ends with exit status 0.
    OnSuccess,
    /// After every job.
    Always,
}

/// Which hypervisor runs the domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Auto,
    Qemu,
    Xen,
}

/// Hardware acceleration for QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Acceleration {
    Auto,
    Kvm,
    Tcg,
}

/// Format of a catalogue disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
    /// A thin logical volume (raw contents); the job's disk is a thin snapshot.
    Lvm,
}

/// The `qemu:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QemuConfig {
    /// A bare name is looked up in `$PATH`; a name with a `/` is a path
    /// (relative to the config file's directory).
    pub binary: PathBuf,
    /// User QEMU drops to (`-runas`) when started by root.
    pub run_as: Option<String>,
    /// `-sandbox on`.
    pub sandbox: bool,
}

/// The `xen:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XenConfig {
    /// PV (no hardware virtualisation needed) or PVH.
    pub guest_type: XenGuestType,
    /// `xl`'s `cpuid =` for PVH guests: the host's policy with these
    /// changes. The default hides `rdtscp`, which nested SVM (Xen under
    /// QEMU) cannot emulate.
    pub pvh_cpuid: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XenGuestType {
    Pv,
    Pvh,
}

/// The site-wide `defaults:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteDefaults {
    /// Image of jobs that name none (`None`: such jobs are refused).
    pub image: Option<String>,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub disk_mib: u64,
    pub hostname: String,
}

/// An image's own `defaults:`, overriding the site's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    pub memory_mib: Option<u64>,
    pub vcpus: Option<u32>,
    pub disk_mib: Option<u64>,
    pub hostname: Option<String>,
}

/// One entry of the image catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueImage {
    pub name: String,
    /// Base disk (absolute); a job's disk is a copy-on-write overlay on it.
    /// For an `lvm` image, its base volume's device `/dev/VG/LV`.
    pub disk: PathBuf,
    pub format: DiskFormat,
    /// The base volume of an `lvm` image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lvm: Option<LvmBase>,
    /// Guest kernel (absolute).
    pub kernel: PathBuf,
    /// Guest initrd (absolute).
    pub initrd: PathBuf,
    pub description: Option<String>,
    pub defaults: ImageDefaults,
}

/// What a VO may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VoPolicy {
    pub name: String,
    pub images: AllowedImages,
    /// `None`: no limit beyond the host's.
    pub max_memory_mib: Option<u64>,
    pub max_vcpus: Option<u32>,
    pub max_disk_mib: Option<u64>,
    /// Most the VO's saved images may take in the store (compressed).
    pub max_store_mib: Option<u64>,
    /// Who belongs to it (`unix_groups`, `users`).
    pub members: VoMembers,
}

/// Who belongs to a VO, as the site admin wrote it: the users in any of
/// `unix_groups`, and the users named in `users` (`"*"`: every local user).
/// Checked against the job owner's groups from the user database
/// ([`crate::owner`]), never against what a request says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VoMembers {
    pub unix_groups: Vec<String>,
    pub users: Vec<String>,
    /// `users: ["*"]`: every user the node knows (a test bed, not a grid site).
    pub everyone: bool,
}

impl VoMembers {
    pub fn admits(&self, user: &crate::owner::UnixUser) -> bool {
        self.everyone
            || self.users.contains(&user.name)
            || self
                .unix_groups
                .iter()
                .any(|g| user.groups.iter().any(|ug| ug == g))
    }
}

impl fmt::Display for VoMembers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.everyone {
            return f.write_str("every local user");
        }
        let mut parts = Vec::new();
        if !self.unix_groups.is_empty() {
            parts.push(format!("Unix groups {}", self.unix_groups.join(", ")));
        }
        if !self.users.is_empty() {
            parts.push(format!("users {}", self.users.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("none but root")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// The images a VO may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedImages {
    /// `"*"`: the whole catalogue.
    All,
    /// These catalogue names (all in the catalogue, checked at load).
    Only(Vec<String>),
}

impl AllowedImages {
    pub fn allows(&self, image: &str) -> bool {
        match self {
            AllowedImages::All => true,
            AllowedImages::Only(names) => names.iter().any(|n| n == image),
        }
    }
}

impl fmt::Display for AllowedImages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedImages::All => f.write_str("*"),
            AllowedImages::Only(names) => f.write_str(&names.join(", ")),
        }
    }
}

impl Serialize for AllowedImages {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AllowedImages::All => s.serialize_str("*"),
            AllowedImages::Only(names) => names.serialize(s),
        }
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a site configuration could not be loaded. Every variant is a site
/// fault (the admin's file), never a job's.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, an unknown key, a value of the wrong type or an unknown
    /// enum value.
    #[error("{}: {message}", place(file, *at))]
    Parse {
        file: PathBuf,
        at: Option<(u32, u32)>,
        message: String,
    },
    /// Valid YAML that does not make sense as a site configuration.
    /// `yaml_path` names the key (`vos.demo.images[1]`), `at` its line and
    /// column when known (a default has none).
    #[error("{}: {yaml_path}: {message}", place(file, *at))]
    Invalid {
        file: PathBuf,
        at: Option<(u32, u32)>,
        yaml_path: String,
        message: String,
    },
}

impl ConfigError {
    /// Line and column (1-based) the error points at, if any.
    pub fn position(&self) -> Option<(u32, u32)> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Parse { at, .. } | ConfigError::Invalid { at, .. } => *at,
        }
    }
}

fn place(file: &Path, at: Option<(u32, u32)>) -> String {
    match at {
        Some((line, column)) => format!("{}:{line}:{column}", file.display()),
        None => file.display().to_string(),
    }
}

fn position(loc: Location) -> Option<(u32, u32)> {
    (loc.line() > 0).then(|| (loc.line() as u32, loc.column() as u32))
}

/// serde-saphyr's user-facing messages, with friendlier wording for the
/// errors a site admin is most likely to meet.
struct Messages;

impl MessageFormatter for Messages {
    fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> std::borrow::Cow<'a, str> {
        use serde_saphyr::Error as E;
        match err {
            E::AliasError { error, .. } | E::WithSnippet { error, .. } => {
                self.format_message(error)
            }
            E::InvalidScalar { ty, .. } => match *ty {
                "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => {
                    "expected a whole number (0 or more)".into()
                }
                "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "expected a whole number".into(),
                "bool" => "expected true or false".into(),
                other => format!("invalid {other}").into(),
            },
            E::Unexpected {
                expected: "mapping start",
                ..
            } => "expected a mapping (`key: value` entries)".into(),
            E::Unexpected {
                expected: "sequence start",
                ..
            } => "expected a list".into(),
            _ => UserMessageFormatter.format_message(err),
        }
    }
}

fn parse_error(file: &Path, err: &serde_saphyr::Error) -> ConfigError {
    let message: String = Messages
        .format_message(err)
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    ConfigError::Parse {
        file: file.to_path_buf(),
        at: err.location().and_then(position),
        message,
    }
}

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
fn validate_vo_name(name: &str) -> Result<(), String> {
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

// ---------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    state_dir: Option<S<PathBuf>>,
    image_dir: Option<S<PathBuf>>,
    log_dir: Option<S<PathBuf>>,
    backend: Option<Backend>,
    acceleration: Option<Acceleration>,
    qemu: Option<RawQemu>,
    xen: Option<RawXen>,
    boot_timeout_secs: Option<S<u64>>,
    shutdown_timeout_secs: Option<S<u64>>,
    max_request_bytes: Option<S<u64>>,
    defaults: Option<RawSiteDefaults>,
    images: Option<SpannedMap<RawImage>>,
    vos: Option<SpannedMap<RawVo>>,
    default_vo: Option<S<String>>,
    save_images: Option<SavePolicy>,
    lvm: Option<RawLvm>,
    node_limits: Option<RawNodeLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeLimits {
    max_domains: Option<S<u32>>,
    max_domains_per_user: Option<S<u32>>,
    memory_reserve_mib: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLvm {
    vg: S<String>,
    thin_pool: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQemu {
    binary: Option<S<String>>,
    run_as: Option<S<String>>,
    sandbox: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawXen {
    guest_type: Option<XenGuestType>,
    pvh_cpuid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSiteDefaults {
    image: Option<S<String>>,
    memory_mib: Option<S<u64>>,
    vcpus: Option<S<u32>>,
    disk_mib: Option<S<u64>>,
    hostname: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImageDefaults {
    memory_mib: Option<S<u64>>,
    vcpus: Option<S<u32>>,
    disk_mib: Option<S<u64>>,
    hostname: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    disk: Option<S<PathBuf>>,
    format: Option<S<DiskFormat>>,
    lv: Option<S<String>>,
    kernel: S<PathBuf>,
    initrd: S<PathBuf>,
    description: Option<String>,
    defaults: Option<RawImageDefaults>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVo {
    images: S<RawAllowed>,
    max_memory_mib: Option<S<u64>>,
    max_vcpus: Option<S<u32>>,
    max_disk_mib: Option<S<u64>>,
    max_store_mib: Option<S<u64>>,
    unix_groups: Option<Vec<S<String>>>,
    users: Option<Vec<S<String>>>,
}

/// `images:` of a VO: a list of names, or a single name; `"*"` = all.
struct RawAllowed(Vec<S<String>>);

impl<'de> Deserialize<'de> for RawAllowed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawAllowed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of image names, or \"*\" for all")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawAllowed, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<S<String>>()? {
                    names.push(name);
                }
                Ok(RawAllowed(names))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawAllowed, E> {
                // The span of a lone string is the enclosing Spanned's.
                Ok(RawAllowed(vec![Spanned::new(
                    v.to_string(),
                    Location::UNKNOWN,
                    Location::UNKNOWN,
                )]))
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping whose keys keep their position; order as written. (Duplicate
/// keys are already an error in serde-saphyr.)
struct SpannedMap<V>(Vec<(S<String>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SpannedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = SpannedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of names to entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SpannedMap<V>, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<S<String>>()? {
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(SpannedMap(entries))
            }
        }
        d.deserialize_map(Vis(PhantomData))
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

impl SiteConfig {
    /// `$SD_CONFIG` if set (and not empty), else `/etc/smartdomains/site.yaml`.
    pub fn default_path() -> PathBuf {
        match std::env::var_os("SD_CONFIG") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_CONFIG_PATH),
        }
    }

    /// Read and check the configuration at `path`.
    pub fn load(path: &Path) -> Result<SiteConfig, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        SiteConfig::from_str(&src, path)
    }

    /// Parse and check `src` as if read from `path` (which names the file in
    /// errors and is the base of relative paths; it is not read).
    pub fn from_str(src: &str, path: &Path) -> Result<SiteConfig, ConfigError> {
        let raw: RawSite = serde_saphyr::from_str(src).map_err(|e| parse_error(path, &e))?;
        Builder { file: path }.build(raw)
    }

    /// Problems with `image_dir` and the catalogue files (disks, kernels,
    /// initrds): missing, unreadable, or not regular files (a disk may also
    /// be a block device). One message each; empty when all are there.
    pub fn check_files(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match std::fs::metadata(&self.image_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => problems.push(format!(
                "image_dir {}: not a directory",
                self.image_dir.display()
            )),
            Err(e) => problems.push(format!("image_dir {}: {e}", self.image_dir.display())),
        }
        for image in self.images.values() {
            if let Some(base) = &image.lvm {
                if let Some(problem) = lvm_base_problem(base) {
                    problems.push(format!("image {:?}: {problem}", image.name));
                }
            }
            for (what, file) in [
                ("disk", &image.disk),
                ("kernel", &image.kernel),
                ("initrd", &image.initrd),
            ] {
                if what == "disk" && image.lvm.is_some() {
                    continue;
                }
                match std::fs::metadata(file) {
                    Ok(m) if m.is_file() => {}
                    // A raw disk may be a logical volume.
                    Ok(m) if what == "disk" && m.file_type().is_block_device() => {}
                    Ok(_) => problems.push(format!(
                        "image {:?}: {what} {}: not a regular file",
                        image.name,
                        file.display()
                    )),
                    Err(e) => problems.push(format!(
                        "image {:?}: {what} {}: {e}",
                        image.name,
                        file.display()
                    )),
                }
            }
        }
        // Members the node's user database does not know match nobody.
        for vo in self.vos.values() {
            let m = &vo.members;
            for g in &m.unix_groups {
                if nix::unistd::Group::from_name(g).ok().flatten().is_none() {
                    problems.push(format!(
                        "VO {:?}: Unix group {g:?} is not in this node's group database",
                        vo.name
                    ));
                }
            }
            for u in &m.users {
                if nix::unistd::User::from_name(u).ok().flatten().is_none() {
                    problems.push(format!(
                        "VO {:?}: user {u:?} is not in this node's user database",
                        vo.name
                    ));
                }
            }
        }
        problems
    }
}

/// Why `base` cannot be snapshotted (asks lvm2), or None.
fn lvm_base_problem(base: &LvmBase) -> Option<String> {
    let pool = match crate::storage_lvm::LvmThin::new(&base.vg, &base.thin_pool) {
        Ok(p) => p,
        Err(e) => return Some(e.to_string()),
    };
    match pool.base_exists(&base.lv) {
        Ok(true) => None,
        Ok(false) => Some(format!(
            "base volume {}/{} is not a thin volume of pool {}/{}",
            base.vg, base.lv, base.vg, base.thin_pool
        )),
        Err(e) => Some(format!("base volume {}/{}: {e}", base.vg, base.lv)),
    }
}

struct Builder<'a> {
    file: &'a Path,
}

impl Builder<'_> {
    fn invalid(
        &self,
        at: Option<Location>,
        yaml_path: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            at: at.and_then(position),
            yaml_path: yaml_path.into(),
            message: message.into(),
        }
    }

    fn nonzero<T: PartialEq + Default + Copy>(
        &self,
        v: &Option<S<T>>,
        yaml_path: &str,
        default: T,
    ) -> Result<T, ConfigError> {
        match v {
            Some(s) if s.value == T::default() => {
                Err(self.invalid(Some(s.referenced), yaml_path, "must be at least 1"))
            }
            Some(s) => Ok(s.value),
            None => Ok(default),
        }
    }

    fn nonzero_opt<T: PartialEq + Default + Copy>(
        &self,
        v: &Option<S<T>>,
        yaml_path: &str,
    ) -> Result<Option<T>, ConfigError> {
        match v {
            Some(s) if s.value == T::default() => {
                Err(self.invalid(Some(s.referenced), yaml_path, "must be at least 1"))
            }
            Some(s) => Ok(Some(s.value)),
            None => Ok(None),
        }
    }

    /// A VO's `unix_groups` and `users`: names as the user database spells
    /// them (`"*"` in `users`: everyone).
    fn members(&self, vo: &RawVo, p: &str) -> Result<VoMembers, ConfigError> {
        let mut members = VoMembers::default();
        for (key, list) in [("unix_groups", &vo.unix_groups), ("users", &vo.users)] {
            for (i, name) in list.iter().flatten().enumerate() {
                let at = Some(name.referenced);
                let here = format!("{p}.{key}[{i}]");
                if name.value == "*" && key == "users" {
                    members.everyone = true;
                    continue;
                }
                validate_account_name(&name.value).map_err(|why| {
                    self.invalid(at, &here, format!("invalid name {:?}: {why}", name.value))
                })?;
                let names = if key == "users" {
                    &mut members.users
                } else {
                    &mut members.unix_groups
                };
                if !names.contains(&name.value) {
                    names.push(name.value.clone());
                }
            }
        }
        Ok(members)
    }

    fn hostname(&self, v: &S<String>, yaml_path: &str) -> Result<String, ConfigError> {
        validate_hostname(&v.value).map_err(|why| {
            self.invalid(
                Some(v.referenced),
                yaml_path,
                format!("invalid host name {:?}: {why}", v.value),
            )
        })?;
        Ok(v.value.clone())
    }

    /// A volume group, thin pool or logical volume name lvm2 takes as is.
    fn volume_name(&self, v: &S<String>, yaml_path: &str) -> Result<String, ConfigError> {
        crate::storage_lvm::validate_name(&v.value)
            .map_err(|e| self.invalid(Some(v.referenced), yaml_path, e.to_string()))?;
        Ok(v.value.clone())
    }

    fn path(&self, v: &S<PathBuf>, yaml_path: &str, base: &Path) -> Result<PathBuf, ConfigError> {
        if v.value.as_os_str().is_empty() {
            return Err(self.invalid(Some(v.referenced), yaml_path, "must not be empty"));
        }
        Ok(normalize(&base.join(&v.value)))
    }

    fn build(&self, raw: RawSite) -> Result<SiteConfig, ConfigError> {
        let file_abs =
            normalize(&std::path::absolute(self.file).unwrap_or_else(|_| self.file.to_path_buf()));
        let base = file_abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));

        let state_dir = match &raw.state_dir {
            Some(p) => self.path(p, "state_dir", &base)?,
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        let image_dir = match &raw.image_dir {
            Some(p) => self.path(p, "image_dir", &base)?,
            None => state_dir.join("images"),
        };
        let log_dir = match &raw.log_dir {
            Some(p) => self.path(p, "log_dir", &base)?,
            None => PathBuf::from(DEFAULT_LOG_DIR),
        };

        let qemu = {
            let q = raw.qemu.as_ref();
            let binary = match q.and_then(|q| q.binary.as_ref()) {
                Some(b) if b.value.is_empty() => {
                    return Err(self.invalid(
                        Some(b.referenced),
                        "qemu.binary",
                        "must not be empty",
                    ))
                }
                Some(b) if b.value.contains('/') => normalize(&base.join(&b.value)),
                Some(b) => PathBuf::from(&b.value),
                None => PathBuf::from(DEFAULT_QEMU_BINARY),
            };
            let run_as = match q.and_then(|q| q.run_as.as_ref()) {
                Some(u)
                    if u.value.is_empty()
                        || u.value
                            .chars()
                            .any(|c| c.is_whitespace() || c.is_control() || c == ':') =>
                {
                    return Err(self.invalid(
                        Some(u.referenced),
                        "qemu.run_as",
                        format!("{:?} is not a user name", u.value),
                    ))
                }
                Some(u) => Some(u.value.clone()),
                None => None,
            };
            QemuConfig {
                binary,
                run_as,
                sandbox: q.and_then(|q| q.sandbox).unwrap_or(true),
            }
        };

        let boot_timeout_secs = self.nonzero(
            &raw.boot_timeout_secs,
            "boot_timeout_secs",
            DEFAULT_BOOT_TIMEOUT_SECS,
        )?;
        let shutdown_timeout_secs = self.nonzero(
            &raw.shutdown_timeout_secs,
            "shutdown_timeout_secs",
            DEFAULT_SHUTDOWN_TIMEOUT_SECS,
        )?;
        let max_request_bytes = self.nonzero(
            &raw.max_request_bytes,
            "max_request_bytes",
            DEFAULT_MAX_REQUEST_BYTES,
        )?;

        // What this node runs at most (a reserve of 0 is allowed: a test host).
        let node_limits = {
            let d = NodeLimits::default();
            let l = raw.node_limits.as_ref();
            NodeLimits {
                max_domains: self.nonzero(
                    &l.and_then(|l| l.max_domains.clone()),
                    "node_limits.max_domains",
                    d.max_domains,
                )?,
                max_domains_per_user: self.nonzero(
                    &l.and_then(|l| l.max_domains_per_user.clone()),
                    "node_limits.max_domains_per_user",
                    d.max_domains_per_user,
                )?,
                memory_reserve_mib: l
                    .and_then(|l| l.memory_reserve_mib)
                    .unwrap_or(d.memory_reserve_mib),
            }
        };

        // Where the bases of `lvm` images live.
        let lvm = match &raw.lvm {
            Some(l) => Some(LvmConfig {
                vg: self.volume_name(&l.vg, "lvm.vg")?,
                thin_pool: match &l.thin_pool {
                    Some(p) => self.volume_name(p, "lvm.thin_pool")?,
                    None => DEFAULT_THIN_POOL.to_string(),
                },
            }),
            None => None,
        };

        // The catalogue.
        let mut images = BTreeMap::new();
        let raw_images = raw.images.map(|m| m.0).unwrap_or_default();
        if raw_images.is_empty() {
            return Err(self.invalid(
                None,
                "images",
                "the image catalogue is empty: name at least one image",
            ));
        }
        for (name, img) in raw_images {
            let p = format!("images.{}", name.value);
            validate_image_name(&name.value).map_err(|why| {
                self.invalid(
                    Some(name.referenced),
                    &p,
                    format!("invalid image name {:?}: {why}", name.value),
                )
            })?;
            let d = img.defaults.as_ref();
            let defaults = ImageDefaults {
                memory_mib: self.nonzero_opt(
                    d.map_or(&None, |d| &d.memory_mib),
                    &format!("{p}.defaults.memory_mib"),
                )?,
                vcpus: self.nonzero_opt(
                    d.map_or(&None, |d| &d.vcpus),
                    &format!("{p}.defaults.vcpus"),
                )?,
                disk_mib: self.nonzero_opt(
                    d.map_or(&None, |d| &d.disk_mib),
                    &format!("{p}.defaults.disk_mib"),
                )?,
                hostname: match d.and_then(|d| d.hostname.as_ref()) {
                    Some(h) => Some(self.hostname(h, &format!("{p}.defaults.hostname"))?),
                    None => None,
                },
            };
            let format = img.format.as_ref().map_or(DiskFormat::Qcow2, |f| f.value);
            let (disk, lvm_base) = if format == DiskFormat::Lvm {
                if let Some(d) = &img.disk {
                    return Err(self.invalid(
                        Some(d.referenced),
                        format!("{p}.disk"),
                        "an image of format lvm has no disk file: its base is the thin volume \
                         named by `lv` (default: the image's name)",
                    ));
                }
                let Some(site_lvm) = &lvm else {
                    return Err(self.invalid(
                        img.format.as_ref().map(|f| f.referenced),
                        format!("{p}.format"),
                        format!(
                            "image {:?} is of format lvm, but the site has no `lvm:` section \
                             naming its volume group (lvm: {{ vg: VG, thin_pool: POOL }})",
                            name.value
                        ),
                    ));
                };
                let lv = match &img.lv {
                    Some(lv) => self.volume_name(lv, &format!("{p}.lv"))?,
                    None => {
                        crate::storage_lvm::validate_name(&name.value).map_err(|e| {
                            let why = match e {
                                crate::storage_lvm::LvmError::InvalidName { reason, .. } => {
                                    reason.to_string()
                                }
                                other => other.to_string(),
                            };
                            self.invalid(
                                Some(name.referenced),
                                format!("{p}.lv"),
                                format!(
                                    "the base volume is named after the image by default, but \
                                     {:?} is no volume name for lvm2 ({why}): name it with `lv`",
                                    name.value
                                ),
                            )
                        })?;
                        name.value.clone()
                    }
                };
                if lv == site_lvm.thin_pool {
                    return Err(self.invalid(
                        img.lv
                            .as_ref()
                            .map_or(Some(name.referenced), |l| Some(l.referenced)),
                        format!("{p}.lv"),
                        format!(
                            "base volume {lv:?} is the thin pool itself (lvm.thin_pool); \
                             name a thin volume of the pool"
                        ),
                    ));
                }
                let base = LvmBase {
                    vg: site_lvm.vg.clone(),
                    thin_pool: site_lvm.thin_pool.clone(),
                    lv,
                };
                (
                    crate::storage_lvm::device_path(&base.vg, &base.lv),
                    Some(base),
                )
            } else {
                if let Some(lv) = &img.lv {
                    return Err(self.invalid(
                        Some(lv.referenced),
                        format!("{p}.lv"),
                        format!(
                            "only an image of format lvm has a base volume (lv); this one is \
                             {}: set `format: lvm` or remove `lv`",
                            crate::storage::format_name(format)
                        ),
                    ));
                }
                let Some(d) = &img.disk else {
                    return Err(self.invalid(
                        Some(name.referenced),
                        format!("{p}.disk"),
                        format!(
                            "image {:?} has no disk: name its base disk file (or set \
                             `format: lvm` and name its base volume with `lv`)",
                            name.value
                        ),
                    ));
                };
                (self.path(d, &format!("{p}.disk"), &image_dir)?, None)
            };
            let image = CatalogueImage {
                name: name.value.clone(),
                disk,
                format,
                lvm: lvm_base,
                kernel: self.path(&img.kernel, &format!("{p}.kernel"), &image_dir)?,
                initrd: self.path(&img.initrd, &format!("{p}.initrd"), &image_dir)?,
                description: img.description,
                defaults,
            };
            images.insert(name.value, image);
        }
        let catalogue = || images.keys().cloned().collect::<Vec<_>>().join(", ");

        // Site defaults.
        let d = raw.defaults.as_ref();
        let default_image = match d.and_then(|d| d.image.as_ref()) {
            Some(i) if !images.contains_key(&i.value) => {
                return Err(self.invalid(
                    Some(i.referenced),
                    "defaults.image",
                    format!(
                        "default image {:?} is not in the catalogue (images: {})",
                        i.value,
                        catalogue()
                    ),
                ))
            }
            Some(i) => Some(i.value.clone()),
            None => None,
        };
        let defaults = SiteDefaults {
            image: default_image,
            memory_mib: self.nonzero(
                d.map_or(&None, |d| &d.memory_mib),
                "defaults.memory_mib",
                DEFAULT_MEMORY_MIB,
            )?,
            vcpus: self.nonzero(
                d.map_or(&None, |d| &d.vcpus),
                "defaults.vcpus",
                DEFAULT_VCPUS,
            )?,
            disk_mib: self.nonzero(
                d.map_or(&None, |d| &d.disk_mib),
                "defaults.disk_mib",
                DEFAULT_DISK_MIB,
            )?,
            hostname: match d.and_then(|d| d.hostname.as_ref()) {
                Some(h) => self.hostname(h, "defaults.hostname")?,
                None => DEFAULT_HOSTNAME.to_string(),
            },
        };
        let site_set = (
            d.is_some_and(|d| d.memory_mib.is_some()),
            d.is_some_and(|d| d.vcpus.is_some()),
            d.is_some_and(|d| d.disk_mib.is_some()),
        );

        // VOs.
        let mut vos = BTreeMap::new();
        let raw_vos = raw.vos.map(|m| m.0).unwrap_or_default();
        if raw_vos.is_empty() {
            return Err(self.invalid(
                None,
                "vos",
                "no VOs are defined: every job would be refused",
            ));
        }
        for (name, vo) in raw_vos {
            let p = format!("vos.{}", name.value);
            validate_vo_name(&name.value).map_err(|why| {
                self.invalid(
                    Some(name.referenced),
                    &p,
                    format!("invalid VO name {:?}: {why}", name.value),
                )
            })?;
            let allowed = if vo.images.value.0.is_empty() {
                return Err(self.invalid(
                    Some(vo.images.referenced),
                    format!("{p}.images"),
                    "allows no images; use \"*\" for all",
                ));
            } else if vo.images.value.0.iter().any(|i| i.value == "*") {
                AllowedImages::All
            } else {
                let mut names: Vec<String> = Vec::new();
                for (i, img) in vo.images.value.0.iter().enumerate() {
                    let at = if position(img.referenced).is_some() {
                        img.referenced
                    } else {
                        vo.images.referenced
                    };
                    if !images.contains_key(&img.value) {
                        return Err(self.invalid(
                            Some(at),
                            format!("{p}.images[{i}]"),
                            format!(
                                "VO {:?} allows image {:?}, which is not in the catalogue (images: {})",
                                name.value,
                                img.value,
                                catalogue()
                            ),
                        ));
                    }
                    if !names.contains(&img.value) {
                        names.push(img.value.clone());
                    }
                }
                AllowedImages::Only(names)
            };
            let policy = VoPolicy {
                name: name.value.clone(),
                images: allowed,
                max_memory_mib: self
                    .nonzero_opt(&vo.max_memory_mib, &format!("{p}.max_memory_mib"))?,
                max_vcpus: self.nonzero_opt(&vo.max_vcpus, &format!("{p}.max_vcpus"))?,
                max_disk_mib: self.nonzero_opt(&vo.max_disk_mib, &format!("{p}.max_disk_mib"))?,
                max_store_mib: self
                    .nonzero_opt(&vo.max_store_mib, &format!("{p}.max_store_mib"))?,
                members: self.members(&vo, &p)?,
            };

            // What a job of this VO gets when it asks for nothing must be
            // within its limits, or such jobs would all be refused.
            for image in images.values().filter(|i| policy.images.allows(&i.name)) {
                let limits = [
                    (
                        "memory_mib",
                        "max_memory_mib",
                        image.defaults.memory_mib,
                        defaults.memory_mib,
                        policy.max_memory_mib,
                        vo.max_memory_mib.as_ref().map(|s| s.referenced),
                        site_set.0,
                    ),
                    (
                        "vcpus",
                        "max_vcpus",
                        image.defaults.vcpus.map(u64::from),
                        u64::from(defaults.vcpus),
                        policy.max_vcpus.map(u64::from),
                        vo.max_vcpus.as_ref().map(|s| s.referenced),
                        site_set.1,
                    ),
                    (
                        "disk_mib",
                        "max_disk_mib",
                        image.defaults.disk_mib,
                        defaults.disk_mib,
                        policy.max_disk_mib,
                        vo.max_disk_mib.as_ref().map(|s| s.referenced),
                        site_set.2,
                    ),
                ];
                for (key, limit_key, image_value, site_value, limit, limit_at, site_value_set) in
                    limits
                {
                    let value = image_value.unwrap_or(site_value);
                    let Some(limit) = limit.filter(|&limit| value > limit) else {
                        continue;
                    };
                    let source = if image_value.is_some() {
                        format!("images.{}.defaults.{key}", image.name)
                    } else if site_value_set {
                        format!("defaults.{key}")
                    } else {
                        "built-in default".to_string()
                    };
                    return Err(self.invalid(
                        limit_at,
                        format!("{p}.{limit_key}"),
                        format!(
                            "{limit_key} = {limit} is below the default {value} ({source}) for image {:?}: \
                             jobs of VO {:?} that do not ask for {key} would all be refused",
                            image.name, name.value
                        ),
                    ));
                }
            }
            vos.insert(name.value, policy);
        }

        let default_vo = match &raw.default_vo {
            Some(v) if !vos.contains_key(&v.value) => {
                return Err(self.invalid(
                    Some(v.referenced),
                    "default_vo",
                    format!(
                        "default VO {:?} is not defined under vos (VOs: {})",
                        v.value,
                        vos.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
            Some(v) => Some(v.value.clone()),
            None => None,
        };

        Ok(SiteConfig {
            path: file_abs,
            state_dir,
            image_dir,
            log_dir,
            backend: raw.backend.unwrap_or(Backend::Auto),
            acceleration: raw.acceleration.unwrap_or(Acceleration::Auto),
            qemu,
            xen: XenConfig {
                guest_type: raw
                    .xen
                    .as_ref()
                    .and_then(|x| x.guest_type)
                    .unwrap_or(XenGuestType::Pv),
                pvh_cpuid: raw
                    .xen
                    .as_ref()
                    .and_then(|x| x.pvh_cpuid.clone())
                    .unwrap_or_else(|| "host,rdtscp=0".into()),
            },
            boot_timeout_secs,
            shutdown_timeout_secs,
            max_request_bytes,
            defaults,
            images,
            vos,
            default_vo,
            save_images: raw.save_images.unwrap_or(SavePolicy::OnRequest),
            lvm,
            node_limits,
        })
    }
}

/// Lexically drop `.` and fold `name/..` (the config's own paths are written
/// by the admin; this only makes them readable in logs and errors).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed, fake location: paths in snapshots do not depend on the checkout.
    const FAKE: &str = "/etc/sd/site.yaml";

    fn load(src: &str) -> Result<SiteConfig, ConfigError> {
        SiteConfig::from_str(src, Path::new(FAKE))
    }

    fn error(src: &str) -> String {
        match load(src) {
            Ok(_) => panic!("accepted:\n{src}"),
            Err(e) => e.to_string(),
        }
    }

    const MINIMAL: &str = "\
images:
  busybox: { disk: busybox.qcow2, kernel: vmlinuz, initrd: initrd.img }
vos:
  demo: { images: \"*\", users: [\"*\"] }
";

    /// A small valid config that error cases modify.
    const BASE: &str = "\
defaults: { image: debian-minimal }
images:
  debian-minimal: { disk: debian-minimal.qcow2, kernel: vmlinuz, initrd: initrd.img }
  busybox: { disk: busybox.qcow2, kernel: vmlinuz, initrd: initrd.img }
vos:
  demo:
    images: [debian-minimal, busybox]
    max_memory_mib: 2048
    max_vcpus: 2
";

    fn repo_config_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/site.yaml")
    }

    #[test]
    fn loads_the_repo_config() {
        let site = SiteConfig::load(&repo_config_path()).unwrap();
        let top = normalize(
            &std::path::absolute(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).unwrap(),
        );
        assert_eq!(site.image_dir, top.join("build/images"));
        assert_eq!(site.path, top.join("config/site.yaml"));
        assert_eq!(site.state_dir, Path::new("/var/lib/smartdomains"));
        assert_eq!(site.log_dir, Path::new("/var/log/smartdomains"));
        assert_eq!(
            site.images["busybox"].disk,
            top.join("build/images/busybox.qcow2")
        );
        assert_eq!(
            site.images["debian-minimal"].kernel,
            top.join("build/images/vmlinuz")
        );
        assert_eq!(site.vos.keys().collect::<Vec<_>>(), ["atlas", "demo"]);
        assert!(site.vos["demo"].images.allows("busybox"));
        assert!(!site.vos["atlas"].images.allows("busybox"));
        assert_eq!(site.default_vo.as_deref(), Some("demo"));
    }

    #[test]
    fn repo_config_resolved() {
        let src = std::fs::read_to_string(repo_config_path()).unwrap();
        let site = load(&src).unwrap();
        insta::assert_yaml_snapshot!(site);
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let site = load(MINIMAL).unwrap();
        assert_eq!(site.path, Path::new(FAKE));
        assert_eq!(site.state_dir, Path::new("/var/lib/smartdomains"));
        assert_eq!(site.image_dir, Path::new("/var/lib/smartdomains/images"));
        assert_eq!(site.log_dir, Path::new("/var/log/smartdomains"));
        assert_eq!(site.backend, Backend::Auto);
        assert_eq!(site.acceleration, Acceleration::Auto);
        assert_eq!(
            site.qemu,
            QemuConfig {
                binary: PathBuf::from("qemu-system-x86_64"),
                run_as: None,
                sandbox: true
            }
        );
        assert_eq!(site.boot_timeout_secs, 60);
        assert_eq!(site.shutdown_timeout_secs, 10);
        assert_eq!(
            site.defaults,
            SiteDefaults {
                image: None,
                memory_mib: 512,
                vcpus: 1,
                disk_mib: 2048,
                hostname: "sd-guest".into()
            }
        );
        let busybox = &site.images["busybox"];
        assert_eq!(
            busybox.disk,
            Path::new("/var/lib/smartdomains/images/busybox.qcow2")
        );
        assert_eq!(busybox.format, DiskFormat::Qcow2);
        assert_eq!(busybox.defaults, ImageDefaults::default());
        assert_eq!(site.vos["demo"].images, AllowedImages::All);
        assert_eq!(site.vos["demo"].max_memory_mib, None);
        assert_eq!(site.default_vo, None);
    }

    #[test]
    fn paths_resolve_against_the_config_and_image_dirs() {
        let site = load(&format!(
            "state_dir: state\nimage_dir: ./../img\nlog_dir: /log\nqemu: {{ binary: bin/qemu, run_as: sd-qemu }}\n{}",
            MINIMAL.replace("busybox.qcow2", "/abs/busybox.img").replace("vmlinuz", "k/./vmlinuz")
        ))
        .unwrap();
        assert_eq!(site.state_dir, Path::new("/etc/sd/state"));
        assert_eq!(site.image_dir, Path::new("/etc/img"));
        assert_eq!(site.log_dir, Path::new("/log"));
        assert_eq!(site.qemu.binary, Path::new("/etc/sd/bin/qemu"));
        assert_eq!(site.qemu.run_as.as_deref(), Some("sd-qemu"));
        assert_eq!(site.images["busybox"].disk, Path::new("/abs/busybox.img"));
        assert_eq!(
            site.images["busybox"].kernel,
            Path::new("/etc/img/k/vmlinuz")
        );
        // image_dir defaults to <state_dir>/images.
        let site = load(&format!("state_dir: /srv/sd\n{MINIMAL}")).unwrap();
        assert_eq!(site.image_dir, Path::new("/srv/sd/images"));
    }

    #[test]
    fn a_relative_config_path_is_made_absolute() {
        let site = SiteConfig::from_str(MINIMAL, Path::new("site.yaml")).unwrap();
        assert!(site.path.is_absolute());
        assert_eq!(
            site.path,
            std::env::current_dir().unwrap().join("site.yaml")
        );
    }

    #[test]
    fn vo_images_forms() {
        let site = load(&BASE.replace("[debian-minimal, busybox]", "busybox")).unwrap();
        assert_eq!(
            site.vos["demo"].images,
            AllowedImages::Only(vec!["busybox".into()])
        );
        let site = load(&BASE.replace("[debian-minimal, busybox]", "[busybox, \"*\"]")).unwrap();
        assert_eq!(site.vos["demo"].images, AllowedImages::All);
        let site = load(&BASE.replace("[debian-minimal, busybox]", "[busybox, busybox]")).unwrap();
        assert_eq!(
            site.vos["demo"].images,
            AllowedImages::Only(vec!["busybox".into()])
        );
    }

    #[test]
    fn error_unknown_top_level_key() {
        insta::assert_snapshot!(error(&format!("{BASE}frobnicate: 3\n")));
    }

    #[test]
    fn error_unknown_key_in_a_vo() {
        insta::assert_snapshot!(error(&BASE.replace("max_vcpus: 2", "max_vcpu: 2")));
    }

    #[test]
    fn error_bad_enum_value() {
        insta::assert_snapshot!(error(&format!("backend: vmware\n{BASE}")));
    }

    #[test]
    fn error_wrong_type() {
        insta::assert_snapshot!(error(&BASE.replace("max_vcpus: 2", "max_vcpus: two")));
    }

    #[test]
    fn error_yaml_syntax() {
        insta::assert_snapshot!(error(
            &BASE.replace("[debian-minimal, busybox]", "[debian-minimal, busybox")
        ));
    }

    #[test]
    fn error_vo_names_an_unknown_image() {
        insta::assert_snapshot!(error(
            &BASE.replace("[debian-minimal, busybox]", "[debian-minimal, centos]")
        ));
    }

    #[test]
    fn error_vo_names_an_unknown_image_alone() {
        insta::assert_snapshot!(error(&BASE.replace("[debian-minimal, busybox]", "centos")));
    }

    #[test]
    fn error_default_image_not_in_catalogue() {
        insta::assert_snapshot!(error(
            &BASE.replace("image: debian-minimal", "image: centos")
        ));
    }

    #[test]
    fn error_zero_limit() {
        insta::assert_snapshot!(error(&BASE.replace("max_vcpus: 2", "max_vcpus: 0")));
    }

    #[test]
    fn error_bad_image_name() {
        insta::assert_snapshot!(error(&BASE.replace("  busybox: {", "  BusyBox: {")));
    }

    #[test]
    fn error_bad_default_hostname() {
        insta::assert_snapshot!(error(&BASE.replace(
            "{ image: debian-minimal }",
            "{ image: debian-minimal, hostname: my_guest }"
        )));
    }

    #[test]
    fn error_unknown_default_vo() {
        insta::assert_snapshot!(error(&format!("{BASE}default_vo: cms\n")));
    }

    #[test]
    fn error_vo_limit_below_site_defaults() {
        insta::assert_snapshot!(error(
            &BASE.replace("max_memory_mib: 2048", "max_memory_mib: 256")
        ));
    }

    #[test]
    fn error_vo_limit_below_image_defaults() {
        let src = BASE.replace(
            "{ disk: busybox.qcow2,",
            "{ defaults: { vcpus: 4 }, disk: busybox.qcow2,",
        );
        insta::assert_snapshot!(error(&src));
    }

    #[test]
    fn error_no_vos() {
        insta::assert_snapshot!(error(
            "images:\n  busybox: { disk: b, kernel: k, initrd: i }\n"
        ));
    }

    #[test]
    fn error_no_images() {
        insta::assert_snapshot!(error(""));
    }

    #[test]
    fn error_missing_key() {
        insta::assert_snapshot!(error(&BASE.replace(
            " kernel: vmlinuz, initrd: initrd.img }\nvos",
            " kernel: vmlinuz }\nvos"
        )));
    }

    #[test]
    fn error_empty_vo() {
        insta::assert_snapshot!(error(&BASE.replace("  demo:\n", "  demo:\n  cms:\n")));
    }

    /// BASE with an `lvm:` section and an lvm image, `busybox-lvm`.
    const LVM: &str = "\
lvm: { vg: sdvg, thin_pool: thin }
images:
  busybox: { disk: busybox.qcow2, kernel: vmlinuz, initrd: initrd.img }
  busybox-lvm: { format: lvm, lv: busybox-base, kernel: vmlinuz, initrd: initrd.img }
vos:
  demo: { images: \"*\" }
";

    #[test]
    fn lvm_images_resolve() {
        let site = load(LVM).unwrap();
        assert_eq!(
            site.lvm,
            Some(LvmConfig {
                vg: "sdvg".into(),
                thin_pool: "thin".into()
            })
        );
        let img = &site.images["busybox-lvm"];
        assert_eq!(img.format, DiskFormat::Lvm);
        assert_eq!(
            img.lvm,
            Some(LvmBase {
                vg: "sdvg".into(),
                thin_pool: "thin".into(),
                lv: "busybox-base".into()
            })
        );
        assert_eq!(img.disk, Path::new("/dev/sdvg/busybox-base"));
        assert_eq!(site.images["busybox"].lvm, None);
        insta::assert_yaml_snapshot!(site);

        // Defaults: the pool is `pool`, the base volume is named after the image.
        let site = load(
            &LVM.replace(", thin_pool: thin", "")
                .replace("lv: busybox-base, ", ""),
        )
        .unwrap();
        let base = site.images["busybox-lvm"].lvm.clone().unwrap();
        assert_eq!(
            (base.vg.as_str(), base.thin_pool.as_str(), base.lv.as_str()),
            ("sdvg", "pool", "busybox-lvm")
        );
        assert_eq!(
            site.images["busybox-lvm"].disk,
            Path::new("/dev/sdvg/busybox-lvm")
        );
        // An lvm: section without lvm images is fine (and changes nothing).
        let site = load(&format!("lvm: {{ vg: sdvg }}\n{MINIMAL}")).unwrap();
        assert_eq!(site.images["busybox"].format, DiskFormat::Qcow2);
    }

    #[test]
    fn error_lvm_image_without_lvm_section() {
        insta::assert_snapshot!(error(
            &LVM.replace("lvm: { vg: sdvg, thin_pool: thin }\n", "")
        ));
    }

    #[test]
    fn error_lvm_image_with_a_disk() {
        insta::assert_snapshot!(error(
            &LVM.replace("lv: busybox-base,", "disk: busybox.raw,")
        ));
    }

    #[test]
    fn error_lv_on_a_qcow2_image() {
        insta::assert_snapshot!(error(&LVM.replace(
            "{ disk: busybox.qcow2,",
            "{ disk: busybox.qcow2, lv: busybox-base,"
        )));
    }

    #[test]
    fn error_image_without_disk() {
        insta::assert_snapshot!(error(&LVM.replace("{ disk: busybox.qcow2,", "{")));
    }

    #[test]
    fn error_bad_lv_name() {
        insta::assert_snapshot!(error(&LVM.replace("busybox-base", "busybox_tmeta")));
    }

    #[test]
    fn error_bad_vg_name() {
        insta::assert_snapshot!(error(&LVM.replace("vg: sdvg", "vg: \"-sdvg\"")));
    }

    #[test]
    fn error_default_lv_name_is_no_volume_name() {
        // A good image name, but lvm2 reserves the prefix `snapshot`.
        insta::assert_snapshot!(error(&LVM.replace(
            "busybox-lvm: { format: lvm, lv: busybox-base,",
            "snapshot-1: { format: lvm,"
        )));
    }

    #[test]
    fn error_lv_is_the_thin_pool() {
        insta::assert_snapshot!(error(&LVM.replace("lv: busybox-base", "lv: thin")));
    }

    #[test]
    fn error_lvm_section_without_vg() {
        insta::assert_snapshot!(error(&LVM.replace("vg: sdvg, ", "")));
    }

    #[test]
    fn io_error_names_the_file() {
        let e = SiteConfig::load(Path::new("/nonexistent/sd/site.yaml")).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        insta::assert_snapshot!(e.to_string());
    }

    #[test]
    fn parse_errors_have_positions() {
        let e = load(&BASE.replace("max_vcpus: 2", "max_vcpus: two")).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }));
        assert_eq!(e.position(), Some((9, 16)));
        let e = load(&BASE.replace("max_vcpus: 2", "max_vcpus: 0")).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { .. }));
        assert_eq!(e.position(), Some((9, 16)));
    }

    #[test]
    fn check_files_lists_missing_catalogue_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("busybox.qcow2"), b"").unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"").unwrap();
        std::fs::create_dir(dir.path().join("initrd.img")).unwrap();
        let site = SiteConfig::from_str(
            &format!("image_dir: .\n{MINIMAL}"),
            &dir.path().join("site.yaml"),
        )
        .unwrap();
        let problems = || -> Vec<String> {
            let dir = dir.path().display().to_string();
            site.check_files()
                .iter()
                .map(|p| p.replace(&dir, "DIR"))
                .collect()
        };
        assert_eq!(
            problems(),
            ["image \"busybox\": initrd DIR/initrd.img: not a regular file"]
        );
        std::fs::remove_file(dir.path().join("vmlinuz")).unwrap();
        assert_eq!(
            problems(),
            [
                "image \"busybox\": kernel DIR/vmlinuz: No such file or directory (os error 2)",
                "image \"busybox\": initrd DIR/initrd.img: not a regular file",
            ]
        );
    }

    #[test]
    fn vo_members_are_groups_and_users() {
        let site = load(&format!(
            "{BASE}    unix_groups: [sd-demo, sd-demo, Grid.Users]\n    users: [alice]\n  \
             open: {{ images: \"*\", users: [\"*\"] }}\n  closed: {{ images: \"*\" }}\n"
        ))
        .unwrap();
        let demo = &site.vos["demo"].members;
        assert_eq!(demo.unix_groups, ["sd-demo", "Grid.Users"]);
        assert_eq!(demo.users, ["alice"]);
        assert_eq!(
            demo.to_string(),
            "Unix groups sd-demo, Grid.Users; users alice"
        );
        let user = |name: &str, groups: &[&str]| crate::owner::UnixUser {
            uid: 1000,
            name: name.into(),
            gid: 1000,
            gids: vec![1000],
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        assert!(demo.admits(&user("alice", &["alice"])));
        assert!(demo.admits(&user("bob", &["bob", "sd-demo"])));
        assert!(!demo.admits(&user("carol", &["carol", "sd-demo2"])));
        // A group named like a user is not that user.
        assert!(!demo.admits(&user("dave", &["alice"])));
        assert!(site.vos["open"].members.admits(&user("eve", &[])));
        assert_eq!(site.vos["open"].members.to_string(), "every local user");
        assert!(!site.vos["closed"]
            .members
            .admits(&user("alice", &["sd-demo"])));
        assert_eq!(site.vos["closed"].members.to_string(), "none but root");
        // A VO only root may use is odd, not broken: `sd images` shows it.
        let problems = site.check_files();
        assert!(
            !problems.iter().any(|p| p.contains("closed")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p
                == "VO \"demo\": Unix group \"Grid.Users\" is not in this node's group database"),
            "{problems:?}"
        );
    }

    #[test]
    fn error_bad_member_names() {
        insta::assert_snapshot!(error(&format!("{BASE}    unix_groups: [\"sd demo\"]\n")));
        insta::assert_snapshot!(error(&format!("{BASE}    unix_groups: [\"*\"]\n")));
    }

    #[test]
    fn hostnames() {
        for ok in [
            "sd-guest",
            "a",
            "A1",
            "9lives",
            "node-1.example.org",
            &"a".repeat(63),
        ] {
            assert_eq!(validate_hostname(ok), Ok(()), "{ok}");
        }
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
        ]
        .join(".");
        for bad in [
            "",
            "-a",
            "a-",
            "a_b",
            "a..b",
            ".a",
            "a.",
            "ü",
            "a b",
            &"a".repeat(64),
            &long,
        ] {
            assert!(validate_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_names() {
        for ok in ["busybox", "debian-12.4_min", "0day"] {
            assert_eq!(validate_image_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "../etc",
            "a/b",
            "/abs",
            ".hidden",
            "-x",
            "Debian",
            "a b",
            &"a".repeat(129),
        ] {
            assert!(validate_image_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_limits_default_and_are_read() {
        assert_eq!(load(MINIMAL).unwrap().node_limits, NodeLimits::default());
        let site = load(&format!(
            "{MINIMAL}node_limits: {{ max_domains: 3, max_domains_per_user: 1, memory_reserve_mib: 0 }}\n"
        ))
        .unwrap();
        assert_eq!(
            site.node_limits,
            NodeLimits {
                max_domains: 3,
                max_domains_per_user: 1,
                memory_reserve_mib: 0
            }
        );
        let e = error(&format!("{MINIMAL}node_limits: {{ max_domains: 0 }}\n"));
        assert!(
            e.contains("node_limits.max_domains") && e.contains("at least 1"),
            "{e}"
        );
        let e = error(&format!("{MINIMAL}node_limits: {{ max_vms: 2 }}\n"));
        assert!(e.contains("max_vms"), "{e}");
    }

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize(Path::new("/a/b/../c/./d")), Path::new("/a/c/d"));
        assert_eq!(normalize(Path::new("/../a")), Path::new("/a"));
        assert_eq!(normalize(Path::new("../a/..")), Path::new(".."));
        assert_eq!(normalize(Path::new("a/..")), Path::new("."));
    }
}
