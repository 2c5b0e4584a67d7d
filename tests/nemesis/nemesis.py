#!/usr/bin/env python3
"""The nemesis harness: two sites of real processes on one store, failovers and failbacks, and
faults injected at random times from a seeded schedule. Loopback only, bounded in time, every
process it started is stopped on exit.

    nemesis.py --store sqlite|file|etcd1|etcd3 --seconds N --seed S --pra PATH --out DIR

It writes into DIR: history.jsonl (one line per unit of work, written by the jobs themselves),
app.db (the application's database: the app's rows, the fenced jobs' `work` rows), acks.log (ids
of app writes whose COMMIT returned), events.jsonl (what the harness did and saw: faults, plan
commands, journal verifications, site observations, leftovers) and meta.json. It judges nothing:
tests/nemesis/checker.py does, from those files only.

Replaying: NEMESIS_SEED (--seed) fixes the schedule exactly -- fault times, kinds, durations,
target picks, the plan's pauses and the jobs' sizes. The processes themselves are real: their
interleaving is the kernel's and is not replayed.
"""
import argparse
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SITES = ("rbx", "sbg")
TIMINGS = dict(heartbeat=1, lost_after=5, grace=1, store_timeout=1, drain_timeout=20)
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
MAX_FAULT = 8.0  # longest stop / partition / skew / full-disk window, seconds


_TAKEN = set()


def free_port():
    """A loopback port free a moment ago, below the kernel's ephemeral range (32768-60999):
    etcd members are killed and restarted on their ports, which an outgoing connection of a
    pra process could otherwise be handed in between."""
    while True:
        port = random.randrange(20000, 32000)
        if port in _TAKEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port


class Events:
    """events.jsonl: one JSON line per thing the harness did or saw, with its monotonic time."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lock = threading.Lock()
        self.counts = {}

    def __call__(self, kind, **kw):
        kw.update(kind=kind, mono=time.monotonic(), wall=time.time())
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            os.write(self.fd, (json.dumps(kw) + "\n").encode())


class Proxy:
    """A TCP forwarder on loopback that the nemesis can cut (a partition) and heal."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.cut = False
        self.conns = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.cut:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=1)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def partition(self):
        self.cut = True
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def heal(self):
        self.cut = False

    def close(self):
        self.closed = True
        self.partition()
        self.sock.close()


class Etcd:
    def __init__(self, n, dir_, ev):
        self.n, self.dir, self.ev = n, dir_, ev
        self.members = [dict(name=f"m{i}", client=free_port(), peer=free_port(),
                             data=os.path.join(dir_, f"m{i}.etcd"), proc=None) for i in range(n)]
        # Peers reach each member through a proxy the nemesis can cut: cutting member i's proxy
        # drops every connection to it and refuses new ones (its inbound raft traffic).
        self.peer_proxies = [Proxy(m["peer"]) for m in self.members] if n > 1 else []
        for m, pr in zip(self.members, self.peer_proxies):
            m["advertised_peer"] = pr.port
        self.cluster = ",".join(
            f"{m['name']}=http://127.0.0.1:{m.get('advertised_peer', m['peer'])}"
            for m in self.members)
        for i in range(n):
            self.spawn(i)

    def spawn(self, i):
        m = self.members[i]
        log = open(os.path.join(self.dir, f"m{i}.log"), "ab")
        c, p = f"http://127.0.0.1:{m['client']}", f"http://127.0.0.1:{m['peer']}"
        adv = f"http://127.0.0.1:{m.get('advertised_peer', m['peer'])}"
        m["proc"] = subprocess.Popen(
            ["etcd", "--name", m["name"], "--data-dir", m["data"], "--listen-client-urls", c,
             "--advertise-client-urls", c, "--listen-peer-urls", p,
             "--initial-advertise-peer-urls", adv, "--initial-cluster", self.cluster,
             "--initial-cluster-token", "pra-nemesis", "--heartbeat-interval", "50",
             "--election-timeout", "500"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()

    def alive(self, i):
        p = self.members[i]["proc"]
        return p is not None and p.poll() is None

    def close_proxies(self):
        for pr in self.peer_proxies:
            pr.close()

    def stop_all(self):
        for m in self.members:
            p = m["proc"]
            if p and p.poll() is None:
                p.kill()
                p.wait()


class Harness:
    def __init__(self, a):
        self.a = a
        self.out = os.path.abspath(a.out)
        if os.path.exists(self.out):
            shutil.rmtree(self.out)
        os.makedirs(self.out)
        self.pra = os.path.abspath(a.pra)
        self.ev = Events(os.path.join(self.out, "events.jsonl"))
        self.rng = random.Random(a.seed)
        # Independent streams, so that the fault schedule does not depend on how many runs the
        # cron loops happened to start.
        self.sched_rng = random.Random(f"{a.seed}/schedule")
        self.stop = threading.Event()
        self.stop_loops = threading.Event()
        self.lock = threading.Lock()
        self.wrappers = {}  # pid -> (site, job)
        self.plan_proc = None
        self.app = None
        self.stopped = set()  # ("pid"|"pg", n) currently SIGSTOPped by the nemesis
        self.skew = {s: None for s in SITES}
        self.fsize = {s: None for s in SITES}
        self.history = os.path.join(self.out, "history.jsonl")
        self.app_db = os.path.join(self.out, "app.db")
        self.acks = os.path.join(self.out, "acks.log")
        self.etcd = None
        self.proxies = {s: [] for s in SITES}
        store = a.store
        if store == "sqlite":
            self.store_file = os.path.join(self.out, "state.db")
            url = f"sqlite://{self.store_file}"
            site_urls = {s: url for s in SITES}
        elif store == "file":
            self.store_file = os.path.join(self.out, "pra-status.lock")
            with open(self.store_file, "w") as f:
                f.write("ACTIVE_SITE=NONE\n")
            os.chmod(self.store_file, 0o600)
            url = f"file://{self.store_file}"
            site_urls = {s: url for s in SITES}
        else:
            self.store_file = None
            self.etcd = Etcd(int(store[-1]), self.out, self.ev)
            ports = [m["client"] for m in self.etcd.members]
            url = "etcd://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/nemesis"
            site_urls = {}
            for s in SITES:
                self.proxies[s] = [Proxy(p) for p in ports]
                site_urls[s] = "etcd://" + ",".join(
                    f"127.0.0.1:{p.port}" for p in self.proxies[s]) + "/nemesis"
        self.ops_config = self.write_config("ops.toml", url)
        self.site_config = {s: self.write_config(f"site-{s}.toml", site_urls[s]) for s in SITES}
        self.meta = dict(store=store, seed=a.seed, seconds=a.seconds, pra=self.pra,
                         timings=TIMINGS, max_fault=MAX_FAULT, store_url=url,
                         registry=store != "file", started=time.time(),
                         mono_started=time.monotonic())

    def write_config(self, name, url):
        p = os.path.join(self.out, name)
        t = TIMINGS
        with open(p, "w") as f:
            f.write(f'store = "{url}"\nsites = "rbx,sbg"\nheartbeat_seconds = {t["heartbeat"]}\n'
                    f'lost_after_seconds = {t["lost_after"]}\nrevoke_grace_seconds = {t["grace"]}\n'
                    f'store_timeout_seconds = {t["store_timeout"]}\n'
                    f'drain_timeout_seconds = {t["drain_timeout"]}\nlock_dir = "{self.out}"\n'
                    f'db = "{self.app_db}"\nbackup_dir = "{self.out}/backups"\n'
                    f'table = "app_events"\n')
        return p

    # -- running pra ------------------------------------------------------------------------

    def env(self, site, config=None):
        e = dict(os.environ)
        e.pop("PRA_STORE", None)
        e.pop("RUST_LOG", None)
        e["PRA_CONFIG"] = config or self.ops_config
        e["PRA_SITE"] = site
        e["NEMESIS_DIR"] = self.out
        return e

    def ops(self, site, *args, timeout=60, track=False):
        """An operator's command, direct to the store. Returns (rc, stdout)."""
        p = subprocess.Popen([self.pra, *args], env=self.env(site), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, cwd=self.out)
        if track:
            self.plan_proc = p
        try:
            o, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cont_all()
            os.killpg(p.pid, signal.SIGKILL)
            o, _ = p.communicate()
            self.ev("timeout", cmd=list(args), site=site)
        finally:
            if track:
                self.plan_proc = None
        return p.returncode, o.decode(errors="replace")

    def show(self):
        rc, o = self.ops("rbx", "site", "show", "--json", timeout=20)
        if rc != 0:
            return None
        try:
            return json.loads(o)
        except ValueError:
            return None

    # -- the two sites' cron loops ---------------------------------------------------------

    def job_cmd(self, site, job, units):
        me = [sys.executable, os.path.join(HERE, "job.py"), self.history, job, str(units)]
        if job == "invoices":
            return me, []
        # ledger: a fenced worker writing the app database beside the history job.
        q = lambda xs: " ".join("'" + x.replace("'", "'\\''") + "'" for x in xs)
        drill = [self.pra, "__drill-job", "--job", job, "--ms", str(units * 50), "--db",
                 self.app_db, "--fence-each"]
        return ["sh", "-c", f"{q(drill)} & {q(me)}; wait"], ["--on-revoke", "wait"]

    def cron_loop(self, site, job, rng):
        while not self.stop_loops.is_set():
            units = rng.randint(6, 30)
            cmd, flags = self.job_cmd(site, job, units)
            env = self.env(site, self.site_config[site])
            if self.a.store == "file":
                # The seed's way: check, then run. No registry, nothing to drain.
                rc, _ = self.site_call(site, env, [self.pra, "check"])
                shown = None
                if rc == 0:
                    rc2, o = self.site_call(site, env, [self.pra, "site", "show", "--json"])
                    try:
                        shown = json.loads(o) if rc2 == 0 else None
                    except ValueError:
                        shown = None
                if not shown or (shown.get("site") or "").lower() != site:
                    time.sleep(rng.uniform(0.1, 0.4))
                    continue
                env["PRA_TOKEN"] = str(shown["token"])
                env["PRA_JOB"] = job
                argv = cmd
            else:
                argv = [self.pra, "run", "--job", job, *flags, "--", *cmd]
            self.launch(site, job, argv, env)
            time.sleep(rng.uniform(0.05, 0.4))

    def follow_loop(self, site):
        """`pra follow --job follower` on this site for the whole campaign: job.py with more
        units than the campaign lasts, started whenever the site becomes active and stopped
        when it loses the role. A follower killed by a fault is started again; at the end it
        gets SIGTERM (it stops the tree and exits 0)."""
        cmd = [sys.executable, os.path.join(HERE, "job.py"), self.history, "follower", "1000000"]
        argv = [self.pra, "follow", "--job", "follower", "--backoff-initial", "0.2",
                "--backoff-max", "2", "--", *cmd]
        while not self.stop_loops.is_set():
            self.launch(site, "follower", argv, self.env(site, self.site_config[site]),
                        follow=True)
            time.sleep(0.2)

    def preexec(self, site):
        lim = self.fsize[site]

        def f():
            if lim is not None:
                size, quiet = lim
                resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
                if quiet:
                    # Ignored stays ignored across exec: a write past the limit then fails with
                    # EFBIG, as a full disk fails with ENOSPC, instead of killing the writer.
                    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        return f

    def site_env(self, site, env):
        if self.skew[site] is not None:
            env["LD_PRELOAD"] = FAKETIME_LIB
            env["FAKETIME"] = self.skew[site]
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
        return env

    def site_call(self, site, env, argv):
        try:
            p = subprocess.run(argv, env=self.site_env(site, env), stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                               timeout=30, preexec_fn=self.preexec(site), cwd=self.out)
            return p.returncode, p.stdout.decode(errors="replace")
        except subprocess.TimeoutExpired:
            return -1, ""

    def launch(self, site, job, argv, env, follow=False):
        """Runs one wrapper to its end (`pra run`: 120 s at most, else `hung`). A follower
        (`pra follow`, follow=True) runs until the loops stop, then gets SIGTERM and must exit
        within 60 s; it does not inherit the full-disk fault (it would keep it for the whole
        campaign)."""
        p = subprocess.Popen(argv, env=self.site_env(site, env), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True,
                             preexec_fn=None if follow else self.preexec(site), cwd=self.out)
        with self.lock:
            self.wrappers[p.pid] = (site, job)
        t0 = time.monotonic()
        limit = 120
        if follow:
            while p.poll() is None and not self.stop_loops.is_set():
                time.sleep(0.1)
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            limit = 60
        try:
            rc = p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.ev("hung", site=site, job=job, pid=p.pid)
            self.cont_all()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            rc = p.wait()
        with self.lock:
            self.wrappers.pop(p.pid, None)
        self.ev("run", site=site, job=job, pid=p.pid, rc=rc, seconds=time.monotonic() - t0,
                skew=self.skew[site], fsize=None if follow else self.fsize[site])

    # -- the operator ----------------------------------------------------------------------

    NEXT = {
        "normal": ["plan", "start-failover", "--by", "nemesis"],
        "incident_detected": ["plan", "apply", "failover-decided", "--operator", "nemesis"],
        "failover_decided": ["plan", "apply", "execute-failover"],
        "failover_draining": ["plan", "apply", "drained"],
        "failed_over": ["plan", "apply", "secondary-verified", "--operator", "nemesis"],
        "secondary_verified": ["plan", "apply", "traffic-on-secondary"],
        "running_on_secondary": ["plan", "start-failback", "--by", "nemesis"],
        "primary_restored": ["plan", "apply", "replication-synced"],
        "replication_synced": ["plan", "apply", "primary-started-fenced"],
        "primary_started_fenced": ["plan", "apply", "primary-validated", "--operator", "nemesis"],
        "primary_validated": ["plan", "apply", "commit-failback"],
        "failback_draining": ["plan", "apply", "drained"],
        "failed_back": ["plan", "apply", "traffic-on-primary"],
        "traffic_on_primary": ["plan", "apply", "secondary-stopped"],
        "secondary_stopped": ["plan", "apply", "replication-reversed"],
        "replication_reversed": ["plan", "apply", "back-to-normal"],
    }
    # States where the drill pauses (traffic served) before going on.
    PAUSE = {"normal", "running_on_secondary"}

    def operator(self, rng):
        # Bootstrap: rbx active.
        while not self.stop_loops.is_set():
            rc, o = self.ops("rbx", "site", "activate", "rbx", "--expect-token", "0",
                             "--by", "nemesis")
            self.ev("op", cmd="activate rbx", rc=rc)
            if rc == 0 or "token" in o:
                break
            time.sleep(0.5)
        if self.a.store == "file":
            return self.operator_file(rng)
        while not self.stop_loops.is_set():
            rc, o = self.ops("rbx", "plan", "status", "--json", timeout=20)
            try:
                state = json.loads(o)["plan"]["state"]
            except (ValueError, KeyError, TypeError):
                self.ev("op", cmd="plan status", rc=rc, out=o[-300:])
                time.sleep(0.5)
                continue
            if state in self.PAUSE:
                time.sleep(rng.uniform(2, 6))
                if self.stop_loops.is_set():
                    break
            args = self.NEXT.get(state)
            if not args:
                self.ev("op", cmd="unknown state", state=state)
                time.sleep(1)
                continue
            t0 = time.monotonic()
            rc, o = self.ops("rbx", *args, timeout=60, track=True)
            self.ev("op", cmd=" ".join(args), state=state, rc=rc,
                    seconds=time.monotonic() - t0, out=o[-300:] if rc else "")
            if rc != 0:
                time.sleep(0.3)
            else:
                time.sleep(rng.uniform(0, 0.5))

    def operator_file(self, rng):
        while not self.stop_loops.is_set():
            time.sleep(rng.uniform(2, 6))
            r = self.show()
            if not r:
                time.sleep(0.5)
                continue
            cur = (r.get("site") or "").lower()
            nxt = "sbg" if cur == "rbx" else "rbx"
            if cur:
                rc, o = self.ops("rbx", "site", "deactivate", "--expect-token", str(r["token"]),
                                 "--by", "nemesis", track=True)
                self.ev("op", cmd="deactivate", rc=rc, out=o[-300:] if rc else "")
                if rc != 0:
                    continue
                time.sleep(rng.uniform(0, 1))
                r = self.show()
                if not r:
                    continue
            rc, o = self.ops("rbx", "site", "activate", nxt, "--expect-token", str(r["token"]),
                             "--by", "nemesis", track=True)
            self.ev("op", cmd=f"activate {nxt}", rc=rc, out=o[-300:] if rc else "")

    def observer(self):
        while not self.stop.is_set():
            r = self.show()
            if r is None:
                self.ev("obs", site="?", token=None)
            else:
                self.ev("obs", site=r.get("site"), token=r.get("token"))
            time.sleep(0.5)

    def verifier(self):
        n = 0
        while not self.stop_loops.is_set():
            time.sleep(1)
            n += 1
            if n % 8 == 0:
                rc, o = self.ops("rbx", "journal", "--verify", timeout=30)
                self.ev("verify", rc=rc, out=o[-300:] if rc else "")
            if n % 3 == 0:
                rc, o = self.ops("rbx", "backup", timeout=30)
                self.ev("backup", rc=rc, out=o[-200:] if rc else "")

    def app_loop(self):
        while not self.stop_loops.is_set():
            if self.app is None or self.app.poll() is not None:
                self.app = subprocess.Popen(
                    [sys.executable, os.path.join(HERE, "app.py"), self.app_db, self.acks],
                    stdin=subprocess.DEVNULL, start_new_session=True)
            time.sleep(0.2)

    # -- the nemesis -----------------------------------------------------------------------

    def marked(self, needle):
        """Pids of processes of this campaign (their command line names our directory)."""
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
            except OSError:
                continue
            if self.out in cmd and needle in cmd and int(d) != os.getpid():
                found.append(int(d))
        return sorted(found)

    def kinds(self):
        k = ["kill_wrapper", "stop_wrapper", "kill_job", "stop_job", "stop_group", "kill_group",
             "kill_plan", "stop_plan", "skew", "disk_full", "kill_app"]
        if self.store_file:
            k += ["chmod_store"]
        if self.etcd:
            k += ["kill_etcd", "stop_etcd", "partition"]
        if self.etcd and self.etcd.n > 1:
            k += ["partition_member"]
        return k

    def nemesis(self):
        rng = self.sched_rng
        kinds = self.kinds()
        t0 = time.monotonic()
        while True:
            at = rng.expovariate(1 / self.a.fault_interval)
            kind = rng.choice(kinds)
            dur = rng.uniform(0.5, MAX_FAULT)
            pick = rng.random()
            site = rng.choice(SITES)
            if self.stop.wait(at) or time.monotonic() - t0 > self.a.seconds:
                return
            try:
                self.fault(kind, dur, pick, site)
            except Exception as e:  # a target that vanished is not an error of the harness
                self.ev("fault_error", fault=kind, error=repr(e))

    def choose(self, xs, pick):
        return xs[min(int(pick * len(xs)), len(xs) - 1)] if xs else None

    def signal_later(self, key, dur):
        def cont():
            time.sleep(dur)
            self.cont(key)
        threading.Thread(target=cont, daemon=True).start()

    def stop_key(self, key):
        kind, n = key
        (os.killpg if kind == "pg" else os.kill)(n, signal.SIGSTOP)
        with self.lock:
            self.stopped.add(key)

    def cont(self, key):
        kind, n = key
        with self.lock:
            self.stopped.discard(key)
        try:
            (os.killpg if kind == "pg" else os.kill)(n, signal.SIGCONT)
        except OSError:
            pass

    def cont_all(self):
        with self.lock:
            keys = list(self.stopped)
        for k in keys:
            self.cont(k)

    def fault(self, kind, dur, pick, site):
        with self.lock:
            wrappers = sorted(self.wrappers)
        target = None
        if kind in ("kill_wrapper", "stop_wrapper", "stop_group", "kill_group"):
            target = self.choose(wrappers, pick)
            if target is None:
                return self.ev("fault_skipped", fault=kind)
            if kind == "kill_wrapper":
                os.kill(target, signal.SIGKILL)
            elif kind == "kill_group":
                os.killpg(target, signal.SIGKILL)
            elif kind == "stop_wrapper":
                self.stop_key(("pid", target))
                self.signal_later(("pid", target), dur)
            else:
                self.stop_key(("pg", target))
                self.signal_later(("pg", target), dur)
        elif kind in ("kill_job", "stop_job"):
            target = self.choose(self.marked("job.py") + self.marked("__drill-job"), pick)
            if target is None:
                return self.ev("fault_skipped", fault=kind)
            if kind == "kill_job":
                os.kill(target, signal.SIGKILL)
            else:
                self.stop_key(("pid", target))
                self.signal_later(("pid", target), dur)
        elif kind in ("kill_plan", "stop_plan"):
            p = self.plan_proc
            if p is None or p.poll() is not None:
                return self.ev("fault_skipped", fault=kind)
            target = p.pid
            if kind == "kill_plan":
                os.kill(target, signal.SIGKILL)
            else:
                self.stop_key(("pid", target))
                self.signal_later(("pid", target), dur)
        elif kind == "kill_app":
            p = self.app
            if p is None or p.poll() is not None:
                return self.ev("fault_skipped", fault=kind)
            target = p.pid
            os.kill(target, signal.SIGKILL)
        elif kind == "skew":
            if self.skew[site] is not None:
                return self.ev("fault_skipped", fault=kind)
            self.skew[site] = self.choose(["-3600", "+3600", "-30", "+30"], pick)
            target = f"{site} {self.skew[site]}s"
            threading.Thread(target=self.clear_later, args=(self.skew, site, dur),
                             daemon=True).start()
        elif kind == "disk_full":
            if self.fsize[site] is not None:
                return self.ev("fault_skipped", fault=kind)
            self.fsize[site] = (16384, pick < 0.5)
            target = f"{site} {'EFBIG' if pick < 0.5 else 'SIGXFSZ'}"
            threading.Thread(target=self.clear_later, args=(self.fsize, site, dur),
                             daemon=True).start()
        elif kind == "chmod_store":
            # 0000: unreadable -- but the harness runs as root, and root reads it anyway (no
            # effect on pra as root; kept to be honest about what was tried). 0666: world-
            # writable, which pra must refuse (exit 9): the guard denies while it lasts.
            f = self.store_file
            if not os.path.exists(f):
                return self.ev("fault_skipped", fault=kind)
            mode = os.stat(f).st_mode & 0o7777
            new_mode = 0o666 if pick < 0.5 else 0
            os.chmod(f, new_mode)
            target = f"{f} {new_mode:04o}"

            def restore():
                time.sleep(dur)
                os.chmod(f, mode)
                self.ev("heal", fault=kind, target=f)
            threading.Thread(target=restore, daemon=True).start()
        elif kind in ("kill_etcd", "stop_etcd"):
            i = self.choose(list(range(self.etcd.n)), pick)
            if not self.etcd.alive(i):
                return self.ev("fault_skipped", fault=kind)
            p = self.etcd.members[i]["proc"]
            target = f"m{i}"
            if kind == "stop_etcd":
                self.stop_key(("pid", p.pid))
                self.signal_later(("pid", p.pid), dur)
            else:
                p.kill()
                p.wait()

                def restart():
                    time.sleep(dur)
                    self.etcd.spawn(i)
                    self.ev("heal", fault=kind, target=f"m{i}")
                threading.Thread(target=restart, daemon=True).start()
        elif kind == "partition_member":
            i = self.choose(list(range(self.etcd.n)), pick)
            pr = self.etcd.peer_proxies[i]
            pr.partition()
            target = f"m{i}"

            def heal_member():
                time.sleep(dur)
                pr.heal()
                self.ev("heal", fault=kind, target=f"m{i}")
            threading.Thread(target=heal_member, daemon=True).start()
        elif kind == "partition":
            for pr in self.proxies[site]:
                pr.partition()
            target = site

            def heal():
                time.sleep(dur)
                for pr in self.proxies[site]:
                    pr.heal()
                self.ev("heal", fault=kind, target=site)
            threading.Thread(target=heal, daemon=True).start()
        self.ev("fault", fault=kind, target=str(target), seconds=round(dur, 3))

    def clear_later(self, table, site, dur):
        time.sleep(dur)
        table[site] = None

    # -- the campaign ----------------------------------------------------------------------

    def run(self):
        threads = []

        def start(f, *args):
            t = threading.Thread(target=f, args=args, daemon=True)
            t.start()
            threads.append(t)
            return t

        obs = start(self.observer)
        op = start(self.operator, random.Random(f"{self.a.seed}/operator"))
        if self.a.store != "file" and self.etcd is None:
            pass
        loops = [start(self.cron_loop, s, j, random.Random(f"{self.a.seed}/{s}/{j}"))
                 for s in SITES for j in ("invoices", "ledger")]
        if self.a.store != "file":
            # `pra follow` needs the run registry: not on the lock-file store.
            loops += [start(self.follow_loop, s) for s in SITES]
        ver = start(self.verifier)
        app = start(self.app_loop)
        nem = start(self.nemesis)
        deadline = time.monotonic() + self.a.seconds
        try:
            while time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            self.finish(nem, [op, ver, app] + loops, obs)

    def finish(self, nem, workers, obs):
        self.ev("phase", name="healing")
        self.stop.set()  # no new faults
        nem.join(timeout=10)
        self.cont_all()
        for s in SITES:
            self.skew[s] = None
            self.fsize[s] = None
            for pr in self.proxies[s]:
                pr.heal()
        if self.store_file and os.path.exists(self.store_file):
            os.chmod(self.store_file, 0o600)
        if self.etcd:
            for pr in self.etcd.peer_proxies:
                pr.heal()
            for i in range(self.etcd.n):
                if not self.etcd.alive(i):
                    self.etcd.spawn(i)
        self.ev("phase", name="stopping")
        self.stop_loops.set()
        t_end = time.monotonic() + 150
        for t in workers:
            t.join(timeout=max(1, t_end - time.monotonic()))
        # Anything of ours still alive once every wrapper returned is a leftover of a run.
        time.sleep(TIMINGS["grace"] + 1)
        with self.lock:
            live_wrappers = sorted(self.wrappers)
        left = [p for p in self.marked("job.py") + self.marked("__drill-job")]
        self.ev("leftovers", pids=left, wrappers_alive=live_wrappers)
        rc, o = self.ops("rbx", "journal", "--verify", timeout=60)
        self.ev("verify", rc=rc, out=o[-300:] if rc else "", final=True)
        self.stop.set()
        obs.join(timeout=30)
        self.cleanup()

    def cleanup(self):
        self.cont_all()
        with self.lock:
            ws = list(self.wrappers)
        for pid in ws:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        ours = set()
        for needle in ("job.py", "__drill-job", "app.py", "etcd", self.pra):
            ours.update(self.marked(needle))
        ours -= {os.getpid(), os.getppid()}
        for pid in ours:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.app and self.app.poll() is None:
            self.app.kill()
            self.app.wait()
        for s in SITES:
            for pr in self.proxies[s]:
                pr.close()
        if self.etcd:
            self.etcd.stop_all()
            self.etcd.close_proxies()
        self.meta["faults"] = {}
        self.meta["counts"] = dict(self.ev.counts)
        self.meta["ended"] = time.time()
        self.meta["mono_ended"] = time.monotonic()
        with open(os.path.join(self.out, "meta.json"), "w") as f:
            json.dump(self.meta, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True, choices=["sqlite", "file", "etcd1", "etcd3"])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--pra", default=os.path.join(HERE, "..", "..", "target", "debug", "pra"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--fault-interval", type=float, default=1.5,
                    help="mean seconds between two faults")
    a = ap.parse_args()
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(2**32)
    h = Harness(a)

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    try:
        h.run()
    except KeyboardInterrupt:
        h.stop.set()
        h.stop_loops.set()
        h.cleanup()
        raise
    print(json.dumps({"store": a.store, "seed": a.seed, "out": h.out}))


if __name__ == "__main__":
    main()
