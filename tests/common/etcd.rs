//! A real etcd server (Debian's `etcd-server`) for the tests: one member or a cluster on
//! loopback ports, each in its own data directory, killed when the fixture is dropped.
//!
//! The binary is `$PRA_ETCD_BIN`, else `etcd` on the PATH. There is no skipping: a machine
//! without etcd fails these tests with the command that installs it (`make apt-tools`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pra_core::store::{EtcdOptions, EtcdStore, Store};

/// One etcd member.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster (one or more members) on 127.0.0.1.
pub struct Etcd {
    members: Vec<Member>,
    initial_cluster: String,
    dir: tempfile::TempDir,
}

fn etcd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PRA_ETCD_BIN") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "etcd is not installed: these tests run against a real etcd server. Install it with \
             `make apt-tools` (Debian's etcd-server), or set PRA_ETCD_BIN"
        )
    })
}

/// A loopback port that was free a moment ago, taken below the kernel's ephemeral range
/// (32768–60999 by default) so that no outgoing connection of a parallel test is handed it
/// between this check and etcd's bind. Ports are handed out in order from a per-process start
/// so that two fixtures of one test binary never pick the same one; a clash with another
/// process is still possible and is what [`Etcd::cluster`]'s retry is for.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 97) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

impl Etcd {
    /// Starts a one-member etcd and waits until it answers.
    pub fn start() -> Etcd {
        Etcd::cluster(1)
    }

    /// Starts an `n`-member cluster and waits until every member answers (a leader is elected).
    ///
    /// A port can still be taken by another process between the check and etcd's bind; a
    /// member that exits at start is then retried on fresh ports, a few times.
    pub fn cluster(n: usize) -> Etcd {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut etcd = Etcd::fresh(n);
            for i in 0..n {
                etcd.spawn(i);
            }
            match (0..n).try_for_each(|i| etcd.wait_started(i)) {
                Ok(()) => return etcd,
                Err(why) if attempt < 5 => eprintln!("etcd fixture: retrying on new ports: {why}"),
                Err(why) => panic!("etcd fixture: {why}"),
            }
        }
    }

    fn fresh(n: usize) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        Etcd {
            members,
            initial_cluster,
            dir,
        }
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(etcd_bin())
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", "pra-test"])
            // Fast elections, so that losing the leader costs well under a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", etcd_bin().display()));
        self.members[i].child = Some(child);
    }

    /// Waits (up to 30 s) until member `i` serves a linearizable read.
    pub fn wait_ready(&mut self, i: usize) {
        if let Err(why) = self.wait_started(i) {
            panic!("{why}");
        }
    }

    /// Waits (up to 30 s) until member `i` serves a linearizable read; says why not, with the
    /// member's log, if it exited or did not answer in time.
    fn wait_started(&mut self, i: usize) -> Result<(), String> {
        let store = self.store_on(&[i], "/pra-fixture", Duration::from_secs(1));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let exited = match self.members[i].child.as_mut() {
                Some(c) => c.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                return Err(format!(
                    "etcd member {i} exited at start ({status}):\n{}",
                    self.log_tail(i)
                ));
            }
            match store.load() {
                Ok(_) => return Ok(()),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(format!(
                        "etcd member {i} did not become ready: {e}\n{}",
                        self.log_tail(i)
                    ));
                }
            }
        }
    }

    /// The `host:port` of member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// `etcd://` URL naming every member, with `prefix` (starting with `/`).
    pub fn url(&self, prefix: &str) -> String {
        let all: Vec<String> = (0..self.members.len()).map(|i| self.endpoint(i)).collect();
        format!("etcd://{}{prefix}", all.join(","))
    }

    /// A store on the given members only, with a call timeout.
    pub fn store_on(&self, members: &[usize], prefix: &str, timeout: Duration) -> EtcdStore {
        let eps: Vec<String> = members.iter().map(|&i| self.endpoint(i)).collect();
        EtcdStore::open(
            &eps,
            prefix,
            Arc::new(pra_core::SystemClock),
            EtcdOptions {
                timeout,
                run_ttl: Duration::from_secs(5),
            },
        )
        .unwrap()
    }

    /// SIGKILLs member `i` (a crash: no clean shutdown).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory and waits until it answers.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_ready(i);
    }

    /// The data directory of member `i`.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data
    }

    /// The last lines of member `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The index of the current leader, asked of member `ask`.
    pub fn leader(&self, ask: usize) -> usize {
        let endpoint = format!("http://{}", self.endpoint(ask));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (leader, members) = rt.block_on(async {
            let mut c = etcd_client::Client::connect([endpoint], None)
                .await
                .unwrap();
            let leader = c.status().await.unwrap().leader();
            (leader, c.member_list().await.unwrap())
        });
        let name = members
            .members()
            .iter()
            .find(|m| m.id() == leader)
            .map(|m| m.name().to_string())
            .expect("the leader is a member");
        self.members.iter().position(|m| m.name == name).unwrap()
    }

    /// Writes raw bytes at `key` (to damage a record on purpose).
    pub fn put_raw(&self, key: &str, value: &[u8]) {
        let endpoint = format!("http://{}", self.endpoint(0));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = etcd_client::Client::connect([endpoint], None)
                .await
                .unwrap();
            c.put(key, value, None).await.unwrap();
        });
    }

    /// The fixture's scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
