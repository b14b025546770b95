//! Changes to a running domain (`sd set`, the console API), checked against
//! the site's policy like an admission: the memory target within the VO's
//! limit and never above what the domain booted with, the save flag as the
//! site's `save_images` allows, a `save_as` name that is free.

use sd_site::{validate_image_name, Blame, Fault, SavePolicy, SiteConfig};

use crate::{ResolvedEnvironment, SavedImages};

/// The least memory a running domain may be ballooned down to: below it the
/// guest's kernel and agent would be out of memory.
pub const MIN_LIVE_MEMORY_MIB: u64 = 64;

/// Why a live change is refused. Each says what to ask for instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveChangeError {
    #[error(
        "memory {requested} MiB is above what the domain booted with ({boot} MiB): a running \
         domain can only be given back memory up to its size at boot; ask for {boot} MiB or less"
    )]
    AboveBoot { requested: u64, boot: u64 },
    #[error("memory {requested} MiB exceeds VO {vo:?}'s limit max_memory_mib = {limit}")]
    OverVoLimit {
        vo: String,
        requested: u64,
        limit: u64,
    },
    #[error(
        "memory {requested} MiB is below the least a running domain keeps \
         ({MIN_LIVE_MEMORY_MIB} MiB): its kernel and agent would run out of memory"
    )]
    BelowMinimum { requested: u64 },
    #[error("this site does not save images (save_images: never): save=true is refused")]
    SaveRefused,
    #[error("this site saves every job's disk (save_images: always): save=false is refused")]
    SaveForced,
    #[error("cannot save as {name:?}: {reason}")]
    BadSaveName { name: String, reason: String },
    #[error("the image store could not be read to check {name:?}: {reason}")]
    StoreUnreadable { name: String, reason: String },
}

impl Blame for LiveChangeError {
    fn fault(&self) -> Fault {
        match self {
            LiveChangeError::StoreUnreadable { .. } => Fault::Site,
            _ => Fault::User,
        }
    }
}

/// Checks a new memory target for a domain admitted as `env`.
pub fn check_memory(
    site: &SiteConfig,
    env: &ResolvedEnvironment,
    mib: u64,
) -> Result<(), LiveChangeError> {
    if mib > env.memory_mib {
        return Err(LiveChangeError::AboveBoot {
            requested: mib,
            boot: env.memory_mib,
        });
    }
    if let Some(limit) = site
        .vos
        .get(&env.vo)
        .and_then(|p| p.max_memory_mib)
        .filter(|&l| mib > l)
    {
        return Err(LiveChangeError::OverVoLimit {
            vo: env.vo.clone(),
            requested: mib,
            limit,
        });
    }
    if mib < MIN_LIVE_MEMORY_MIB {
        return Err(LiveChangeError::BelowMinimum { requested: mib });
    }
    Ok(())
}

/// What the teardown is to do with the disk, as changed at run time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SaveSetting {
    pub save_image: bool,
    /// The name in the store (None: `VO-ID`, as at admission).
    #[serde(default)]
    pub save_as: Option<String>,
}

/// Checks a new save flag (and name) for a domain; the setting to store.
/// `save_as` alone implies `save`, as `SaveAs` does in a JDL.
pub fn check_save(
    site: &SiteConfig,
    save: Option<bool>,
    save_as: Option<&str>,
    current: &SaveSetting,
    store: &dyn SavedImages,
) -> Result<SaveSetting, LiveChangeError> {
    let save_image = save.unwrap_or(current.save_image || save_as.is_some());
    match site.save_images {
        SavePolicy::Never if save_image => return Err(LiveChangeError::SaveRefused),
        SavePolicy::Always if !save_image => return Err(LiveChangeError::SaveForced),
        _ => {}
    }
    let save_as = match save_as {
        Some(name) => {
            let bad = |reason: String| LiveChangeError::BadSaveName {
                name: name.to_string(),
                reason,
            };
            validate_image_name(name).map_err(bad)?;
            if site.images.contains_key(name) {
                return Err(bad("the catalogue has an image of that name".into()));
            }
            let taken = store
                .find(name)
                .map_err(|reason| LiveChangeError::StoreUnreadable {
                    name: name.to_string(),
                    reason,
                })?;
            if taken.is_some() {
                return Err(bad(
                    "the image store already has an image of that name".into()
                ));
            }
            Some(name.to_string())
        }
        None => current.save_as.clone(),
    };
    Ok(SaveSetting {
        save_image,
        save_as: save_as.filter(|_| save_image),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoSavedImages as NoStore;
    use sd_host::owner::Owner;
    use sd_request::EnvironmentRequest;

    fn site(save: &str) -> SiteConfig {
        let text = format!(
            "image_dir: images\nsave_images: {save}\n\
             images:\n  busybox: {{ disk: b.qcow2, kernel: k, initrd: i, defaults: {{ memory_mib: 256 }} }}\n\
             vos:\n  demo: {{ images: [busybox], max_memory_mib: 512 }}\ndefault_vo: demo\n"
        );
        SiteConfig::from_str(&text, std::path::Path::new("/etc/sd/site.yaml")).unwrap()
    }

    #[test]
    fn memory_stays_within_boot_vo_and_minimum() {
        let site = site("on_request");
        let mut env = crate::admit(
            &site,
            &Owner::Root,
            Some("demo"),
            &EnvironmentRequest::image_only("busybox"),
            &NoStore,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        env.memory_mib = 768;
        assert_eq!(
            check_memory(&site, &env, 1024),
            Err(LiveChangeError::AboveBoot {
                requested: 1024,
                boot: 768
            })
        );
        assert!(matches!(
            check_memory(&site, &env, 600),
            Err(LiveChangeError::OverVoLimit { limit: 512, .. })
        ));
        assert!(matches!(
            check_memory(&site, &env, 10),
            Err(LiveChangeError::BelowMinimum { .. })
        ));
        check_memory(&site, &env, 256).unwrap();
        let e = check_memory(&site, &env, 1024).unwrap_err();
        assert!(e.to_string().contains("booted with (768 MiB)"), "{e}");
    }

    #[test]
    fn the_save_flag_follows_the_sites_policy() {
        let off = SaveSetting {
            save_image: false,
            save_as: None,
        };
        let on = SaveSetting {
            save_image: true,
            save_as: Some("named".into()),
        };
        let s = check_save(&site("never"), Some(true), None, &off, &NoStore);
        assert_eq!(s, Err(LiveChangeError::SaveRefused));
        let s = check_save(&site("always"), Some(false), None, &on, &NoStore);
        assert_eq!(s, Err(LiveChangeError::SaveForced));
        let s = check_save(&site("on_request"), None, Some("mine"), &off, &NoStore).unwrap();
        assert_eq!(
            s,
            SaveSetting {
                save_image: true,
                save_as: Some("mine".into())
            }
        );
        let e = check_save(&site("on_request"), None, Some("busybox"), &off, &NoStore);
        assert!(matches!(e, Err(LiveChangeError::BadSaveName { .. })));
        let e = check_save(&site("on_request"), None, Some("../x"), &off, &NoStore);
        assert!(matches!(e, Err(LiveChangeError::BadSaveName { .. })));
        let s = check_save(&site("on_request"), Some(false), None, &on, &NoStore).unwrap();
        assert_eq!(s, off);
    }
}
