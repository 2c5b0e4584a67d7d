//! Containment: a run's command and every process it starts, held together by the kernel so
//! that none of them outlives the run (systemd's `KillMode=control-group`, for a cron job).
//!
//! The wrapper forks a small supervisor, the *init*, which starts the command and reaps every
//! process of the run:
//!
//! - **PID namespace** (strong, the default where the kernel allows it): the init is PID 1 of a
//!   new PID namespace (inside a new user namespace when the caller is not privileged). When
//!   it exits, the kernel kills every process left in the namespace and the init's parent
//!   sees it gone only once they all are — whatever they did (`setsid`, double fork, ignoring
//!   SIGTERM). The init dies with the wrapper (`PR_SET_PDEATHSIG`), so a SIGKILLed wrapper
//!   takes the whole run with it.
//! - **Process group + child subreaper** (weak fallback, where namespaces are refused, e.g.
//!   by a container's seccomp policy): the command leads its own process group; the init is
//!   a child subreaper, so orphans re-parent to it and it can kill them level by level. If the
//!   wrapper dies the init notices (its control pipe closes) and kills the tree; if the init
//!   itself is SIGKILLed, processes that left the group survive. `--strict-containment`
//!   refuses this mode.
//!
//! The init also enforces the run's **self-fencing deadline**: the wrapper extends it after
//! every heartbeat the store accepted; when it passes (the wrapper is stuck, paused, or cut
//! off from the store) the init sends SIGTERM to every process and, after the grace period,
//! kills them all — without needing the wrapper. The init leads a session of its own, so a
//! SIGSTOP of the wrapper's process group (`kill -STOP -PGID`, a terminal's job control) does
//! not stop it; the wrapper SIGKILLs an init that does not act in time. Only stopping both,
//! each by its pid, suspends the deadline (then the writes are still fenced by token).
//!
//! Between `fork` and `exec` only async-signal-safe system calls are made: the wrapper may
//! have other threads (a heartbeat, a store client) holding locks the child must not touch.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a run's processes are held together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Containment {
    /// A PID namespace whose init dies with the wrapper: no process of the run survives it.
    PidNamespace,
    /// The same, inside a user namespace (the wrapper was not privileged); the command keeps
    /// its user and group ids.
    UserPidNamespace,
    /// Process group and child subreaper: survives nothing but a SIGKILL of pra's init.
    ProcessGroup,
}

impl Containment {
    /// Every containment, strongest first.
    pub const ALL: [Containment; 3] = [
        Containment::PidNamespace,
        Containment::UserPidNamespace,
        Containment::ProcessGroup,
    ];

    /// The name the run registry and the CLI use.
    pub fn name(self) -> &'static str {
        match self {
            Containment::PidNamespace => "pid-namespace",
            Containment::UserPidNamespace => "user-pid-namespace",
            Containment::ProcessGroup => "process-group",
        }
    }

    /// The containment named `name`, if any.
    pub fn from_name(name: &str) -> Option<Containment> {
        Containment::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether the kernel guarantees that no process of the run outlives it, the wrapper's
    /// death included.
    pub fn is_strong(self) -> bool {
        match self {
            Containment::PidNamespace | Containment::UserPidNamespace => true,
            Containment::ProcessGroup => false,
        }
    }
}

impl std::fmt::Display for Containment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which containment to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// The strongest the kernel allows: a PID namespace, else a user and PID namespace, else
    /// the process group.
    #[default]
    Auto,
    /// A PID namespace (with a user namespace if need be), or an error.
    Strict,
    /// The process group and subreaper only (for platforms where namespaces misbehave).
    ProcessGroup,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The command and its arguments (`argv[0]` is looked up in `PATH` when it has no `/`),
    /// bytes as given: arguments need not be UTF-8.
    pub argv: Vec<std::ffi::OsString>,
    /// Variables added to the wrapper's environment.
    pub env: Vec<(String, String)>,
    /// A descriptor every process of the run inherits (the `--no-overlap` lock), so that it is
    /// released only when the last of them is gone.
    pub inherit_fd: Option<RawFd>,
    /// Between SIGTERM and SIGKILL, whether the stop is a revocation, a self-fence or the
    /// command's own end (its leftover processes).
    pub grace: Duration,
    /// The self-fencing deadline on [`boottime`]: past it, without an extension, the init
    /// stops the run by itself.
    pub term_at: Duration,
}

/// How the init saw the run end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The command's wait status (as `waitpid` gives it), if it was reaped.
    pub status: Option<i32>,
    /// The command could not be executed: the `errno` of `execve`.
    pub exec_errno: Option<i32>,
    /// The self-fencing deadline passed and the init stopped the run by itself.
    pub self_fenced: bool,
    /// The wrapper asked for the run to be stopped.
    pub terminated: bool,
    /// Nothing came from the init (it was killed): the run's processes are gone all the same.
    pub init_killed: bool,
}

/// A running process tree. Every method takes `&self`: a heartbeat thread extends the deadline
/// while the supervising thread waits.
#[derive(Debug)]
pub struct Tree {
    init: libc::pid_t,
    ctl: OwnedFd,
    report: OwnedFd,
    containment: Containment,
    reaped: AtomicBool,
    /// A pidfd of the init (Linux 5.3+), readable when it exits: waiting on it ends the
    /// supervisor's wait the moment the run ends, instead of at its next poll.
    exit: Option<OwnedFd>,
}

/// A tree whose init is set up (namespaces and all) but has not started the command yet:
/// dropping it kills the init, and nothing of the command ever ran.
#[derive(Debug)]
pub struct Pending {
    tree: Tree,
    go: OwnedFd,
    ready: OwnedFd,
}

impl Pending {
    /// How the run's processes will be held together.
    pub fn containment(&self) -> Containment {
        self.tree.containment
    }

    /// Starts the command; returns once it was exec'd (or failed to be: the tree then ends
    /// with [`Ended::exec_errno`] set).
    pub fn start(self) -> Result<Tree> {
        let Pending { tree, go, ready } = self;
        write_all(go.as_raw_fd(), &[1]);
        drop(go);
        let mut b = [0u8; 1];
        // SAFETY: reads into a local buffer; the write end closes if the init dies.
        let n = unsafe { libc::read(ready.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        if n != 1 {
            let ended = tree.wait_blocking();
            return Err(Error::Internal(format!(
                "the run's init ended before starting the command ({ended:?})"
            )));
        }
        Ok(tree)
    }
}

/// The time on CLOCK_BOOTTIME: monotonic, and counting the time the host was suspended, so a
/// deadline computed on it is never late after a suspend.
pub fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts` only.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

const TAG_EXTEND: u8 = b'E';
const TAG_TERMINATE: u8 = b'T';
const TAG_SIGNAL: u8 = b'S';
const FRAME: usize = 9;

const REPORT_MAGIC: u8 = b'P';
const F_STATUS: u8 = 1;
const F_EXEC_FAILED: u8 = 2;
const F_SELF_FENCED: u8 = 4;
const F_TERMINATED: u8 = 8;
const REPORT: usize = 12;

fn os_err(what: &'static str) -> Error {
    Error::io(
        what,
        "the run's process tree",
        std::io::Error::last_os_error(),
    )
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("create a pipe for"));
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Looks `program` up the way `execvp` would, before forking (the child must not allocate).
fn resolve(program: &std::ffi::OsStr) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let not_found = || {
        Error::io(
            "start",
            program,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    };
    if program.is_empty() {
        return Err(not_found());
    }
    if std::os::unix::ffi::OsStrExt::as_bytes(program).contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if let Ok(m) = std::fs::metadata(&candidate)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(not_found())
}

fn cstring(s: impl Into<Vec<u8>>, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidArgument(format!("{what} contains a NUL byte")))
}

/// Everything the child needs, prepared before the fork.
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
}

impl Prepared {
    fn new(spec: &Spec) -> Result<Prepared> {
        use std::os::unix::ffi::OsStrExt;
        let first = spec
            .argv
            .first()
            .ok_or_else(|| Error::InvalidArgument("no command to run".into()))?;
        let program = cstring(resolve(first)?.as_os_str().as_bytes(), "the command")?;
        let argv = spec
            .argv
            .iter()
            .map(|a| cstring(a.as_bytes(), "an argument"))
            .collect::<Result<Vec<_>>>()?;
        let mut env: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .filter(|(k, _)| !spec.env.iter().any(|(n, _)| n.as_bytes() == k.as_slice()))
            .collect();
        env.extend(
            spec.env
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())),
        );
        let envp = env
            .into_iter()
            .map(|(mut k, v)| {
                k.push(b'=');
                k.extend(v);
                cstring(k, "an environment variable")
            })
            .collect::<Result<Vec<_>>>()?;
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<_> = envp.iter().map(|a| a.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        Ok(Prepared {
            program,
            argv,
            argv_ptrs,
            envp,
            envp_ptrs,
        })
    }
}

impl Tree {
    /// Sets up the init under the containment `request` allows, without starting the command.
    pub fn prepare(spec: &Spec, request: Request) -> Result<Pending> {
        let prepared = Prepared::new(spec)?;
        let attempts: &[Containment] = match request {
            Request::Auto => &Containment::ALL,
            Request::Strict => &[Containment::PidNamespace, Containment::UserPidNamespace],
            Request::ProcessGroup => &[Containment::ProcessGroup],
        };
        let mut refused = Vec::new();
        for &c in attempts {
            match Self::spawn_as(spec, &prepared, c) {
                Ok(pending) => return Ok(pending),
                Err(e) => {
                    tracing::debug!(containment = %c, error = %e, "containment not available");
                    refused.push(format!("{c}: {e}"));
                }
            }
        }
        Err(Error::Unsupported(format!(
            "the requested containment could not be set up for the run ({})",
            refused.join("; ")
        )))
    }

    fn spawn_as(spec: &Spec, p: &Prepared, c: Containment) -> Result<Pending> {
        let (ctl_r, ctl_w) = pipe()?;
        let (rep_r, rep_w) = pipe()?;
        // The child blocks on this until its user namespace is mapped, then says "started".
        let (go_r, go_w) = pipe()?;
        let (ready_r, ready_w) = pipe()?;
        let flags: libc::c_ulong = match c {
            Containment::PidNamespace => libc::CLONE_NEWPID as libc::c_ulong,
            Containment::UserPidNamespace => (libc::CLONE_NEWUSER | libc::CLONE_NEWPID) as _,
            Containment::ProcessGroup => 0,
        } | libc::SIGCHLD as libc::c_ulong;
        let parent = std::process::id() as libc::pid_t;
        if c == Containment::ProcessGroup {
            // Orphans of the run re-parent to us if pra's init dies first.
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        }
        let (uid, gid) = (unsafe { libc::geteuid() }, unsafe { libc::getegid() });
        let init_cfg = InitCfg {
            parent,
            containment: c,
            ctl: ctl_r.as_raw_fd(),
            report: rep_w.as_raw_fd(),
            go: go_r.as_raw_fd(),
            ready: ready_w.as_raw_fd(),
            parent_ends: [
                ctl_w.as_raw_fd(),
                rep_r.as_raw_fd(),
                go_w.as_raw_fd(),
                ready_r.as_raw_fd(),
            ],
            inherit_fd: spec.inherit_fd,
            grace_ns: spec.grace.as_nanos() as u64,
            term_at_ns: spec.term_at.as_nanos() as u64,
            program: p.program.as_ptr(),
            argv: p.argv_ptrs.as_ptr(),
            envp: p.envp_ptrs.as_ptr(),
        };
        // SAFETY: a raw clone with fork semantics (no CLONE_VM, no new stack): the child runs
        // on a copy of this stack and only calls async-signal-safe functions until it execs
        // or exits (init_main never returns).
        let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
        if pid < 0 {
            return Err(os_err("clone"));
        }
        if pid == 0 {
            // SAFETY: in the child; see init_main.
            unsafe { init_main(&init_cfg) }
        }
        let pid = pid as libc::pid_t;
        // The child runs on its own copy of the argument and environment strings.
        let _ = (&p.argv, &p.envp);
        drop((ctl_r, rep_w, go_r, ready_w));
        let tree = Tree {
            init: pid,
            ctl: ctl_w,
            report: rep_r,
            containment: c,
            reaped: AtomicBool::new(false),
            exit: pidfd_open(pid),
        };
        if c == Containment::UserPidNamespace
            && let Err(e) = map_ids(pid, uid, gid)
        {
            // Dropping the tree kills the init.
            return Err(e);
        }
        Ok(Pending {
            tree,
            go: go_w,
            ready: ready_r,
        })
    }

    /// How the run's processes are held together.
    pub fn containment(&self) -> Containment {
        self.containment
    }

    fn send(&self, tag: u8, value: u64) {
        let mut frame = [0u8; FRAME];
        frame[0] = tag;
        frame[1..].copy_from_slice(&value.to_le_bytes());
        write_all(self.ctl.as_raw_fd(), &frame);
    }

    /// Moves the self-fencing deadline to `term_at` (on [`boottime`]).
    pub fn extend(&self, term_at: Duration) {
        self.send(TAG_EXTEND, term_at.as_nanos() as u64);
    }

    /// Asks the init to stop the run: SIGTERM to every process now, SIGKILL after the grace.
    pub fn terminate(&self) {
        self.send(TAG_TERMINATE, 0);
    }

    /// Forwards `sig` to the command (its main process).
    pub fn signal(&self, sig: i32) {
        self.send(TAG_SIGNAL, sig as u64);
    }

    /// Kills the run at once: SIGKILL to the init, which (in a namespace) takes every process
    /// of the run with it. In the process-group mode, [`Tree::wait_blocking`] kills what is
    /// left.
    pub fn kill(&self) {
        if !self.reaped.load(Ordering::SeqCst) {
            // SAFETY: kill has no memory effects; the init is our unreaped child.
            unsafe { libc::kill(self.init, libc::SIGKILL) };
        }
    }

    /// Whether the run ended; when it did, every process of the run is gone.
    pub fn try_wait(&self) -> Result<Option<Ended>> {
        if self.reaped.load(Ordering::SeqCst) {
            return Err(Error::Internal("the run was already reaped".into()));
        }
        let mut st = 0;
        // SAFETY: waitpid writes the status into `st`.
        let r = unsafe { libc::waitpid(self.init, &mut st, libc::WNOHANG) };
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            return Err(os_err("wait for"));
        }
        self.reaped.store(true, Ordering::SeqCst);
        Ok(Some(self.finish()))
    }

    /// Waits for the run to end (after [`Tree::kill`] or a termination).
    pub fn wait_blocking(&self) -> Ended {
        loop {
            match self.try_wait() {
                Ok(Some(e)) => return e,
                Ok(None) => self.wait_exit(Duration::from_millis(5)),
                Err(_) => return self.finish(),
            }
        }
    }

    /// Returns when the init exits or after `timeout`, whichever comes first (without a pidfd:
    /// after `timeout`). Does not reap: [`Tree::try_wait`] does.
    pub fn wait_exit(&self, timeout: Duration) {
        let Some(fd) = &self.exit else {
            std::thread::sleep(timeout);
            return;
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll reads and writes one pollfd of ours. EINTR only ends the wait early.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    fn finish(&self) -> Ended {
        if self.containment == Containment::ProcessGroup {
            // Whatever the init left (it was killed), re-parented to us: kill it level by level.
            // SAFETY: only system calls on our own children.
            unsafe { sweep_children(std::process::id() as libc::pid_t, None, true) };
        }
        let mut buf = [0u8; REPORT];
        // SAFETY: reads into a local buffer; the write end is closed (the init exited).
        let n = unsafe { libc::read(self.report.as_raw_fd(), buf.as_mut_ptr().cast(), REPORT) };
        if n as usize != REPORT || buf[0] != REPORT_MAGIC {
            return Ended {
                status: None,
                exec_errno: None,
                self_fenced: false,
                terminated: false,
                init_killed: true,
            };
        }
        let flags = buf[1];
        let status = i32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let errno = i32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
        Ended {
            status: (flags & F_STATUS != 0).then_some(status),
            exec_errno: (flags & F_EXEC_FAILED != 0).then_some(errno),
            self_fenced: flags & F_SELF_FENCED != 0,
            terminated: flags & F_TERMINATED != 0,
            init_killed: false,
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if !self.reaped.load(Ordering::SeqCst) {
            self.kill();
            let _ = self.wait_blocking();
        }
    }
}

fn map_ids(pid: libc::pid_t, uid: libc::uid_t, gid: libc::gid_t) -> Result<()> {
    let write = |file: &str, content: String| -> Result<()> {
        let path = Path::new("/proc").join(pid.to_string()).join(file);
        std::fs::write(&path, content).map_err(|e| Error::io("write", &path, e))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{uid} {uid} 1\n"))?;
    write("gid_map", format!("{gid} {gid} 1\n"))
}

fn write_all(fd: RawFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: writes from a live buffer.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n > 0 {
            buf = &buf[n as usize..];
        } else if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        } else {
            return;
        }
    }
}

/// What the child needs, as plain values and pointers prepared by the parent.
struct InitCfg {
    parent: libc::pid_t,
    containment: Containment,
    ctl: RawFd,
    report: RawFd,
    go: RawFd,
    ready: RawFd,
    // The wrapper's ends of the pipes: closed in the init, or it would never see the control
    // pipe close when the wrapper dies.
    parent_ends: [RawFd; 4],
    inherit_fd: Option<RawFd>,
    grace_ns: u64,
    term_at_ns: u64,
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
}

fn errno() -> i32 {
    // SAFETY: reads this thread's errno.
    unsafe { *libc::__errno_location() }
}

fn boot_ns() -> u64 {
    boottime().as_nanos() as u64
}

/// Kills the children of `pid` (read from `/proc/<pid>/task/<pid>/children`) with `sig`, and
/// the process group `pgid` if given. With `reap`, repeats — reaping, then killing the
/// processes that re-parented to us — until none is left.
///
/// # Safety
/// Async-signal-safe: system calls and stack buffers only.
unsafe fn sweep_children(pid: libc::pid_t, pgid: Option<libc::pid_t>, reap: bool) {
    let mut path = [0u8; 64];
    let mut len = 0;
    for b in b"/proc/" {
        path[len] = *b;
        len += 1;
    }
    len += write_decimal(&mut path[len..], pid as u64);
    for b in b"/task/" {
        path[len] = *b;
        len += 1;
    }
    len += write_decimal(&mut path[len..], pid as u64);
    for b in b"/children\0" {
        path[len] = *b;
        len += 1;
    }
    let sig = if reap { libc::SIGKILL } else { libc::SIGTERM };
    loop {
        if let Some(g) = pgid {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(-g, sig) };
        }
        // SAFETY: a NUL-terminated path in a stack buffer.
        let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            let mut buf = [0u8; 4096];
            // SAFETY: reads into a stack buffer.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            // SAFETY: closes the descriptor we opened.
            unsafe { libc::close(fd) };
            let mut v: i64 = 0;
            let mut digits = false;
            for &b in &buf[..n.max(0) as usize] {
                if b.is_ascii_digit() {
                    v = v * 10 + i64::from(b - b'0');
                    digits = true;
                } else {
                    if digits {
                        // SAFETY: kill has no memory effects.
                        unsafe { libc::kill(v as libc::pid_t, sig) };
                    }
                    v = 0;
                    digits = false;
                }
            }
            if digits {
                // SAFETY: as above.
                unsafe { libc::kill(v as libc::pid_t, sig) };
            }
        }
        if !reap {
            return;
        }
        let mut st = 0;
        // SAFETY: waitpid writes into a local.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if r < 0 && errno() == libc::ECHILD {
            return;
        }
        if r == 0 {
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            };
            // SAFETY: sleeps; no memory effects.
            unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
        }
    }
}

fn write_decimal(out: &mut [u8], mut v: u64) -> usize {
    let mut tmp = [0u8; 20];
    let mut n = 0;
    loop {
        tmp[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for (o, t) in out.iter_mut().zip(tmp[..n].iter().rev()) {
        *o = *t;
    }
    n
}

/// Writes the init's report and exits.
///
/// # Safety
/// Async-signal-safe.
unsafe fn report_and_exit(fd: RawFd, flags: u8, status: i32, errno: i32) -> ! {
    let mut buf = [0u8; REPORT];
    buf[0] = REPORT_MAGIC;
    buf[1] = flags;
    buf[4..8].copy_from_slice(&status.to_le_bytes());
    buf[8..12].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: writes a stack buffer, then exits without running anything of the parent's.
    unsafe {
        libc::write(fd, buf.as_ptr().cast(), REPORT);
        libc::_exit(0)
    }
}

/// The init: starts the command, reaps every process of the run, stops them on request or at
/// the deadline, and reports how the command ended.
///
/// # Safety
/// Runs in a child created by a raw `clone` of a possibly multi-threaded process: it must only
/// make async-signal-safe calls, never allocate, and never return.
unsafe fn init_main(cfg: &InitCfg) -> ! {
    // SAFETY (whole function): system calls on plain values and stack buffers only.
    unsafe {
        let ns = cfg.containment != Containment::ProcessGroup;
        // Block every signal: the init is driven by its control pipe, and SIGKILL (from the
        // wrapper, or on its death) cannot be blocked. The command gets a clean mask back.
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        for fd in cfg.parent_ends {
            libc::close(fd);
        }
        // A session of its own: a SIGSTOP (or a terminal's job control) aimed at the wrapper's
        // process group must not stop the one process that enforces the run's deadline.
        libc::setsid();
        if ns {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        } else {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
        if libc::getppid() != cfg.parent && !ns {
            // The wrapper died before we could watch for it.
            libc::_exit(0);
        }
        // Wait for the go-ahead (the user namespace is mapped).
        let mut b = [0u8; 1];
        if libc::read(cfg.go, b.as_mut_ptr().cast(), 1) != 1 {
            libc::_exit(0);
        }
        libc::close(cfg.go);
        // A pipe the command closes by exec'ing (CLOEXEC) or writes its errno to.
        let mut exec_pipe = [0; 2];
        if libc::pipe2(exec_pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            libc::_exit(0);
        }
        let cmd = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if cmd == 0 {
            // The command: a clean signal state, its own process group (the fallback's handle
            // on it), the inherited lock, then exec.
            libc::close(exec_pipe[0]);
            for sig in 1..libc::SIGRTMAX() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if !ns {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            }
            if let Some(fd) = cfg.inherit_fd {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
            libc::execve(cfg.program, cfg.argv, cfg.envp);
            let e = errno().to_le_bytes();
            libc::write(exec_pipe[1], e.as_ptr().cast(), 4);
            libc::_exit(127);
        }
        libc::close(exec_pipe[1]);
        let cmd = cmd as libc::pid_t;
        let mut flags: u8 = 0;
        let mut status: i32 = 0;
        let mut exec_errno: i32 = 0;
        if cmd < 0 {
            flags |= F_EXEC_FAILED;
            exec_errno = errno();
        } else {
            let mut e = [0u8; 4];
            if libc::read(exec_pipe[0], e.as_mut_ptr().cast(), 4) == 4 {
                flags |= F_EXEC_FAILED;
                exec_errno = i32::from_le_bytes(e);
            }
        }
        libc::close(exec_pipe[0]);
        libc::write(cfg.ready, [1u8].as_ptr().cast(), 1);
        libc::close(cfg.ready);

        let report =
            |flags: u8, status: i32, errno: i32| report_and_exit(cfg.report, flags, status, errno);
        // Stops every process of the run with `sig`.
        let stop_all = |sig: i32| {
            if ns {
                // From PID 1, -1 is every process of the namespace but itself.
                libc::kill(-1, sig);
            } else {
                sweep_children(libc::getpid(), (cmd > 0).then_some(cmd), false);
                if sig == libc::SIGKILL {
                    sweep_children(libc::getpid(), (cmd > 0).then_some(cmd), true);
                }
            }
        };
        let mut term_at = cfg.term_at_ns;
        // Set once the run is being stopped: when SIGKILL is due.
        let mut kill_at: Option<u64> = None;
        let mut cmd_done = cmd <= 0;
        let mut frames = [0u8; FRAME * 32];
        let mut have = 0usize;
        // Every signal is blocked since the start, so a process of the run that ends queues a
        // SIGCHLD, which this descriptor reads: the init wakes the moment one ends (the 10 ms
        // poll below is then only the clock of the deadlines). Without it (-1), the poll alone.
        let mut chld: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        let sfd = libc::signalfd(-1, &chld, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        let mut siginfo = [0u8; 128 * 8];
        loop {
            // Reap whatever ended.
            loop {
                let mut st = 0;
                let r = libc::waitpid(-1, &mut st, libc::WNOHANG);
                if r > 0 {
                    if r == cmd {
                        status = st;
                        flags |= F_STATUS;
                        cmd_done = true;
                    }
                    continue;
                }
                if r < 0 && errno() == libc::ECHILD {
                    // Nothing of the run is left.
                    report(flags, status, exec_errno);
                }
                break;
            }
            let now = boot_ns();
            if kill_at.is_none() {
                if cmd_done {
                    // The command ended by itself: its leftovers get the grace, then SIGKILL.
                    stop_all(libc::SIGTERM);
                    kill_at = Some(now + cfg.grace_ns);
                } else if now >= term_at {
                    flags |= F_SELF_FENCED;
                    stop_all(libc::SIGTERM);
                    kill_at = Some(now + cfg.grace_ns);
                }
            }
            if let Some(k) = kill_at
                && now >= k
            {
                if ns {
                    // Exiting as PID 1 makes the kernel kill every process left in the
                    // namespace; our parent sees us gone only once they all are.
                    report(flags, status, exec_errno);
                }
                stop_all(libc::SIGKILL);
                report(flags, status, exec_errno);
            }
            let mut pfd = [
                libc::pollfd {
                    fd: cfg.ctl,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: sfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let r = libc::poll(pfd.as_mut_ptr(), if sfd >= 0 { 2 } else { 1 }, 10);
            if r <= 0 {
                continue;
            }
            if pfd[1].revents != 0 {
                // The queued SIGCHLDs: the reaping at the top of the loop is what they ask for.
                while libc::read(sfd, siginfo.as_mut_ptr().cast(), siginfo.len()) > 0 {}
            }
            if pfd[0].revents == 0 {
                continue;
            }
            let n = libc::read(
                cfg.ctl,
                frames[have..].as_mut_ptr().cast(),
                frames.len() - have,
            );
            if n <= 0 {
                if n < 0 && errno() == libc::EINTR {
                    continue;
                }
                // The wrapper is gone: nobody vouches for the run any more.
                flags |= F_TERMINATED;
                if ns {
                    report(flags, status, exec_errno);
                }
                stop_all(libc::SIGKILL);
                report(flags, status, exec_errno);
            }
            have += n as usize;
            let mut at = 0;
            while have - at >= FRAME {
                let f = &frames[at..at + FRAME];
                let mut v = [0u8; 8];
                v.copy_from_slice(&f[1..]);
                let value = u64::from_le_bytes(v);
                match f[0] {
                    TAG_EXTEND => term_at = value,
                    TAG_TERMINATE if kill_at.is_none() => {
                        flags |= F_TERMINATED;
                        stop_all(libc::SIGTERM);
                        kill_at = Some(boot_ns() + cfg.grace_ns);
                    }
                    TAG_SIGNAL if !cmd_done => {
                        libc::kill(cmd, value as i32);
                    }
                    _ => {}
                }
                at += FRAME;
            }
            frames.copy_within(at..have, 0);
            have -= at;
        }
    }
}

/// A pidfd for `pid` (a child of ours, not reaped yet), or `None` where the kernel has none.
fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just opened and is ours alone.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
