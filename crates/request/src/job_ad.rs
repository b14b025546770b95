//! An HTCondor job ad, as its hooks and job wrapper get it on stdin:
//! `Name = value` lines. The job's owner writes its attributes (`+Name` in
//! the submit file), so everything here reads untrusted text.

use crate::carried::RequestSpec;
use std::collections::HashMap;
use std::path::PathBuf;

/// The job ad attribute that carries the request.
pub const ATTRIBUTE: &str = "SDEnvironment";

/// A job ad as the hooks get it: `Name = value` lines (names are
/// case-insensitive; values are ClassAd expressions, kept as text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobAd {
    attrs: HashMap<String, String>,
}

impl JobAd {
    pub fn parse(text: &str) -> JobAd {
        let attrs = text
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once('=')?;
                let name = name.trim();
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return None;
                }
                Some((name.to_ascii_lowercase(), value.trim().to_string()))
            })
            .collect();
        JobAd { attrs }
    }

    /// The value's text as written in the ad.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.attrs
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// A string attribute, unquoted (ClassAd escapes `\"` and `\\`).
    pub fn string(&self, name: &str) -> Option<String> {
        unquote(self.raw(name)?)
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        self.raw(name)?.parse().ok()
    }

    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.raw(name)?.to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    /// `CLUSTER.PROC`.
    pub fn job_id(&self) -> Result<String, String> {
        match (self.int("ClusterId"), self.int("ProcId")) {
            (Some(c), Some(p)) if c >= 0 && p >= 0 => Ok(format!("{c}.{p}")),
            _ => Err("the job ad has no ClusterId/ProcId: not run by HTCondor?".into()),
        }
    }

    /// The request, if the job made one.
    pub fn request(&self) -> Option<RequestSpec> {
        let value = self.string(ATTRIBUTE)?;
        (!value.trim().is_empty()).then(|| RequestSpec::parse(&value))
    }
}

fn unquote(raw: &str) -> Option<String> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// The fast test for the wrapper of every job: does the ad ask for a
/// domain at all? (A line `SDEnvironment = ...`, any case.)
pub fn mentions_request(ad_text: &str) -> bool {
    ad_text.lines().any(|l| {
        l.len() > ATTRIBUTE.len()
            && l.as_bytes()[..ATTRIBUTE.len()].eq_ignore_ascii_case(ATTRIBUTE.as_bytes())
            && l[ATTRIBUTE.len()..].trim_start().starts_with('=')
    })
}

/// Where a JDL named by a relative path is looked for, in order: the
/// submit directory (a shared file system; HTCondor's starter may have
/// replaced `Iwd` with the scratch directory, so `OrigIwd` / `SUBMIT_Iwd`
/// first), then the scratch directory (our cwd), where
/// `transfer_input_files` put it — under its own name.
pub fn jdl_candidates(ad: &JobAd, path: &std::path::Path, cwd: &std::path::Path) -> Vec<PathBuf> {
    if path.is_absolute() {
        return vec![path.to_path_buf()];
    }
    let mut dirs: Vec<PathBuf> = ["OrigIwd", "SUBMIT_Iwd", "Iwd"]
        .iter()
        .filter_map(|a| ad.string(a))
        .map(PathBuf::from)
        .collect();
    dirs.push(cwd.to_path_buf());
    let mut out: Vec<PathBuf> = vec![];
    for d in dirs {
        for p in [Some(d.join(path)), path.file_name().map(|n| d.join(n))]
            .into_iter()
            .flatten()
        {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// The job's `transfer_output_files` (relative names in the scratch directory).
pub fn output_files(ad: &JobAd) -> Vec<String> {
    ad.string("TransferOutput")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty() && !n.starts_with('/') && !n.split('/').any(|c| c == ".."))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AD: &str = r#"ClusterId = 12
ProcId = 0
Owner = "sdtest"
Iwd = "/home/sdtest/job dir"
SDEnvironment = "jobs/hello.jdl"
Cmd = "/bin/sh"
Args = "-c \"echo hi\""
ExitBySignal = false
ExitCode = 5
sdbackend = "qemu"
"#;

    #[test]
    fn the_job_ad() {
        let ad = JobAd::parse(AD);
        assert_eq!(ad.job_id().unwrap(), "12.0");
        assert_eq!(ad.string("iwd").unwrap(), "/home/sdtest/job dir");
        assert_eq!(ad.string("Args").unwrap(), "-c \"echo hi\"");
        assert_eq!(ad.string("SDBackend").unwrap(), "qemu");
        assert_eq!(ad.int("ExitCode"), Some(5));
        assert_eq!(ad.bool("ExitBySignal"), Some(false));
        assert_eq!(
            ad.request(),
            Some(RequestSpec::Jdl("jobs/hello.jdl".into()))
        );
        assert!(mentions_request(AD));
    }

    #[test]
    fn no_request_no_domain() {
        let plain =
            "ClusterId = 3\nProcId = 1\nCmd = \"/bin/true\"\nSDEnvironmentX = \"busybox\"\n";
        assert!(!mentions_request(plain));
        assert_eq!(JobAd::parse(plain).request(), None);
        let empty = JobAd::parse("ClusterId = 3\nProcId = 1\nsdenvironment = \"  \"\n");
        assert_eq!(empty.request(), None);
        let image = JobAd::parse("SDENVIRONMENT = \"busybox\"");
        assert_eq!(
            image.request(),
            Some(RequestSpec::Image {
                name: "busybox".into(),
                networks: vec![],
            })
        );
        assert!(JobAd::parse("ProcId = 0").job_id().is_err());
    }

    #[test]
    fn where_a_jdl_is_looked_for() {
        let ad = JobAd::parse("Iwd = \"/scratch/dir_1\"\nOrigIwd = \"/home/u/sub\"\n");
        let c = jdl_candidates(
            &ad,
            std::path::Path::new("jobs/x.jdl"),
            std::path::Path::new("/scratch/dir_1"),
        );
        let c: Vec<String> = c.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            c,
            [
                "/home/u/sub/jobs/x.jdl",
                "/home/u/sub/x.jdl",
                "/scratch/dir_1/jobs/x.jdl",
                "/scratch/dir_1/x.jdl"
            ]
        );
        assert_eq!(
            jdl_candidates(
                &ad,
                std::path::Path::new("/abs/x.jdl"),
                std::path::Path::new("/")
            ),
            [PathBuf::from("/abs/x.jdl")]
        );
    }

    #[test]
    fn output_files_are_relative_names() {
        let ad = JobAd::parse("TransferOutput = \"out.txt, results/a.dat,/etc/passwd,../x\"\n");
        assert_eq!(output_files(&ad), ["out.txt", "results/a.dat"]);
        assert!(output_files(&JobAd::default()).is_empty());
    }
}
