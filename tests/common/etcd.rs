//! A real etcd server (Debian's `etcd-server`) for the tests: one member or a cluster on
//! loopback ports, each in its own data directory, killed when the fixture is dropped.
//!
//! [`Etcd::secure`] starts it with TLS everywhere (a CA made here with rcgen, clients and
//! peers must show a certificate it signed: `--client-cert-auth`, `--peer-client-cert-auth`)
//! and etcd's authentication enabled (users and roles made through etcd-client's auth API;
//! no etcdctl). Its `operator` user may do anything under every prefix; [`Etcd::add_user`]
//! makes others. [`Etcd::with_quota`] starts one member with a tiny backend quota, to fill.
//!
//! The binary is `$PRA_ETCD_BIN`, else `etcd` on the PATH. There is no skipping: a machine
//! without etcd fails these tests with the command that installs it (`make apt-tools`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pra_core::store::{EtcdOptions, EtcdSecurity, EtcdStore, Store};

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
    /// The certificates, when the cluster speaks TLS.
    certs: Option<Certs>,
    /// Whether etcd's authentication is enabled (the fixture then acts as `operator`).
    auth: bool,
    /// More flags for every member (`--quota-backend-bytes=...`, `--auth-token-ttl=...`).
    flags: Vec<String>,
}

/// The PEM files of a TLS cluster, in the fixture's directory.
pub struct Certs {
    /// The CA that signed every certificate below.
    pub ca: PathBuf,
    /// The members' certificate (127.0.0.1 and localhost; server and client use, for peers).
    pub member: PathBuf,
    pub member_key: PathBuf,
    /// A client certificate.
    pub client: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate signed by the CA that expired in 2021.
    pub expired: PathBuf,
    pub expired_key: PathBuf,
    /// Another CA, which signed nothing the cluster shows.
    pub other_ca: PathBuf,
}

/// The user the fixture acts as on a secure cluster: read and write on every key.
pub const OPERATOR: &str = "operator";

fn write_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

impl Certs {
    fn make(dir: &Path) -> Certs {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose as Eku, IsCa,
            Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let leaf =
            |issuer: &Issuer<'_, KeyPair>, cn: &str, sans: &[&str], ekus: &[Eku], expired: bool| {
                let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
                let mut params = CertificateParams::new(sans).unwrap();
                params.distinguished_name.push(DnType::CommonName, cn);
                params.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ];
                params.extended_key_usages = ekus.to_vec();
                params.use_authority_key_identifier_extension = true;
                if expired {
                    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
                }
                let key = KeyPair::generate().unwrap();
                let cert = params.signed_by(&key, issuer).unwrap();
                (cert.pem(), key.serialize_pem())
            };
        let (ca_pem, issuer) = ca("pra test CA");
        let (other_pem, _) = ca("another CA");
        let both = [Eku::ServerAuth, Eku::ClientAuth];
        let (member, member_key) = leaf(
            &issuer,
            "etcd member",
            &["127.0.0.1", "localhost"],
            &both,
            false,
        );
        let (client, client_key) = leaf(&issuer, "pra-client", &[], &[Eku::ClientAuth], false);
        let (expired, expired_key) = leaf(&issuer, "pra-client", &[], &[Eku::ClientAuth], true);
        Certs {
            ca: write_pem(dir, "ca.pem", &ca_pem),
            member: write_pem(dir, "member.pem", &member),
            member_key: write_pem(dir, "member-key.pem", &member_key),
            client: write_pem(dir, "client.pem", &client),
            client_key: write_pem(dir, "client-key.pem", &client_key),
            expired: write_pem(dir, "expired.pem", &expired),
            expired_key: write_pem(dir, "expired-key.pem", &expired_key),
            other_ca: write_pem(dir, "other-ca.pem", &other_pem),
        }
    }
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
        Etcd::launch(n, false, &[])
    }

    /// Starts an `n`-member cluster with TLS for clients and peers (both must show a
    /// certificate signed by the fixture's CA) and etcd's authentication enabled, with the
    /// users `root` and [`OPERATOR`] (read and write on every key).
    pub fn secure(n: usize) -> Etcd {
        Etcd::secure_with(n, &[])
    }

    /// [`Etcd::secure`] with more flags for every member.
    pub fn secure_with(n: usize, flags: &[&str]) -> Etcd {
        let mut etcd = Etcd::launch(n, true, flags);
        etcd.enable_auth();
        etcd
    }

    /// One member whose backend quota is `bytes` (`--quota-backend-bytes`): a few writes fill
    /// it and raise etcd's NOSPACE alarm.
    pub fn with_quota(bytes: u64) -> Etcd {
        Etcd::launch(1, false, &[&format!("--quota-backend-bytes={bytes}")])
    }

    fn launch(n: usize, tls: bool, flags: &[&str]) -> Etcd {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut etcd = Etcd::fresh(n, tls, flags);
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

    fn fresh(n: usize, tls: bool, flags: &[&str]) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let certs = tls.then(|| Certs::make(dir.path()));
        let scheme = if tls { "https" } else { "http" };
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
            .map(|m| format!("{}={scheme}://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        Etcd {
            members,
            initial_cluster,
            dir,
            certs,
            auth: false,
            flags: flags.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn scheme(&self) -> &'static str {
        if self.certs.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let scheme = self.scheme();
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("{scheme}://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(etcd_bin());
        if let Some(c) = &self.certs {
            cmd.arg("--cert-file")
                .arg(&c.member)
                .arg("--key-file")
                .arg(&c.member_key)
                .arg("--trusted-ca-file")
                .arg(&c.ca)
                .arg("--client-cert-auth")
                .arg("--peer-cert-file")
                .arg(&c.member)
                .arg("--peer-key-file")
                .arg(&c.member_key)
                .arg("--peer-trusted-ca-file")
                .arg(&c.ca)
                .arg("--peer-client-cert-auth");
        }
        cmd.args(&self.flags);
        let child = cmd
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

    /// `etcd://` URL naming every member, with `prefix` (starting with `/`); `etcds://` on a
    /// secure cluster.
    pub fn url(&self, prefix: &str) -> String {
        let all: Vec<String> = (0..self.members.len()).map(|i| self.endpoint(i)).collect();
        let scheme = if self.certs.is_some() {
            "etcds"
        } else {
            "etcd"
        };
        format!("{scheme}://{}{prefix}", all.join(","))
    }

    /// The certificates of a secure cluster.
    pub fn certs(&self) -> &Certs {
        self.certs
            .as_ref()
            .expect("a secure cluster (Etcd::secure)")
    }

    /// The password file of `user` (made by [`Etcd::add_user`]).
    pub fn password_file(&self, user: &str) -> PathBuf {
        self.dir().join(format!("{user}.password"))
    }

    /// What a client of this cluster configures, as `user`: the CA and client certificate on a
    /// TLS cluster, the user and its password once authentication is on.
    pub fn security(&self, user: &str) -> EtcdSecurity {
        let mut s = EtcdSecurity::default();
        if let Some(c) = &self.certs {
            s.ca_file = Some(c.ca.clone());
            s.cert_file = Some(c.client.clone());
            s.key_file = Some(c.client_key.clone());
        }
        if self.auth {
            s.user = Some(user.to_string());
            s.password_file = Some(self.password_file(user));
        }
        s
    }

    /// The `PRA_ETCD_*` variables that give `pra` the same settings as [`Etcd::security`].
    pub fn env(&self, user: &str) -> Vec<(&'static str, String)> {
        let mut vars = Vec::new();
        if let Some(c) = &self.certs {
            vars.push(("PRA_ETCD_CA_FILE", c.ca.display().to_string()));
            vars.push(("PRA_ETCD_CERT_FILE", c.client.display().to_string()));
            vars.push(("PRA_ETCD_KEY_FILE", c.client_key.display().to_string()));
        }
        if self.auth {
            vars.push(("PRA_ETCD_USER", user.to_string()));
            vars.push((
                "PRA_ETCD_PASSWORD_FILE",
                self.password_file(user).display().to_string(),
            ));
        }
        vars
    }

    /// A store on the given members only, with a call timeout (as [`OPERATOR`] on a secure
    /// cluster).
    pub fn store_on(&self, members: &[usize], prefix: &str, timeout: Duration) -> EtcdStore {
        self.store_as(OPERATOR, members, prefix, timeout).unwrap()
    }

    /// A store on the given members as `user`, with a call timeout; the error if it cannot
    /// connect.
    pub fn store_as(
        &self,
        user: &str,
        members: &[usize],
        prefix: &str,
        timeout: Duration,
    ) -> pra_core::Result<EtcdStore> {
        let eps: Vec<String> = members.iter().map(|&i| self.endpoint(i)).collect();
        EtcdStore::open(
            &eps,
            prefix,
            Arc::new(pra_core::SystemClock),
            EtcdOptions {
                timeout,
                run_ttl: Duration::from_secs(5),
                tls: self.certs.is_some(),
                security: self.security(user),
                ..EtcdOptions::default()
            },
        )
    }

    /// Runs `f` on an etcd-client connected to member 0 (as `root` once authentication is on).
    pub fn admin<T>(
        &self,
        f: impl AsyncFnOnce(&mut etcd_client::Client) -> Result<T, etcd_client::Error>,
    ) -> T {
        self.admin_on(0, f)
    }

    /// Runs `f` on an etcd-client connected to member `i` only.
    pub fn admin_on<T>(
        &self,
        i: usize,
        f: impl AsyncFnOnce(&mut etcd_client::Client) -> Result<T, etcd_client::Error>,
    ) -> T {
        let endpoint = format!("{}://{}", self.scheme(), self.endpoint(i));
        let mut opts = etcd_client::ConnectOptions::new();
        if let Some(c) = &self.certs {
            opts = opts.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(
                        std::fs::read(&c.ca).unwrap(),
                    ))
                    .identity(etcd_client::Identity::from_pem(
                        std::fs::read(&c.client).unwrap(),
                        std::fs::read(&c.client_key).unwrap(),
                    )),
            );
        }
        if self.auth {
            let pw = std::fs::read_to_string(self.password_file("root")).unwrap();
            opts = opts.with_user("root", pw.trim());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = etcd_client::Client::connect([endpoint], Some(opts))
                .await
                .unwrap();
            f(&mut c).await.unwrap()
        })
    }

    /// Adds `user` (password in [`Etcd::password_file`]) with a role of its own holding
    /// `perms`.
    pub fn add_user(&self, user: &str, perms: Vec<etcd_client::Permission>) {
        let password = format!("{user}-secret-{}", std::process::id());
        std::fs::write(self.password_file(user), format!("{password}\n")).unwrap();
        let user = user.to_string();
        self.admin(async move |c| {
            c.user_add(user.clone(), password, None).await?;
            c.role_add(user.clone()).await?;
            for p in perms {
                c.role_grant_permission(user.clone(), p).await?;
            }
            c.user_grant_role(user.clone(), user.clone()).await?;
            Ok(())
        });
    }

    /// Enables etcd's authentication: `root` (with the root role) and [`OPERATOR`] (read and
    /// write on every key).
    fn enable_auth(&mut self) {
        self.add_user(
            OPERATOR,
            vec![etcd_client::Permission::read_write("").with_all_keys()],
        );
        let root_pw = format!("root-secret-{}", std::process::id());
        std::fs::write(self.password_file("root"), &root_pw).unwrap();
        self.admin(async move |c| {
            c.user_add("root", root_pw, None).await?;
            c.role_add("root").await?;
            c.user_grant_role("root", "root").await?;
            c.auth_enable().await?;
            Ok(())
        });
        self.auth = true;
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
        let (leader, members) = self.admin_on(ask, async |c| {
            let leader = c.status().await?.leader();
            Ok((leader, c.member_list().await?))
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
        let (key, value) = (key.to_string(), value.to_vec());
        self.admin(async move |c| c.put(key, value, None).await.map(|_| ()));
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
