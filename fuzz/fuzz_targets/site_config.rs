//! The site configuration (`site.yaml`), through `SiteConfig::from_str`,
//! the text half of `SiteConfig::load` (which only adds reading the file).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_site::SiteConfig;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match SiteConfig::from_str(text, Path::new("/etc/smartdomains/site.yaml")) {
        Ok(site) => drop(format!("{site:?}")),
        Err(e) => {
            let _ = e.position();
            drop(e.to_string());
        }
    }
});
