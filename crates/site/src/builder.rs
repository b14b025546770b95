//! From the file as written to the checked model: defaults, paths, and the
//! checks that see the file as a whole.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};

use serde_saphyr::Location;

use crate::*;

use crate::raw::*;

pub(crate) struct Builder<'a> {
    pub(crate) file: &'a Path,
}

impl Builder<'_> {
    pub(crate) fn invalid(
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

    pub(crate) fn nonzero<T: PartialEq + Default + Copy>(
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

    pub(crate) fn nonzero_opt<T: PartialEq + Default + Copy>(
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
    pub(crate) fn members(&self, vo: &RawVo, p: &str) -> Result<VoMembers, ConfigError> {
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

    pub(crate) fn hostname(&self, v: &S<String>, yaml_path: &str) -> Result<String, ConfigError> {
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
    pub(crate) fn volume_name(
        &self,
        v: &S<String>,
        yaml_path: &str,
    ) -> Result<String, ConfigError> {
        validate_volume_name(&v.value).map_err(|reason| {
            self.invalid(
                Some(v.referenced),
                yaml_path,
                format!("invalid volume name {:?}: {reason}", v.value),
            )
        })?;
        Ok(v.value.clone())
    }

    pub(crate) fn path(
        &self,
        v: &S<PathBuf>,
        yaml_path: &str,
        base: &Path,
    ) -> Result<PathBuf, ConfigError> {
        if v.value.as_os_str().is_empty() {
            return Err(self.invalid(Some(v.referenced), yaml_path, "must not be empty"));
        }
        Ok(normalize(&base.join(&v.value)))
    }

    /// A `subnet:`: an IPv4 CIDR, its own network address, /30 or larger.
    pub(crate) fn subnet(&self, v: &S<String>, yaml_path: &str) -> Result<Ipv4Net, ConfigError> {
        let bad = |why: String| {
            self.invalid(
                Some(v.referenced),
                yaml_path,
                format!("invalid subnet {:?}: {why}", v.value),
            )
        };
        let net: ipnet::IpNet = v.value.trim().parse().map_err(|_| {
            bad("expected an IPv4 network in CIDR notation, e.g. 10.213.0.0/24".into())
        })?;
        let ipnet::IpNet::V4(net) = net else {
            return Err(bad("only IPv4 subnets are supported".into()));
        };
        if net.prefix_len() > MAX_SUBNET_PREFIX {
            return Err(bad(format!(
                "too small: a subnet is at most a /{MAX_SUBNET_PREFIX} (a network \
                 address, the host's, one guest's and a broadcast address)"
            )));
        }
        if net.addr() != net.network() {
            return Err(bad(format!(
                "{} is not the network's first address; did you mean {}?",
                net.addr(),
                net.trunc()
            )));
        }
        Ok(net)
    }

    /// A `deny:` or `allow:` entry: an IPv4 CIDR (a bare address is a /32).
    pub(crate) fn cidr(&self, v: &S<String>, yaml_path: &str) -> Result<Ipv4Net, ConfigError> {
        let text = v.value.trim();
        let parsed = text
            .parse::<Ipv4Net>()
            .or_else(|_| text.parse::<Ipv4Addr>().map(Ipv4Net::from));
        let net = parsed.map_err(|_| {
            self.invalid(
                Some(v.referenced),
                yaml_path,
                format!(
                    "invalid destination {:?}: expected an IPv4 address or network in CIDR \
                     notation, e.g. 192.168.0.0/16",
                    v.value
                ),
            )
        })?;
        if net.addr() != net.network() {
            return Err(self.invalid(
                Some(v.referenced),
                yaml_path,
                format!(
                    "invalid destination {:?}: {} is not the network's first address; did you \
                     mean {}?",
                    v.value,
                    net.addr(),
                    net.trunc()
                ),
            ));
        }
        Ok(net)
    }

    /// One entry of `networks:`.
    pub(crate) fn network(&self, name: &S<String>, n: &RawNetwork) -> Result<Network, ConfigError> {
        let p = format!("networks.{}", name.value);
        validate_network_name(&name.value).map_err(|why| {
            self.invalid(
                Some(name.referenced),
                &p,
                format!("invalid network name {:?}: {why}", name.value),
            )
        })?;
        let kind = n.kind.value.as_str();
        // Every key present, and whether this kind has it.
        let keys: [(&str, Option<Location>, &[&str]); 5] = [
            (
                "subnet",
                n.subnet.as_ref().map(|s| s.referenced),
                &["nat", "private"],
            ),
            ("dns", n.dns.as_ref().map(|s| s.referenced), &["nat"]),
            ("deny", n.deny.as_ref().map(|s| s.referenced), &["nat"]),
            ("allow", n.allow.as_ref().map(|s| s.referenced), &["nat"]),
            (
                "bridge",
                n.bridge.as_ref().map(|s| s.referenced),
                &["bridge"],
            ),
        ];
        if !matches!(kind, "nat" | "private" | "bridge") {
            return Err(self.invalid(
                Some(n.kind.referenced),
                format!("{p}.kind"),
                format!(
                    "unknown network kind {kind:?}: expected nat (outbound through the host), \
                     private (an isolated segment per pool) or bridge (an existing host bridge)"
                ),
            ));
        }
        for (key, at, kinds) in keys {
            if at.is_some() && !kinds.contains(&kind) {
                return Err(self.invalid(
                    at,
                    format!("{p}.{key}"),
                    format!(
                        "`{key}` is not a key of a {kind} network (it belongs to: {})",
                        kinds.join(", ")
                    ),
                ));
            }
        }
        let subnet = || match &n.subnet {
            Some(s) => self.subnet(s, &format!("{p}.subnet")),
            None => Err(self.invalid(
                Some(n.kind.referenced),
                format!("{p}.subnet"),
                format!(
                    "a {kind} network needs a `subnet:` (an IPv4 range in CIDR notation, \
                     e.g. 10.213.0.0/24)"
                ),
            )),
        };
        let kind = match kind {
            "nat" => {
                let subnet = subnet()?;
                let mut dns = Vec::new();
                for (i, a) in n.dns.iter().flat_map(|l| l.value.iter()).enumerate() {
                    let ip: Ipv4Addr = a.value.trim().parse().map_err(|_| {
                        self.invalid(
                            Some(a.referenced),
                            format!("{p}.dns[{i}]"),
                            format!("invalid resolver {:?}: expected an IPv4 address", a.value),
                        )
                    })?;
                    dns.push(ip);
                }
                let list = |key: &str,
                            l: &Option<S<Vec<S<String>>>>|
                 -> Result<Option<Vec<Ipv4Net>>, ConfigError> {
                    let Some(l) = l else { return Ok(None) };
                    l.value
                        .iter()
                        .enumerate()
                        .map(|(i, c)| self.cidr(c, &format!("{p}.{key}[{i}]")))
                        .collect::<Result<Vec<_>, _>>()
                        .map(Some)
                };
                let deny = list("deny", &n.deny)?.unwrap_or_else(|| {
                    DEFAULT_NAT_DENY
                        .iter()
                        .map(|c| c.parse().expect("a valid built-in CIDR"))
                        .collect()
                });
                let allow = list("allow", &n.allow)?.unwrap_or_default();
                NetworkKind::Nat {
                    subnet,
                    dns,
                    deny,
                    allow,
                }
            }
            "private" => NetworkKind::Private { subnet: subnet()? },
            _ => {
                let Some(b) = &n.bridge else {
                    return Err(self.invalid(
                        Some(n.kind.referenced),
                        format!("{p}.bridge"),
                        "a bridge network needs a `bridge:`, the name of an existing host \
                         bridge (e.g. br0)",
                    ));
                };
                validate_interface_name(&b.value).map_err(|why| {
                    self.invalid(
                        Some(b.referenced),
                        format!("{p}.bridge"),
                        format!("invalid bridge name {:?}: {why}", b.value),
                    )
                })?;
                NetworkKind::Bridge {
                    bridge: b.value.clone(),
                }
            }
        };
        Ok(Network {
            name: name.value.clone(),
            kind,
        })
    }

    pub(crate) fn build(&self, raw: RawSite) -> Result<SiteConfig, ConfigError> {
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
                        validate_volume_name(&name.value).map_err(|why| {
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
                (volume_device_path(&base.vg, &base.lv), Some(base))
            } else {
                if let Some(lv) = &img.lv {
                    return Err(self.invalid(
                        Some(lv.referenced),
                        format!("{p}.lv"),
                        format!(
                            "only an image of format lvm has a base volume (lv); this one is \
                             {}: set `format: lvm` or remove `lv`",
                            format.qemu_format()
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

        // Networks.
        let mut networks = BTreeMap::new();
        for (name, n) in raw.networks.iter().flat_map(|m| m.0.iter()) {
            networks.insert(name.value.clone(), self.network(name, n)?);
        }
        let network_names = || {
            if networks.is_empty() {
                "the site has none under `networks:`".to_string()
            } else {
                format!(
                    "networks: {}",
                    networks.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        };

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
                networks: {
                    let mut names: Vec<String> = Vec::new();
                    for (i, n) in vo.networks.iter().flatten().enumerate() {
                        if !networks.contains_key(&n.value) {
                            let why = if n.value == NO_NETWORK {
                                "\"none\" (no network) is always allowed and is not listed"
                                    .to_string()
                            } else {
                                format!("it is not defined ({})", network_names())
                            };
                            return Err(self.invalid(
                                Some(n.referenced),
                                format!("{p}.networks[{i}]"),
                                format!(
                                    "VO {:?} allows network {:?}, but {why}",
                                    name.value, n.value
                                ),
                            ));
                        }
                        if !names.contains(&n.value) {
                            names.push(n.value.clone());
                        }
                    }
                    names
                },
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

        // Hosts a pool description may name.
        let mut hosts = BTreeMap::new();
        for (name, target) in raw.hosts.iter().flat_map(|m| m.0.iter()) {
            let p = format!("hosts.{}", name.value);
            let t = &target.value;
            let index_ok = t.strip_prefix('@').is_some_and(|n| {
                !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit())
            });
            if !index_ok && t != "localhost" {
                validate_hostname(t).map_err(|why| {
                    self.invalid(
                        Some(target.referenced),
                        &p,
                        format!(
                            "{t:?} is not a host: write a node name, an index into the allocation's nodes (@0, @1, ...) or localhost ({why})"
                        ),
                    )
                })?;
            }
            hosts.insert(name.value.clone(), t.clone());
        }

        Ok(SiteConfig {
            path: file_abs,
            state_dir,
            image_dir,
            log_dir,
            backend: raw.backend.unwrap_or(Backend::Auto),
            acceleration: raw.acceleration.unwrap_or(Acceleration::Auto),
            templates: raw.templates.unwrap_or(Templates::Off),
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
            networks,
            default_vo,
            save_images: raw.save_images.unwrap_or(SavePolicy::OnRequest),
            lvm,
            node_limits,
            hosts,
        })
    }
}

/// Lexically drop `.` and fold `name/..` (the config's own paths are written
/// by the admin; this only makes them readable in logs and errors).
pub(crate) fn normalize(path: &Path) -> PathBuf {
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
