//! The etcd store against a real etcd server started by the fixture: what only etcd can get
//! wrong (its share of the store contract runs in tests/contract.rs), a full
//! failover/failback drill, lease expiry of a killed `pra run`, etcd stopped mid-run, and a
//! three-member cluster losing its leader during flips. (The two-process CAS race is in
//! tests/concurrency.rs.)

#[path = "common/etcd_cli.rs"]
mod etcd_cli;
#[path = "common/etcd.rs"]
mod etcd_fixture;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use etcd_cli::{drill_passes, output, pra, text, wait_until, write_config};
use etcd_fixture::Etcd;
use pra_core::store::{JournalEvent, RunRegistry, Store};
use pra_core::{Actor, ErrorKind, FencingToken, SiteChange, SiteId, Verdict};

const STORE_UNAVAILABLE_EXIT: i32 = 9;

fn site(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}

fn actor() -> Actor {
    Actor::new("test", "etcd test").unwrap()
}

fn activate(store: &dyn Store, s: &str) -> FencingToken {
    let expect = store.load().unwrap().token;
    store
        .change(
            SiteChange::Activate {
                site: site(s),
                expect,
            },
            &actor(),
        )
        .unwrap()
        .token
}

/// What only etcd can get wrong (the shared contract is in tests/contract.rs): one handle
/// shared by threads drives its runtime from whichever thread blocks on it, a prefix is a
/// record of its own, and damaged data is Corrupt, never a default.
#[test]
fn etcd_handles_threads_prefixes_and_damage() {
    let etcd = Etcd::start();
    let store = etcd.store_on(&[0], "/contract", Duration::from_secs(5));
    let t1 = activate(&store, "sbg");
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    assert_eq!(
                        pra_core::check(&store, &site("sbg")).unwrap(),
                        Verdict::Run { token: t1 }
                    );
                }
            });
        }
    });
    let other = etcd.store_on(&[0], "/contract-other", Duration::from_secs(5));
    assert_eq!(other.load().unwrap().token, FencingToken(0));
    etcd.put_raw("/contract/record", b"{not json");
    let err = store.load().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(pra_core::check(&store, &site("sbg")).is_err());
}

#[test]
fn a_full_failover_and_failback_drill_runs_on_etcd() {
    let etcd = Etcd::start();
    let url = etcd.url("/drill");
    drill_passes(&url, &[]);
    // The record went rbx -> none -> sbg -> none -> rbx, every flip journaled on etcd.
    let store = etcd.store_on(&[0], "/drill", Duration::from_secs(5));
    let record = store.load().unwrap();
    assert_eq!(record.site, Some(site("rbx")));
    assert!(record.token.0 >= 5, "{record:?}");
    let flips = store
        .journal()
        .unwrap()
        .iter()
        .filter(|e| matches!(e.event, JournalEvent::SiteChanged { .. }))
        .count() as u64;
    assert_eq!(flips, record.token.0);
    store.verify_journal().unwrap();
    // A second drill on the same prefix is refused: it needs an empty store.
    let again = output({
        let mut c = Command::new(env!("CARGO_BIN_EXE_pra"));
        c.args(["drill", "--quiet", "--store-url", &url])
            .arg("--dir")
            .arg(tempfile::tempdir().unwrap().path().join("again"));
        c
    });
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("empty store"));
}

#[test]
fn a_killed_pra_run_drops_out_of_the_drain_when_its_lease_expires() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let url = etcd.url("/lease");
    let config = write_config(dir.path(), &url, 4);
    let store = etcd.store_on(&[0], "/lease", Duration::from_secs(5));
    let token = activate(&store, "rbx");

    let mut run = pra(
        &config,
        "rbx",
        &["run", "--job", "long", "--", "sleep", "60"],
    );
    run.process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = run.spawn().unwrap();
    let pgid = child.id() as i32;
    wait_until("the run registers", Duration::from_secs(10), || {
        alive(&store, FencingToken(token.0 + 1)).len() == 1
    });
    // Heartbeats keep it alive well past its 4 s lease.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        alive(&store, FencingToken(token.0 + 1)).len(),
        1,
        "a heartbeating run must stay alive"
    );

    // The host dies: the wrapper and its command are killed without a word to the store.
    // SAFETY: kill(2) on the process group we created.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    child.wait().unwrap();
    let killed = Instant::now();

    // The operators fail over; the break happens, and the drain sees the dead run for as long
    // as its lease lives.
    let ops = |args: &[&str]| output(pra(&config, "sbg", args));
    for step in [
        &[
            "plan",
            "start-failover",
            "--by",
            "alice",
            "--reason",
            "rbx lost",
        ][..],
        &["plan", "apply", "failover-decided", "--operator", "alice"],
        &["plan", "apply", "execute-failover"],
    ] {
        let o = ops(step);
        assert!(o.status.success(), "{step:?}: {}", text(&o));
    }
    let early = ops(&["plan", "apply", "drained", "--no-wait"]);
    if killed.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            early.status.code(),
            Some(8),
            "busy while the lease lives: {}",
            text(&early)
        );
    }
    let gone = wait_until("the lease expires", Duration::from_secs(15), || {
        alive(&store, FencingToken(token.0 + 1)).is_empty()
    });
    eprintln!(
        "run dropped out {:?} after the kill (lease TTL 4 s)",
        killed.elapsed()
    );
    let _ = gone;
    // Its record stays, unfinished: the report sees how it ended.
    let runs = store
        .runs(Utc::now() - chrono::Duration::minutes(5))
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].finished_at.is_none());
    assert_eq!(runs[0].start.job, "long");

    // The drain completes without --force.
    let drained = ops(&["plan", "apply", "drained", "--no-wait"]);
    assert!(drained.status.success(), "{}", text(&drained));
    assert!(
        !store
            .journal()
            .unwrap()
            .iter()
            .any(|e| matches!(e.event, JournalEvent::DrainForced { .. })),
        "the drain must not have needed a force"
    );
    store.verify_journal().unwrap();
}

#[test]
fn with_etcd_down_the_guard_fails_closed_and_recovers_when_it_returns() {
    let mut etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let url = etcd.url("/outage");
    let config = write_config(dir.path(), &url, 10);
    let store = etcd.store_on(&[0], "/outage", Duration::from_secs(2));
    let token = activate(&store, "rbx");

    // A job that outlives the outage.
    let marker = dir.path().join("long-finished");
    let mut long = pra(
        &config,
        "rbx",
        &[
            "run",
            "--job",
            "long",
            "--",
            "sh",
            "-c",
            &format!("sleep 6; touch {}", marker.display()),
        ],
    );
    long.stdout(Stdio::null()).stderr(Stdio::null());
    let mut long = long.spawn().unwrap();
    wait_until("the long run registers", Duration::from_secs(10), || {
        !store
            .runs(Utc::now() - chrono::Duration::minutes(1))
            .unwrap()
            .is_empty()
    });

    etcd.kill(0);
    let t = Instant::now();
    let check = output(pra(&config, "rbx", &["check"]));
    assert_eq!(
        check.status.code(),
        Some(STORE_UNAVAILABLE_EXIT),
        "{}",
        text(&check)
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(String::from_utf8_lossy(&check.stderr).contains("unavailable"));
    let ran = dir.path().join("ran");
    let run = output(pra(
        &config,
        "rbx",
        &[
            "run",
            "--job",
            "short",
            "--",
            "touch",
            ran.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        run.status.code(),
        Some(STORE_UNAVAILABLE_EXIT),
        "{}",
        text(&run)
    );
    assert!(!ran.exists(), "a job ran while the store was unreachable");

    std::thread::sleep(Duration::from_secs(1));
    etcd.restart(0);
    let check = output(pra(&config, "rbx", &["check"]));
    assert!(check.status.success(), "{}", text(&check));
    assert_eq!(store.load().unwrap().token, token);
    store.verify_journal().unwrap();

    // The long run kept going through the outage (its writes are fenced by token) and its end
    // is recorded once etcd is back.
    assert!(long.wait().unwrap().success());
    assert!(marker.exists());
    let runs = store
        .runs(Utc::now() - chrono::Duration::minutes(1))
        .unwrap();
    let long = runs.iter().find(|r| r.start.job == "long").unwrap();
    assert_eq!(long.exit_code, Some(0), "{long:?}");
    assert!(runs.iter().all(|r| r.start.job != "short"));
}

#[test]
fn a_three_member_cluster_keeps_flipping_when_its_leader_is_killed() {
    let mut etcd = Etcd::cluster(3);
    let leader = etcd.leader(0);
    let store = pra_core::store::open_with(
        &etcd.url("/cluster"),
        &pra_core::store::OpenOptions {
            timeout: Duration::from_secs(5),
            ..Default::default()
        },
    )
    .unwrap();
    let a = actor();
    let mut seen = Vec::new();
    let mut unknown = 0;
    let mut killed_at = None;
    let t = Instant::now();
    for i in 0..60 {
        if i == 20 {
            etcd.kill(leader);
            killed_at = Some(seen.len());
        }
        let r = store.load().unwrap();
        let change = match r.site {
            None => SiteChange::Activate {
                site: site(if i % 4 == 0 { "rbx" } else { "sbg" }),
                expect: r.token,
            },
            Some(_) => SiteChange::Deactivate { expect: r.token },
        };
        match store.change(change, &a) {
            Ok(rec) => seen.push(rec.token.0),
            // An answer lost with the member that died and not settled by reading back.
            Err(e) if e.kind() == ErrorKind::StoreUnavailable => unknown += 1,
            Err(e) => panic!("flip {i}: {e}"),
        }
    }
    eprintln!(
        "60 flips in {:?} with the leader (member {leader}) killed at flip 20; {unknown} outcomes unknown",
        t.elapsed()
    );
    assert!(
        unknown <= 1,
        "at most the flip in flight may be in doubt: {unknown}"
    );
    let after_kill = seen.len() - killed_at.unwrap();
    assert!(after_kill >= 39, "flips after the kill: {after_kill}");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "tokens must increase: {seen:?}"
    );
    let record = store.load().unwrap();
    assert_eq!(record.token.0, *seen.last().unwrap());
    assert_eq!(store.verify_journal().unwrap().entries, record.token.0);

    // The killed member comes back, catches up, and serves the same record.
    etcd.restart(leader);
    let only_it = etcd.store_on(&[leader], "/cluster", Duration::from_secs(5));
    wait_until(
        "the restarted member catches up",
        Duration::from_secs(15),
        || only_it.load().map(|r| r == record).unwrap_or(false),
    );
    assert_eq!(only_it.verify_journal().unwrap().entries, record.token.0);
}

#[test]
fn a_run_that_cannot_reach_etcd_stops_its_command_before_its_lease_would_expire() {
    let mut etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let url = etcd.url("/selffence");
    // lost_after 6, grace 1, heartbeat 1, store timeout 1: self-fence after 3 s without a
    // heartbeat, so that the command is dead before the lease (6 s) expires.
    let config = write_config(dir.path(), &url, 6);
    let store = etcd.store_on(&[0], "/selffence", Duration::from_secs(2));
    activate(&store, "rbx");
    let mut run = pra(
        &config,
        "rbx",
        &["run", "--job", "long", "--", "sleep", "60"],
    );
    run.stdout(Stdio::null()).stderr(Stdio::piped());
    let child = run.spawn().unwrap();
    wait_until("the run registers", Duration::from_secs(10), || {
        !store
            .runs(Utc::now() - chrono::Duration::minutes(1))
            .unwrap()
            .is_empty()
    });
    etcd.kill(0);
    let down = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = down.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // SIGTERM: 128 + 15.
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("no heartbeat reached the store"),
        "{stderr}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "stopped {took:?} after the outage began; the lease lives 6 s"
    );
}

/// The unfinished runs below `below` whose lease is alive.
fn alive(
    store: &pra_core::store::EtcdStore,
    below: FencingToken,
) -> Vec<pra_core::store::RunRecord> {
    store
        .unfinished_runs_below(below)
        .unwrap()
        .into_iter()
        .filter(|u| u.pulse == (pra_core::store::Pulse::Lease { alive: true }))
        .map(|u| u.run)
        .collect()
}

/// Keys under `prefix/dir` and the cluster's revision, read by an admin client.
fn keys_and_revision(etcd: &Etcd, prefix: &str, dir: &str) -> (Vec<String>, i64) {
    let key = format!("{prefix}/{dir}");
    etcd.admin(async move |c| {
        let resp = c
            .get(
                key.clone(),
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            )
            .await?;
        let keys = resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        Ok((keys, resp.header().map_or(0, |h| h.revision())))
    })
}

fn start_run(
    registry: &dyn RunRegistry,
    s: &str,
    token: FencingToken,
    job: &str,
) -> pra_core::store::RunId {
    match registry
        .run_start(&pra_core::store::RunStart {
            job: job.into(),
            site: site(s),
            token,
            host: "h".into(),
            pid: 1,
            containment: None,
            schedule: None,
        })
        .unwrap()
    {
        pra_core::store::Admission::Admitted { id, .. } => id,
        other => panic!("{other:?}"),
    }
}

/// The year-in-production issue on etcd: a run costs two revisions, a skip one, a heartbeat none; a
/// finished run leaves no `runs/<id>` key (what a drain reads) and is counted in `runs/stats/`;
/// finished runs older than the history window are deleted as runs finish, their counts kept.
#[test]
fn the_etcd_registry_stays_bounded_by_live_runs_and_the_history_window() {
    let etcd = Etcd::start();
    let clock = std::sync::Arc::new(pra_core::clock::ManualClock::new(Utc::now()));
    let store = pra_core::store::EtcdStore::open(
        &[etcd.endpoint(0)],
        "/bounded",
        clock.clone(),
        pra_core::store::EtcdOptions {
            history: Duration::from_secs(24 * 3600),
            ..Default::default()
        },
    )
    .unwrap();
    let token = activate(&store, "rbx");
    let registry = store.registry().unwrap();

    let (_, before) = keys_and_revision(&etcd, "/bounded", "runs/0");
    let live = start_run(registry, "rbx", token, "invoices");
    let (_, after_start) = keys_and_revision(&etcd, "/bounded", "runs/0");
    for _ in 0..5 {
        registry.run_heartbeat(live).unwrap();
    }
    let (_, after_beats) = keys_and_revision(&etcd, "/bounded", "runs/0");
    assert_eq!(after_start - before, 1, "a start is one revision");
    assert_eq!(after_beats, after_start, "heartbeats cost no revision");
    registry.note_skip("invoices", &site("sbg")).unwrap();
    let (_, after_skip) = keys_and_revision(&etcd, "/bounded", "runs/0");
    assert_eq!(after_skip - after_beats, 1, "a skip is one revision");
    let after_beats = after_skip;
    let n = 20;
    for _ in 0..n {
        let id = start_run(registry, "rbx", token, "invoices");
        assert!(registry.run_finish(id, Some(0), "exited 0").unwrap());
    }
    let (runs, after_runs) = keys_and_revision(&etcd, "/bounded", "runs/0");
    // And, once for the window's first eighth: the first epoch, the history lease's note.
    assert_eq!(after_runs - after_beats, 2 * n + 2, "two revisions a run");
    assert_eq!(runs.len(), 1, "only the live run is under runs/: {runs:?}");
    let (done, _) = keys_and_revision(&etcd, "/bounded", "runs/done/");
    assert_eq!(done.len(), n as usize);
    let drain = registry
        .unfinished_runs_below(FencingToken(token.0 + 1))
        .unwrap();
    assert_eq!(drain.iter().map(|u| u.run.id).collect::<Vec<_>>(), [live]);
    let stats = registry.run_stats().unwrap();
    assert_eq!((stats[0].started, stats[0].unfinished), (n as u64 + 1, 1));

    // Two days later by this host's clock: nothing is taken out of done/ by a writer's clock
    // (a host whose clock runs ahead would erase everyone's history); the window is etcd's.
    clock.advance(chrono::Duration::days(2));
    let id = start_run(registry, "rbx", token, "invoices");
    assert!(registry.run_finish(id, Some(0), "exited 0").unwrap());
    let (done, _) = keys_and_revision(&etcd, "/bounded", "runs/done/");
    assert_eq!(done.len(), n as usize + 1, "{done:?}");
    // The live run wrote nothing for two days, yet its lease says it runs now: the report
    // must see it running until now (it would end it at its start and miss an overlap).
    let runs = registry.runs(chrono::DateTime::UNIX_EPOCH).unwrap();
    let running = runs.iter().find(|r| r.id == live).unwrap();
    assert_eq!(running.heartbeat_at, pra_core::clock::Clock::now(&*clock));
    let stats = registry.run_stats().unwrap();
    assert_eq!((stats[0].started, stats[0].unfinished), (n as u64 + 2, 1));
    assert!(registry.run_finish(live, None, "revoked").unwrap());
    let stats = registry.run_stats().unwrap();
    assert_eq!(
        (stats[0].started, stats[0].revoked, stats[0].unfinished),
        (n as u64 + 2, 1, 0)
    );
}

/// The history window is kept by etcd's clock, not by the job hosts': a host whose clock runs
/// a month ahead finishes a run and erases nobody's history (it used to delete every finished
/// run "older" than its own now minus the window: all of them); finished runs and the notes of
/// runs that outlived their token go when the window has passed on the etcd leader's clock
/// (the keys live on a shared lease), their counts kept.
#[test]
fn the_history_window_is_kept_by_etcd_not_by_a_skewed_host() {
    let etcd = Etcd::start();
    let open = |clock: std::sync::Arc<dyn pra_core::clock::Clock>, history: u64| {
        pra_core::store::EtcdStore::open(
            &[etcd.endpoint(0)],
            "/skewed",
            clock,
            pra_core::store::EtcdOptions {
                history: Duration::from_secs(history),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let honest = open(
        std::sync::Arc::new(pra_core::clock::SystemClock),
        7 * 86_400,
    );
    let token = activate(&honest, "rbx");
    let registry = honest.registry().unwrap();
    for _ in 0..5 {
        let id = start_run(registry, "rbx", token, "invoices");
        assert!(registry.run_finish(id, Some(0), "exited 0").unwrap());
    }
    let ahead = std::sync::Arc::new(pra_core::clock::ManualClock::new(
        Utc::now() + chrono::Duration::days(30),
    ));
    let skewed = open(ahead, 7 * 86_400);
    let registry = skewed.registry().unwrap();
    let id = start_run(registry, "rbx", token, "invoices");
    assert!(registry.run_finish(id, Some(0), "exited 0").unwrap());
    let (done, _) = keys_and_revision(&etcd, "/skewed", "runs/done/");
    assert_eq!(
        done.len(),
        6,
        "a host a month ahead erased history: {done:?}"
    );

    // A window of 2 s: its runs go 2-3 s after they finish, by etcd's clock alone (this
    // host's clock is frozen), and their counts stay.
    let frozen = std::sync::Arc::new(pra_core::clock::ManualClock::new(Utc::now()));
    let short = open(frozen, 2);
    let registry = short.registry().unwrap();
    let first = std::time::Instant::now();
    for _ in 0..3 {
        let id = start_run(registry, "rbx", token, "reports");
        assert!(registry.run_finish(id, Some(0), "exited 0").unwrap());
    }
    let short_lived = |etcd: &Etcd| {
        let (done, _) = keys_and_revision(etcd, "/skewed", "runs/done/");
        done.len() - 6
    };
    assert_eq!(short_lived(&etcd), 3);
    while short_lived(&etcd) > 0 {
        assert!(
            first.elapsed() < Duration::from_secs(15),
            "runs of a 2 s window still kept after {:?}",
            first.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        first.elapsed() >= Duration::from_millis(1900),
        "kept only {:?}",
        first.elapsed()
    );
    let (done, _) = keys_and_revision(&etcd, "/skewed", "runs/done/");
    assert_eq!(done.len(), 6, "the week-long window's runs stay: {done:?}");
    let stats = registry.run_stats().unwrap();
    let reports = stats.iter().find(|s| s.job == "reports").unwrap();
    assert_eq!((reports.started, reports.unfinished), (3, 0));
}

/// etcd restarts every lease's countdown when a member restarts or a leader changes (unless it
/// runs with lease checkpoints): a history lease alone would then never expire under frequent
/// restarts, and etcd would fill up to its quota (every write refused, every guard denying).
/// Its age is also counted in epochs of a short lease, which a restart delays by one epoch at
/// most: here the member restarts every 4 s, more often than the 8 s window's lease could
/// ever expire, and the window's runs still go.
#[test]
fn history_goes_even_when_etcd_keeps_restarting_its_lease_countdowns() {
    let mut etcd = Etcd::start();
    let open = |etcd: &Etcd| {
        pra_core::store::EtcdStore::open(
            &[etcd.endpoint(0)],
            "/restarts",
            std::sync::Arc::new(pra_core::clock::SystemClock),
            pra_core::store::EtcdOptions {
                history: Duration::from_secs(8),
                timeout: Duration::from_secs(10),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let store = open(&etcd);
    let token = activate(&store, "rbx");
    for _ in 0..3 {
        let id = start_run(store.registry().unwrap(), "rbx", token, "old");
        assert!(
            store
                .registry()
                .unwrap()
                .run_finish(id, Some(0), "exited 0")
                .unwrap()
        );
    }
    let old_left = |etcd: &Etcd| {
        let (done, _) = keys_and_revision(etcd, "/restarts", "runs/done/");
        let store = open(etcd);
        let runs = store
            .registry()
            .unwrap()
            .runs(chrono::DateTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(runs.len(), done.len());
        runs.iter().filter(|r| r.start.job == "old").count()
    };
    assert_eq!(old_left(&etcd), 3);
    let began = std::time::Instant::now();
    let mut restarted = std::time::Instant::now();
    while old_left(&etcd) > 0 {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the window's runs still kept after {:?} of restarts",
            began.elapsed()
        );
        if restarted.elapsed() >= Duration::from_secs(4) {
            etcd.restart(0);
            restarted = std::time::Instant::now();
        }
        // Runs keep finishing, as cron's do (each one a new process, as `pra run` is).
        let store = open(&etcd);
        let registry = store.registry().unwrap();
        let id = start_run(registry, "rbx", token, "tick");
        assert!(registry.run_finish(id, Some(0), "exited 0").unwrap());
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("the window's runs went after {:?}", began.elapsed());
}

/// The notes of runs that outlived their token are deleted by a later flip once their runs
/// left the history window — never the note of a run still going, whose start may be older
/// than every finished run kept.
#[test]
fn notes_of_runs_gone_from_the_window_go_and_a_running_one_s_stays() {
    let etcd = Etcd::start();
    let store = etcd.store_on(&[0], "/notes", Duration::from_secs(5));
    let token = activate(&store, "rbx");
    let registry = store.registry().unwrap();
    let long = start_run(registry, "rbx", token, "long");
    std::thread::sleep(Duration::from_millis(5));
    let short = start_run(registry, "rbx", token, "short");
    assert!(registry.run_finish(short, Some(0), "exited 0").unwrap());
    store
        .change(SiteChange::Deactivate { expect: token }, &actor())
        .unwrap();
    let notes = |etcd: &Etcd| keys_and_revision(etcd, "/notes", "outlived/").0;
    assert_eq!(notes(&etcd).len(), 1, "the long run outlived token 1");
    // The next flip: the oldest finished run kept started after the long run, which still
    // goes: its note stays, and the report still reads it.
    store
        .change(
            SiteChange::Activate {
                site: site("sbg"),
                expect: FencingToken(2),
            },
            &actor(),
        )
        .unwrap();
    assert_eq!(notes(&etcd).len(), 1, "a running run's note was deleted");
    let mut read = Vec::new();
    registry
        .each_run_that_may_overlap(chrono::DateTime::UNIX_EPOCH, &mut |r| {
            read.push(r.id);
            Ok(())
        })
        .unwrap();
    assert!(read.contains(&long), "{read:?}");
    // Once it has finished and left the window (its key deleted here, as its lease would),
    // the next flip deletes its note.
    assert!(registry.run_finish(long, Some(0), "exited 0").unwrap());
    etcd.admin(async move |c| {
        c.delete(
            "/notes/runs/done/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await?;
        Ok(())
    });
    store
        .change(
            SiteChange::Deactivate {
                expect: FencingToken(3),
            },
            &actor(),
        )
        .unwrap();
    assert!(notes(&etcd).is_empty(), "{:?}", notes(&etcd));
}

/// Finished runs an earlier version left on no lease are still deleted once older than the
/// window (by the finishing host's clock, as that version did); those inside it stay.
#[test]
fn finished_runs_on_no_lease_are_deleted_past_the_window() {
    let etcd = Etcd::start();
    let store = etcd.store_on(&[0], "/unleased", Duration::from_secs(5));
    let token = activate(&store, "rbx");
    let now = Utc::now();
    let old = |id: i64, days: i64| {
        let at = now - chrono::Duration::days(days);
        let run = serde_json::json!({
            "id": id, "job": "invoices", "site": "rbx", "token": token.0, "host": "old",
            "pid": 7, "started_at": at, "heartbeat_at": at, "beats": 3,
            "finished_at": at, "exit_code": 0, "outcome": "exited 0",
        });
        (
            format!("/unleased/runs/done/{:020}/{id:020}", at.timestamp_micros()),
            run.to_string(),
        )
    };
    let runs = [old(1, 40), old(2, 31), old(3, 2)];
    etcd.admin(async move |c| {
        for (k, v) in runs {
            c.put(k, v, None).await?;
        }
        Ok(())
    });
    let registry = store.registry().unwrap();
    let id = start_run(registry, "rbx", token, "invoices");
    assert!(registry.run_finish(id, Some(0), "exited 0").unwrap());
    let (done, _) = keys_and_revision(&etcd, "/unleased", "runs/done/");
    assert_eq!(done.len(), 2, "the 2-day-old run and the new one: {done:?}");
    assert!(
        done.iter().any(|k| k.ends_with(&format!("{:020}", 3))),
        "{done:?}"
    );
}

/// A prefix written by the layout before `done/` (finished runs kept under `runs/` forever)
/// still works: its finished runs are counted, and the first drain moves them out of its way.
#[test]
fn finished_runs_of_the_old_layout_are_counted_and_moved_by_the_first_drain() {
    let etcd = Etcd::start();
    let store = etcd.store_on(&[0], "/legacy", Duration::from_secs(5));
    let token = activate(&store, "rbx");
    let now = Utc::now();
    let old = |id: i64, outcome: &str| {
        serde_json::json!({
            "id": id, "job": "invoices", "site": "rbx", "token": token.0, "host": "old",
            "pid": 7, "started_at": now, "heartbeat_at": now, "beats": 3,
            "finished_at": now, "exit_code": 0, "outcome": outcome,
        })
        .to_string()
    };
    let (a, b) = (old(11, "exited 0"), old(12, "revoked"));
    etcd.admin(async move |c| {
        c.put(format!("/legacy/runs/{:020}", 11), a, None).await?;
        c.put(format!("/legacy/runs/{:020}", 12), b, None).await?;
        Ok(())
    });
    let registry = store.registry().unwrap();
    let stats = registry.run_stats().unwrap();
    assert_eq!(
        (stats[0].started, stats[0].revoked, stats[0].unfinished),
        (2, 1, 0)
    );
    assert!(
        registry
            .unfinished_runs_below(FencingToken(99))
            .unwrap()
            .is_empty()
    );
    let (runs, _) = keys_and_revision(&etcd, "/legacy", "runs/0");
    assert!(runs.is_empty(), "moved out of runs/: {runs:?}");
    let (done, _) = keys_and_revision(&etcd, "/legacy", "runs/done/");
    assert_eq!(done.len(), 2);
    let stats = registry.run_stats().unwrap();
    assert_eq!(
        (stats[0].started, stats[0].revoked, stats[0].unfinished),
        (2, 1, 0),
        "counted once, before and after the move"
    );
    assert_eq!(
        registry
            .runs(now - chrono::Duration::seconds(1))
            .unwrap()
            .len(),
        2
    );
}

/// The compaction probe behind the warning of drains and metrics: a cluster that still keeps
/// its first revision answers with its current revision, and once compacted, with none.
#[test]
fn the_compaction_probe_sees_whether_etcd_still_keeps_its_first_revision() {
    let etcd = Etcd::start();
    let store = etcd.store_on(&[0], "/compacted", Duration::from_secs(5));
    activate(&store, "rbx");
    let (_, revision) = keys_and_revision(&etcd, "/compacted", "record");
    assert_eq!(store.uncompacted_revisions().unwrap(), Some(revision));
    etcd.admin(async move |c| {
        c.compact(
            revision,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await?;
        Ok(())
    });
    assert_eq!(store.uncompacted_revisions().unwrap(), None);
    // The store keeps working on a compacted cluster, and the drain's probe says nothing.
    assert!(
        store
            .registry()
            .unwrap()
            .unfinished_runs_below(FencingToken(99))
            .unwrap()
            .is_empty()
    );
}

/// The double-execution report on etcd reads the runs noted as outliving their token at each
/// change of the record (`P/outlived/`) and the runs around them, not the whole history window
/// (which timed out past a million runs): the same double execution as a sweep over every run.
#[test]
fn the_etcd_report_reads_only_runs_that_may_overlap_and_finds_the_same_double_execution() {
    let etcd = Etcd::start();
    let clock = std::sync::Arc::new(pra_core::clock::ManualClock::new(Utc::now()));
    let store = pra_core::store::EtcdStore::open(
        &[etcd.endpoint(0)],
        "/report",
        clock.clone(),
        pra_core::store::EtcdOptions::default(),
    )
    .unwrap();
    let token = activate(&store, "rbx");
    let registry = store.registry().unwrap();
    let step = |secs| clock.advance(chrono::Duration::seconds(secs));
    let short = |s: &str, token: FencingToken, job: &str, secs| {
        let id = start_run(registry, s, token, job);
        step(secs);
        assert!(registry.run_finish(id, Some(0), "exited 0").unwrap());
    };
    // Noting began with that change, on a new prefix: no run came before, so none of the
    // runs just after it is read for want of a note (runs of earlier versions would be).
    step(30);
    // Twenty minutes of runs on rbx, then one that outlives its token.
    for _ in 0..20 {
        short("rbx", token, "a", 60);
    }
    let long = start_run(registry, "rbx", token, "a");
    step(10);
    store
        .change(SiteChange::Deactivate { expect: token }, &actor())
        .unwrap();
    step(1);
    store
        .change(
            SiteChange::Activate {
                site: site("sbg"),
                expect: FencingToken(2),
            },
            &actor(),
        )
        .unwrap();
    let sbg = FencingToken(3);
    short("sbg", sbg, "a", 5); // overlaps the long run
    short("sbg", sbg, "c", 1); // started while it went on, but another job
    step(4);
    assert!(registry.run_finish(long, Some(0), "exited 0").unwrap());
    step(600);
    for _ in 0..30 {
        short("sbg", sbg, "b", 60);
    }
    let epoch = chrono::DateTime::<Utc>::UNIX_EPOCH;
    let all = registry.runs(epoch).unwrap();
    assert_eq!(all.len(), 53);
    let mut read = Vec::new();
    registry
        .each_run_that_may_overlap(epoch, &mut |r| {
            read.push((r.id, r.start.job.clone(), r.start.site.to_string()));
            Ok(())
        })
        .unwrap();
    // The long run, the two started while it went on, and the rbx runs of the five minutes
    // before the flip (the margin for the hosts' clocks): not the other 40.
    assert!(read.iter().any(|(id, _, _)| *id == long), "{read:?}");
    assert!(
        read.iter().any(|(_, j, s)| j == "c" && s == "sbg"),
        "{read:?}"
    );
    assert!(read.len() <= 10, "{} runs read: {read:?}", read.len());
    let now = pra_core::Clock::now(&*clock);
    let lost_after = chrono::Duration::seconds(60);
    let full =
        pra_core::plan::report::report(&store.journal().unwrap(), &all, None, now, lost_after);
    let dir = tempfile::tempdir().unwrap();
    let built = pra_core::plan::report::build(
        &store,
        dir.path(),
        lost_after,
        &*clock,
        pra_core::plan::report::Window::Since(epoch),
    )
    .unwrap();
    assert_eq!(built.overlaps, full.overlaps);
    assert_eq!(built.overlaps.len(), 1);
    assert_eq!(built.double_execution_seconds, 5.0);
    // A prefix whose noting began (as the first version wrote it: a time alone) after runs
    // nobody noted: every run before then is read.
    let later = serde_json::to_string(&now).unwrap();
    etcd.admin(async move |c| {
        c.put("/report/meta/outlived_since", later, None).await?;
        Ok(())
    });
    let mut read = 0;
    registry
        .each_run_that_may_overlap(epoch, &mut |_| {
            read += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(read, 53);
}
