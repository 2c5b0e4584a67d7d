//! A real S3-compatible server for the offsite backup tests: moto in server mode (from the
//! project's .venv, which `make test-rust` fills, or PRA_MOTO_BIN), on a loopback port, one per
//! test, with a bucket; plus raw unsigned HTTP to damage and inspect objects behind pra's back.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bucket every fixture creates.
pub const BUCKET: &str = "pra-backups";

/// A running moto server, killed on drop.
pub struct S3 {
    child: Child,
    /// Its loopback port.
    pub port: u16,
}

fn moto_bin() -> PathBuf {
    let bin = std::env::var_os("PRA_MOTO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server"));
    assert!(
        bin.exists(),
        "{} is missing: these tests run against a real S3-compatible server. Run `make \
         .venv/.requirements-installed` (pip installs moto[server] from \
         pra-py/requirements-dev.txt into .venv), or set PRA_MOTO_BIN",
        bin.display()
    );
    bin
}

/// A loopback port in 20000–32000 that was free a moment ago (below the ephemeral range, from a
/// per-process start so that parallel tests of one binary do not pick the same one).
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = (std::process::id() * 131) % 12_000;
    loop {
        let port = (20_000 + (base + NEXT.fetch_add(7, Ordering::SeqCst)) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl S3 {
    /// Starts moto and creates [`BUCKET`].
    pub fn start() -> S3 {
        let bin = moto_bin();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start moto_server");
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut s3 = None;
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break; // port taken meanwhile: another one
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    s3 = Some(port);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Some(port) = s3 {
                let s3 = S3 { child, port };
                let (status, body) = s3.http("PUT", &format!("/{BUCKET}"), b"");
                assert_eq!(
                    status,
                    200,
                    "create bucket: {}",
                    String::from_utf8_lossy(&body)
                );
                return s3;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("moto_server did not start");
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Points `cmd` (a `pra` command) at this server, credentials in the environment.
    pub fn env(&self, cmd: &mut Command, prefix: &str) {
        cmd.env("PRA_BACKUP_TARGET", format!("s3://{BUCKET}/{prefix}"))
            .env("PRA_BACKUP_S3_ENDPOINT", self.endpoint())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
    }

    /// One unsigned HTTP/1.1 request (moto accepts them): status and body.
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let split = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP response");
        let head = String::from_utf8_lossy(&resp[..split]).to_string();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "chunked response: {head}"
        );
        (status, resp[split + 4..].to_vec())
    }

    /// Object keys under `prefix`, from the server's own listing.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let (status, body) = self.http(
            "GET",
            &format!("/{BUCKET}?list-type=2&prefix={prefix}"),
            b"",
        );
        assert_eq!(status, 200);
        let body = String::from_utf8_lossy(&body).to_string();
        body.split("<Key>")
            .skip(1)
            .map(|s| s.split("</Key>").next().unwrap().to_string())
            .collect()
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn pending_uploads(&self) -> usize {
        let (status, body) = self.http("GET", &format!("/{BUCKET}?uploads"), b"");
        assert_eq!(status, 200);
        String::from_utf8_lossy(&body).matches("<UploadId>").count()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
