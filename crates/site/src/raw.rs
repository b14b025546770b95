//! The file as written: serde types with positions, every key known.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::*;

// ---------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------

pub(crate) type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSite {
    pub(crate) state_dir: Option<S<PathBuf>>,
    pub(crate) image_dir: Option<S<PathBuf>>,
    pub(crate) log_dir: Option<S<PathBuf>>,
    pub(crate) backend: Option<Backend>,
    pub(crate) acceleration: Option<Acceleration>,
    pub(crate) templates: Option<Templates>,
    pub(crate) qemu: Option<RawQemu>,
    pub(crate) xen: Option<RawXen>,
    pub(crate) boot_timeout_secs: Option<S<u64>>,
    pub(crate) shutdown_timeout_secs: Option<S<u64>>,
    pub(crate) max_request_bytes: Option<S<u64>>,
    pub(crate) defaults: Option<RawSiteDefaults>,
    pub(crate) images: Option<SpannedMap<RawImage>>,
    pub(crate) vos: Option<SpannedMap<RawVo>>,
    pub(crate) networks: Option<SpannedMap<RawNetwork>>,
    pub(crate) default_vo: Option<S<String>>,
    pub(crate) save_images: Option<SavePolicy>,
    pub(crate) lvm: Option<RawLvm>,
    pub(crate) node_limits: Option<RawNodeLimits>,
    pub(crate) hosts: Option<SpannedMap<S<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNodeLimits {
    pub(crate) max_domains: Option<S<u32>>,
    pub(crate) max_domains_per_user: Option<S<u32>>,
    pub(crate) memory_reserve_mib: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLvm {
    pub(crate) vg: S<String>,
    pub(crate) thin_pool: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQemu {
    pub(crate) binary: Option<S<String>>,
    pub(crate) run_as: Option<S<String>>,
    pub(crate) sandbox: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawXen {
    pub(crate) guest_type: Option<XenGuestType>,
    pub(crate) pvh_cpuid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSiteDefaults {
    pub(crate) image: Option<S<String>>,
    pub(crate) memory_mib: Option<S<u64>>,
    pub(crate) vcpus: Option<S<u32>>,
    pub(crate) disk_mib: Option<S<u64>>,
    pub(crate) hostname: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImageDefaults {
    pub(crate) memory_mib: Option<S<u64>>,
    pub(crate) vcpus: Option<S<u32>>,
    pub(crate) disk_mib: Option<S<u64>>,
    pub(crate) hostname: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImage {
    pub(crate) disk: Option<S<PathBuf>>,
    pub(crate) format: Option<S<DiskFormat>>,
    pub(crate) lv: Option<S<String>>,
    pub(crate) kernel: S<PathBuf>,
    pub(crate) initrd: S<PathBuf>,
    pub(crate) description: Option<String>,
    pub(crate) defaults: Option<RawImageDefaults>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVo {
    pub(crate) images: S<RawAllowed>,
    pub(crate) max_memory_mib: Option<S<u64>>,
    pub(crate) max_vcpus: Option<S<u32>>,
    pub(crate) max_disk_mib: Option<S<u64>>,
    pub(crate) max_store_mib: Option<S<u64>>,
    pub(crate) unix_groups: Option<Vec<S<String>>>,
    pub(crate) users: Option<Vec<S<String>>>,
    pub(crate) networks: Option<Vec<S<String>>>,
}

/// One entry of `networks:`: every key of every kind; the builder checks
/// that each belongs to the entry's `kind`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetwork {
    pub(crate) kind: S<String>,
    pub(crate) subnet: Option<S<String>>,
    pub(crate) dns: Option<S<Vec<S<String>>>>,
    pub(crate) deny: Option<S<Vec<S<String>>>>,
    pub(crate) allow: Option<S<Vec<S<String>>>>,
    pub(crate) bridge: Option<S<String>>,
}

/// `images:` of a VO: a list of names, or a single name; `"*"` = all.
pub(crate) struct RawAllowed(pub(crate) Vec<S<String>>);

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
pub(crate) struct SpannedMap<V>(pub(crate) Vec<(S<String>, V)>);

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
