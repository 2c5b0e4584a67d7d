//! `pra serve` for real: its endpoints, and Debian's HAProxy in front of two sites, each a
//! `pra serve` beside a tiny app, with `option httpchk GET /active` — traffic moves from rbx to
//! sbg after a flip, and never goes to both.

#[path = "common/output.rs"]
mod output;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use output::ok;

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One GET: (status, body), or `None` if nothing answered.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let code = r.split_whitespace().nth(1)?.parse().ok()?;
    let body = r.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pra.toml"), "").unwrap();
        Env { dir }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn pra(&self, site: Option<&str>, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pra"));
        c.args(args)
            .env(
                "PRA_STORE",
                format!("sqlite://{}", self.path("state.db").display()),
            )
            .env("PRA_SITES", "rbx,sbg")
            .env("PRA_CONFIG", self.path("pra.toml"))
            .env("PRA_DB", self.path("app.db"))
            .env("PRA_BACKUP_DIR", self.path("backup"))
            .env_remove("PRA_SERVE_LISTEN")
            .env_remove("PRA_SERVE_SETTLE");
        match site {
            Some(s) => c.env("PRA_SITE", s),
            None => c.env_remove("PRA_SITE"),
        };
        c
    }
    /// `pra site ARGS --by t`, which must succeed.
    fn flip(&self, args: &[&str]) {
        let mut a = vec!["site"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--by", "t"]);
        ok(self.pra(None, &a).output().unwrap());
    }
    /// `pra serve` for `site` (None: no site configured) on a free port, once it answers.
    fn serve(&self, site: Option<&str>, settle: &str) -> (Killed, u16) {
        let port = free_port();
        let child = self
            .pra(
                site,
                &[
                    "serve",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--settle",
                    settle,
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let child = Killed(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(port, "/healthz").is_none() {
            assert!(Instant::now() < deadline, "pra serve never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        (child, port)
    }
}

#[test]
fn the_endpoints_answer_and_active_denies_by_default() {
    let e = Env::new();
    e.flip(&["activate", "rbx", "--expect-token", "0"]);
    let (_rbx, rbx) = e.serve(Some("rbx"), "0");
    let (_sbg, sbg) = e.serve(Some("sbg"), "0");
    let (_none, none) = e.serve(None, "0");
    let (code, body) = get(rbx, "/active").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"token\":1"), "{body}");
    assert_eq!(get(sbg, "/active").unwrap().0, 503, "standby");
    assert_eq!(get(none, "/active").unwrap().0, 503, "no site configured");
    assert_eq!(get(rbx, "/healthz").unwrap(), (200, "ok\n".into()));
    let (code, metrics) = get(rbx, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("pra_active_site{site=\"rbx\"} 1"),
        "{metrics}"
    );
    let (code, status) = get(rbx, "/status").unwrap();
    let doc: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        code, 503,
        "no database, no backup: failing, as pra status says"
    );
    assert_eq!(doc["active_site"], "rbx");
    assert!(doc.get("count").is_some() && doc.get("backup_age_seconds").is_some());
    assert_eq!(get(rbx, "/nope").unwrap().0, 404);
    // The store gone: deny.
    std::fs::rename(e.path("state.db"), e.path("moved.db")).unwrap();
    assert_eq!(get(rbx, "/active").unwrap().0, 503, "store unreadable");
    std::fs::rename(e.path("moved.db"), e.path("state.db")).unwrap();
    // Settling: a site just made active stays 503 for --settle.
    let (_slow, slow) = e.serve(Some("rbx"), "30");
    let (code, body) = get(slow, "/active").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"settled\":false"), "{body}");
}

/// A tiny app answering its site's name to every request, on a free port.
fn app(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut s = stream;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                name.len()
            );
        }
    });
    port
}

fn haproxy_bin() -> PathBuf {
    for p in ["/usr/sbin/haproxy", "/usr/bin/haproxy"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("haproxy is missing: apt-get install haproxy (make apt-tools installs it)");
}

/// HAProxy checks each site's `pra serve` every 500 ms (`fall 1 rise 1`); `--settle 1` is
/// longer than `inter × fall` = 0.5 s, which is what makes the switch break before make at the
/// balancer too: with `--settle 0` the two CLI flips, a few tens of milliseconds apart, let
/// sbg come up while HAProxy still sends to rbx (this test then fails).
#[test]
fn haproxy_moves_traffic_to_the_new_active_site_and_never_to_both() {
    let e = Env::new();
    e.flip(&["activate", "rbx", "--expect-token", "0"]);
    let (_rbx_serve, rbx_check) = e.serve(Some("rbx"), "1");
    let (_sbg_serve, sbg_check) = e.serve(Some("sbg"), "1");
    let (rbx_app, sbg_app) = (app("rbx"), app("sbg"));
    let front = free_port();
    let cfg = format!(
        "global\n  maxconn 100\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
         frontend fe\n  bind 127.0.0.1:{front}\n  default_backend app\n\
         backend app\n  option httpchk GET /active\n  default-server inter 500ms fall 1 rise 1\n\
         \x20 server rbx 127.0.0.1:{rbx_app} check port {rbx_check}\n\
         \x20 server sbg 127.0.0.1:{sbg_app} check port {sbg_check}\n"
    );
    std::fs::write(e.path("haproxy.cfg"), cfg).unwrap();
    let _haproxy = Killed(
        Command::new(haproxy_bin())
            .args(["-db", "-f"])
            .arg(e.path("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // HAProxy starts with every server up until its first check: wait for rbx alone, for
    // longer than two check intervals in a row.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut rbx_since = Instant::now();
    loop {
        if get(front, "/").map(|(_, b)| b) != Some("rbx".into()) {
            rbx_since = Instant::now();
        } else if rbx_since.elapsed() > Duration::from_millis(1200) {
            break;
        }
        assert!(Instant::now() < deadline, "traffic never went to rbx alone");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Requests go through HAProxy all along; the flip happens in the middle.
    let start = Instant::now();
    let sampler = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while start.elapsed() < Duration::from_secs(6) {
            let answer = get(front, "/").map_or("none".to_string(), |(code, body)| {
                if code == 200 { body } else { code.to_string() }
            });
            seen.push((start.elapsed(), answer));
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(1000));
    e.flip(&["deactivate", "--expect-token", "1"]);
    let flipped = start.elapsed();
    e.flip(&["activate", "sbg", "--expect-token", "2"]);
    let seen = sampler.join().unwrap();
    let first_sbg = seen
        .iter()
        .find(|(_, a)| a == "sbg")
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("traffic never reached sbg: {seen:?}"));
    let rbx_after: Vec<_> = seen
        .iter()
        .filter(|(t, a)| *t > first_sbg && a == "rbx")
        .collect();
    assert!(
        rbx_after.is_empty(),
        "rbx answered after sbg did: {rbx_after:?}"
    );
    assert!(
        seen.iter()
            .filter(|(t, _)| *t < flipped)
            .all(|(_, a)| a == "rbx"),
        "before the flip, rbx only: {seen:?}"
    );
    // The bound: settle (1 s) + a check interval (0.5 s) + the CLI's own time; 3 s leaves room
    // for a loaded CI machine.
    assert!(
        first_sbg - flipped < Duration::from_secs(3),
        "sbg took {:?} after the flip",
        first_sbg - flipped
    );
    // In between, HAProxy had no healthy server: 503, never the wrong site.
    assert!(
        seen.iter()
            .filter(|(t, _)| *t >= flipped && *t < first_sbg)
            .all(|(_, a)| a == "503" || a == "rbx"),
        "{seen:?}"
    );
}
