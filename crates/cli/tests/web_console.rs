//! The web console in a real browser: headless Chromium (Debian's
//! `chromium`, driven through `chromedriver`'s WebDriver HTTP API, a few
//! JSON requests) opens the page of `sd serve` with the token URL, sees a
//! booted pool and its member, sets the member's memory with the page's
//! control and sees the new value arrive through the event stream, and in
//! the guest. The screenshot is kept as
//! `target/test-artefacts/web_console.png`.
//!
//! Needs what tests/settings.rs needs (a real QEMU pool), and
//! `scripts/setup`'s chromium and chromium-driver. One VM.

mod common;
use common::{serial, text};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const POOL: &str = "\
sfConfig:
  extends: Compound
  sfLivenessDelay: 2
  sfLivenessFactor: 5
  a: { extends: DefaultXenDomain, image: busybox, memory: 256, disk: 1024 }
";

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn site() -> common::TestSite {
    let config = format!(
        "{head}\
         default_vo: demo\n\
         defaults: {{ image: busybox, memory_mib: 256, vcpus: 1, disk_mib: 1024, hostname: sd-guest }}\n\
         images:\n\
         \x20 busybox: {{ disk: busybox.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
         vos:\n\
         \x20 demo: {{ images: [busybox], max_memory_mib: 512, max_vcpus: 2, max_disk_mib: 4096 }}\n",
        head = common::qemu_site_head(),
    );
    let site = common::TestSite::new("sd-web-", &config);
    std::fs::set_permissions(site.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    site
}

fn sd(site: &common::TestSite, args: &[&str]) -> Output {
    site.sd().args(args).stdin(Stdio::null()).output().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One WebDriver command: its `value`.
fn wd(addr: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    match wd_try(addr, method, path, body) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// One WebDriver command: its `value`, or what it answered instead.
fn wd_try(addr: &str, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // chromedriver keeps the connection open: read what Content-Length says.
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let (head, body) = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "WebDriver {method} {path}: connection closed");
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("a Content-Length");
            if body.len() >= len {
                break (head.to_string(), body[..len].to_string());
            }
        }
    };
    let (head, body) = (head.as_str(), body.as_str());
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}: {head} {body}"));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("WebDriver {method} {path}: {head}\n{body:.2000}"));
    }
    Ok(v["value"].clone())
}

struct Browser {
    driver: String,
    session: String,
}

impl Browser {
    fn at(&self, rel: &str) -> String {
        format!("/session/{}{rel}", self.session)
    }
    fn find(&self, css: &str) -> Option<String> {
        let v = wd(
            &self.driver,
            "POST",
            &self.at("/elements"),
            Some(json!({"using": "css selector", "value": css})),
        );
        let first = v.as_array()?.first()?.clone();
        first
            .as_object()?
            .values()
            .next()?
            .as_str()
            .map(str::to_string)
    }
    fn text(&self, css: &str) -> Option<String> {
        let e = self.find(css)?;
        wd(
            &self.driver,
            "GET",
            &self.at(&format!("/element/{e}/text")),
            None,
        )
        .as_str()
        .map(str::to_string)
    }
    /// Waits until the text of `css` satisfies `ok`, and returns it.
    fn wait_text(&self, css: &str, within: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let t = self.text(css).unwrap_or_default();
            if ok(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never became as expected; last: {t:?}; page:\n{}",
                self.text("body").unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    fn type_into(&self, css: &str, value: &str) {
        let e = self.find(css).unwrap_or_else(|| panic!("no {css}"));
        wd(
            &self.driver,
            "POST",
            &self.at(&format!("/element/{e}/clear")),
            Some(json!({})),
        );
        wd(
            &self.driver,
            "POST",
            &self.at(&format!("/element/{e}/value")),
            Some(json!({"text": value})),
        );
    }
    fn click(&self, css: &str) {
        let e = self.find(css).unwrap_or_else(|| panic!("no {css}"));
        wd(
            &self.driver,
            "POST",
            &self.at(&format!("/element/{e}/click")),
            Some(json!({})),
        );
    }
    fn screenshot(&self, path: &std::path::Path) {
        let b64 = wd(&self.driver, "GET", &self.at("/screenshot"), None);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, base64_decode(b64.as_str().unwrap())).unwrap();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | (val(c) as u32) << (18 - 6 * i));
        out.extend(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn mem_total_kib(site: &common::TestSite, member: &str) -> u64 {
    let out = sd(site, &["exec", member, "--", "cat", "/proc/meminfo"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("MemTotal in /proc/meminfo")
}

fn artefacts() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| common::repo().join("target"));
    target.join("test-artefacts")
}

#[test]
fn the_page_shows_the_pool_and_a_click_sets_memory() {
    let _serial = serial();
    sd_host::needs_root("booting a pool and serving the console");
    let site = site();
    let file = site.path("pool.yaml");
    std::fs::write(&file, POOL).unwrap();
    let t0 = Instant::now();
    let out = sd(&site, &["start", "web", &file.display().to_string()]);
    assert!(out.status.success(), "sd start: {}", text(&out.stderr));
    let booted = t0.elapsed();

    let result = std::panic::catch_unwind(|| {
        let addr = format!("127.0.0.1:{}", free_port());
        let _serve = Killed(
            site.sd()
                .args(["serve", "--listen", &addr])
                .spawn()
                .unwrap(),
        );
        wait_listening(&addr);
        let url = sd(&site, &["serve", "--token", "--listen", &addr]);
        let url = text(&url.stdout).trim().to_string();
        assert!(url.starts_with(&format!("http://{addr}/?token=")), "{url}");

        let driver = format!("127.0.0.1:{}", free_port());
        let port = driver.rsplit(':').next().unwrap().to_string();
        let _chromedriver = Killed(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver (scripts/setup installs chromium-driver)"),
        );
        wait_listening(&driver);
        let profile = tempfile::tempdir().unwrap();
        let session = wd(
            &driver,
            "POST",
            "/session",
            Some(
                json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,720",
                             format!("--user-data-dir={}", profile.path().display())]
                }}}}),
            ),
        );
        let browser = Browser {
            driver: driver.clone(),
            session: session["sessionId"].as_str().unwrap().to_string(),
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let t = Instant::now();
            wd(
                &driver,
                "POST",
                &browser.at("/url"),
                Some(json!({ "url": url })),
            );
            // The token left the address bar for an HttpOnly cookie.
            let now = wd(&driver, "GET", &browser.at("/url"), None);
            assert_eq!(now.as_str(), Some(format!("http://{addr}/").as_str()));
            let row = "#dom-pool-web-a";
            browser.wait_text(row, Duration::from_secs(15), |t| t.contains("running"));
            let pool = browser.text("section[data-pool=web] h2").unwrap();
            assert!(pool.contains("web") && pool.contains("1 member"), "{pool}");
            let shown = t.elapsed();
            browser.wait_text(&format!("{row} .facts"), Duration::from_secs(15), |t| {
                t.contains("liveness every 2 s") && t.contains("last beat")
            });

            // Above the memory at boot: the API's refusal, on the page.
            browser.type_into(&format!("{row} input[name=memory]"), "300");
            browser.click(&format!("{row} .mem button"));
            let said = browser.wait_text(&format!("{row} .msg"), Duration::from_secs(15), |t| {
                t.contains("256")
            });
            assert!(said.contains("above what the domain booted with"), "{said}");

            let before = mem_total_kib(&site, "web/a");
            let t = Instant::now();
            browser.type_into(&format!("{row} input[name=memory]"), "160");
            browser.click(&format!("{row} .mem button"));
            // `.actual` is written from the event stream only.
            browser.wait_text(&format!("{row} .actual"), Duration::from_secs(30), |t| {
                t == "160"
            });
            let arrived = t.elapsed();
            let after = mem_total_kib(&site, "web/a");
            assert!(
                after + 80 * 1024 < before,
                "MemTotal {before} -> {after} kB"
            );
            std::thread::sleep(Duration::from_secs(2)); // a few beats on the plot
            let shot = artefacts().join("web_console.png");
            browser.screenshot(&shot);
            eprintln!(
                "pool booted in {:.1} s; page showed it in {:.1} s; memory=160 by a click, \
                 seen through /api/events in {:.1} s; MemTotal {before} -> {after} kB; \
                 screenshot {}",
                booted.as_secs_f64(),
                shown.as_secs_f64(),
                arrived.as_secs_f64(),
                shot.display()
            );
        }));
        wd(&driver, "DELETE", &browser.at(""), None);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    });
    let out = sd(&site, &["terminate", "web"]);
    assert!(out.status.success(), "sd terminate: {}", text(&out.stderr));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(site.leftovers(&["qemu", "pool-monitor"]).is_empty());
}
