//! The console API (`sd serve`) as a user sees it: the OpenAPI document is
//! served; without a token nothing is; another user's token neither sees
//! nor changes a domain (403) and the journal is untouched; the token set
//! by `?token=` comes back as an HttpOnly SameSite=Strict cookie. No VM:
//! access is decided before any domain is asked (the settings themselves
//! are tested on real VMs in tests/settings.rs).

mod common;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

struct Server(std::process::Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

#[test]
fn another_users_token_gets_403_and_changes_nothing() {
    let _serial = common::serial();
    sd_host::needs_root("serving the console API as root");
    let config = format!(
        "{}default_vo: demo\n\
         images:\n  busybox: {{ disk: busybox.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
         vos:\n  demo: {{ images: [busybox] }}\n",
        common::qemu_site_head()
    );
    let site = common::TestSite::new("sd-console-", &config);
    let state = site.path("state");
    for (id, uid) in [("job-alice", 1000), ("job-bob", 1001)] {
        let mut j = sd_vmm::journal::Journal::create(&state, id).unwrap();
        j.update_details(|d| d.uid = Some(uid)).unwrap();
    }
    let port = 20000 + (std::process::id() % 20000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let _server = Server(
        site.sd()
            .args(["serve", "--listen", &addr])
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "sd serve did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Each owner's token is theirs alone.
    let token_file = state.join("console/tokens/1001");
    let meta = std::fs::metadata(&token_file).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (1001, 0o600));
    let bob = std::fs::read_to_string(&token_file).unwrap();
    let url = site
        .sd()
        .args(["serve", "--token", "--listen", &addr])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&url.stdout).starts_with(&format!("http://{addr}/?token=")));

    let (status, _, doc) = request(&addr, "GET", "/api/openapi.json", None, "");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(
        doc["paths"]["/api/deployments/{id}"]["patch"].is_object(),
        "{doc}"
    );

    let (status, _, _) = request(&addr, "GET", "/api/deployments", None, "");
    assert_eq!(status, 401);
    let (status, _, _) = request(&addr, "GET", "/api/deployments", Some(&"0".repeat(64)), "");
    assert_eq!(status, 401);

    // Bob sees his own, not Alice's; he may neither read nor change hers.
    let (status, _, list) = request(&addr, "GET", "/api/deployments", Some(&bob), "");
    assert_eq!(status, 200, "{list}");
    assert!(
        list.contains("job-bob") && !list.contains("job-alice"),
        "{list}"
    );
    let (status, _, body) = request(&addr, "GET", "/api/deployments/job-alice", Some(&bob), "");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not yours"), "{body}");
    let before = std::fs::read(state.join("journal/job-alice.json")).unwrap();
    let (status, _, body) = request(
        &addr,
        "PATCH",
        "/api/deployments/job-alice",
        Some(&bob),
        r#"{"memory_mib": 128, "save": true}"#,
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        std::fs::read(state.join("journal/job-alice.json")).unwrap(),
        before
    );
    // Root sees both.
    let root = std::fs::read_to_string(state.join("console/tokens/0")).unwrap();
    let (_, _, list) = request(&addr, "GET", "/api/deployments", Some(&root), "");
    assert!(
        list.contains("job-bob") && list.contains("job-alice"),
        "{list}"
    );
    // A body that is not the schema is the user's error, not a 500.
    let (status, _, _) = request(
        &addr,
        "PATCH",
        "/api/deployments/job-bob",
        Some(&bob),
        r#"{"colour": 1}"#,
    );
    assert_eq!(status, 422);

    // The first load's token becomes a cookie no script and no other site gets.
    let (status, head, _) = request(&addr, "GET", &format!("/api/pools?token={bob}"), None, "");
    assert_eq!(status, 200);
    assert!(
        head.contains(&format!("sd_token={bob}; HttpOnly; SameSite=Strict")),
        "{head}"
    );

    // A client that never ends its headers is cut off after the header
    // read timeout (5 s); the console serves others meanwhile.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /api/openapi.json HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let (status, _, _) = request(&addr, "GET", "/api/openapi.json", None, "");
    assert_eq!(status, 200, "served beside the slow client");
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(30),
        "the slow client was cut off after {waited:?}"
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("\"openapi\""),
        "a request without the end of its headers got an answer"
    );
}

/// `curl` over the console's Unix socket as `uid`: (status, body).
fn over_socket(
    sock: &std::path::Path,
    uid: u32,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "20", "-X", method, "-w", "\n%{http_code}"])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ])
        .arg("--unix-socket")
        .arg(sock)
        .arg(format!("http://localhost{path}"))
        .uid(uid)
        .gid(uid)
        .output()
        .expect("curl (scripts/setup installs it)");
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = out.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn on_the_unix_socket_the_kernel_says_who_asks() {
    let _serial = common::serial();
    sd_host::needs_root("serving the console API as root");
    const SDTEST: u32 = 4242;
    let config = format!(
        "{}default_vo: demo\n\
         images:\n  busybox: {{ disk: busybox.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
         vos:\n  demo: {{ images: [busybox] }}\n",
        common::qemu_site_head()
    );
    let site = common::TestSite::new("sd-console-sock-", &config);
    let state = site.path("state");
    for (id, uid) in [("job-sdtest", SDTEST), ("job-alice", 1000)] {
        let mut j = sd_vmm::journal::Journal::create(&state, id).unwrap();
        j.update_details(|d| d.uid = Some(uid)).unwrap();
    }
    // A site's directories are others' to traverse (its config to read).
    use std::os::unix::fs::PermissionsExt;
    for dir in [site.dir.path(), state.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(
        site.path("site.yaml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    // No service yet: a user's `sd set` says what to do.
    let sd_as_sdtest = |args: &[&str]| {
        use std::os::unix::process::CommandExt;
        site.sd()
            .args(args)
            .uid(SDTEST)
            .gid(SDTEST)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = sd_as_sdtest(&["set", "job-sdtest", "save=true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::text(&out.stderr).contains("no console service answers"),
        "{}",
        common::text(&out.stderr)
    );

    let port = 20000 + ((std::process::id() + 1) % 20000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let _server = Server(
        site.sd()
            .args(["serve", "--listen", &addr])
            .spawn()
            .unwrap(),
    );
    let sock = state.join("console/console.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "sd serve made no {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o666));

    // No token: sdtest is who connected, and sees only its own.
    let (status, list) = over_socket(&sock, SDTEST, "GET", "/api/deployments", "");
    assert_eq!(status, 200, "{list}");
    assert!(
        list.contains("job-sdtest") && !list.contains("job-alice"),
        "{list}"
    );
    let (status, body) = over_socket(&sock, SDTEST, "GET", "/api/deployments/job-alice", "");
    assert_eq!(status, 403, "{body}");
    let before = std::fs::read(state.join("journal/job-alice.json")).unwrap();
    let (status, body) = over_socket(
        &sock,
        SDTEST,
        "PATCH",
        "/api/deployments/job-alice",
        r#"{"save": true}"#,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not yours"), "{body}");
    assert_eq!(
        std::fs::read(state.join("journal/job-alice.json")).unwrap(),
        before
    );
    // Another uid is another caller.
    let (status, list) = over_socket(&sock, 1000, "GET", "/api/deployments", "");
    assert_eq!(status, 200);
    assert!(
        list.contains("job-alice") && !list.contains("job-sdtest"),
        "{list}"
    );
    // Root sees both.
    let (_, list) = over_socket(&sock, 0, "GET", "/api/deployments", "");
    assert!(
        list.contains("job-alice") && list.contains("job-sdtest"),
        "{list}"
    );

    // sdtest's `sd set` goes through the socket: the service's answer (this
    // fake deployment has no domain yet) is what it says.
    let out = sd_as_sdtest(&["set", "job-sdtest", "save=true"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out.stderr));
    assert!(
        common::text(&out.stderr).contains("still being created"),
        "{}",
        common::text(&out.stderr)
    );
    let out = sd_as_sdtest(&["set", "job-alice", "save=true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(common::text(&out.stderr).contains("not yours"));
}
