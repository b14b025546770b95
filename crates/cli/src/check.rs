//! `sd check FILE.jdl|IMAGE [--vo VO] [--json]`: would this request be
//! admitted here, and as what? For a user or the WMS before submitting.
//!
//! It is the prolog's admission ([`frontend::admit_parsed`], which
//! [`frontend::admit`] ends in) for the calling user with the groups the
//! system gives them; it boots nothing and writes nothing.

use sd_batch::frontend::{self, Request, RequestSpec};
use sd_host::owner::Owner;
use sd_host::user_files::UserFiles;
use sd_languages::jdl::JobDescription;
use sd_policy::ResolvedEnvironment;
use sd_request::JobRequest;
use sd_site::SiteConfig;
use std::fmt::Write;

/// Why a request would be refused: the message, as the prolog would say it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Admits `spec` (a JDL path, or `IMAGE[:NETWORKS]`) for the caller.
/// `vo` picks among the caller's VOs when the JDL names none (or for an
/// image); a JDL naming another VO is refused, not overridden.
pub fn check(
    site: &SiteConfig,
    spec: &str,
    vo: Option<&str>,
) -> Result<ResolvedEnvironment, Refused> {
    let owner = Owner::current().map_err(|e| Refused(e.to_string()))?;
    match RequestSpec::parse(spec) {
        RequestSpec::Jdl(path) => {
            // The caller's own rights: the same reading as `sd run`.
            let text = UserFiles::caller()
                .read_text(&path, site.max_request_bytes, "max_request_bytes")
                .map_err(|e| Refused(e.to_string()))?;
            let jdl = JobDescription::parse(&text, &path).map_err(|e| Refused(e.to_string()))?;
            let named = jdl.virtual_organisation.clone();
            if let (Some(named), Some(asked)) = (&named, vo) {
                if named != asked {
                    return Err(Refused(format!(
                        "{}: the JDL names VirtualOrganisation {named:?}, --vo says {asked:?}",
                        path.display()
                    )));
                }
            }
            let request = JobRequest {
                vo: named.or(vo.map(str::to_string)),
                environment: jdl.virtual_environment.unwrap_or_default(),
            };
            frontend::admit_parsed(site, &owner, &request).map_err(|e| Refused(e.to_string()))
        }
        RequestSpec::Image { name, networks } => {
            if let Some(vo) = vo.filter(|vo| !site.vos.contains_key(*vo)) {
                // `admit` would fall back to the caller's default VO.
                return Err(Refused(format!("this site has no VO {vo:?}")));
            }
            let request = Request::Image { name, networks };
            frontend::admit(site, &owner, &request, vo).map_err(|e| Refused(e.to_string()))
        }
    }
}

/// The resolved environment for a person: one `key: value` per line.
pub fn describe(env: &ResolvedEnvironment) -> String {
    let mut out = String::new();
    let image = if env.from_store {
        format!("{} (saved, from {})", env.image.name, env.catalogue_image)
    } else {
        env.image.name.clone()
    };
    let networks: Vec<String> = env
        .networks
        .iter()
        .map(|nic| match nic.ip {
            Some(ip) => format!("{} ({ip})", nic.network),
            None => nic.network.clone(),
        })
        .collect();
    let lines = [
        ("vo", env.vo.clone()),
        ("image", image),
        ("kernel", env.image.kernel.display().to_string()),
        ("initrd", env.image.initrd.display().to_string()),
        ("memory", format!("{} MiB", env.memory_mib)),
        ("vcpus", env.vcpus.to_string()),
        ("disk", format!("{} MiB", env.disk_mib)),
        ("hostname", env.hostname.clone()),
        (
            "networks",
            if networks.is_empty() {
                "none".into()
            } else {
                networks.join(", ")
            },
        ),
        ("save_image", env.save_image.to_string()),
    ];
    for (key, value) in lines {
        let _ = writeln!(out, "{key}: {value}");
    }
    out
}
