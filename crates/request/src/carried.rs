//! What a front end carries to the node before anything is parsed: the
//! name of a JDL file or of a catalogue image (`--sd-env=`,
//! `+SDEnvironment =`), then the same with the JDL's text read, with the
//! user's rights, by the front end.

use std::path::PathBuf;

/// A request names a JDL file, or an image and the networks its domain
/// joins: `IMAGE[:NETWORK[,NETWORK...]]` (`busybox:nat`), what a JDL's
/// `VirtualEnvironment = [ Image = ...; Network = ...; ]` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestSpec {
    Jdl(PathBuf),
    Image { name: String, networks: Vec<String> },
}

impl RequestSpec {
    pub fn parse(value: &str) -> RequestSpec {
        let value = value.trim();
        if value.ends_with(".jdl") || value.contains('/') {
            return RequestSpec::Jdl(PathBuf::from(value));
        }
        let (name, networks) = value.split_once(':').unwrap_or((value, ""));
        RequestSpec::Image {
            name: name.trim().to_string(),
            networks: networks
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

/// A request with the JDL's text already read (with the user's rights).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// A JDL's text and the path it was read from (for error messages).
    Jdl { path: PathBuf, text: String },
    /// A catalogue image name, and the networks (site names) to join.
    Image {
        name: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        networks: Vec<String>,
    },
}
