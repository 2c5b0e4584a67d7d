//! The plan's KPI report: the seed's §7 (RTO, RPO, failback duration, fenced time, the
//! double-execution window) computed from the journal and the run registry ([`report`], pure),
//! gathered from a store and the backup directory ([`build`]), and printed ([`Report::table`]).

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::error::Result;
use crate::site::SiteId;
use crate::store::{JournalEntry, JournalEvent, RunRecord, Store};

use super::machine::EventKind;

/// A period during which no site was active (the flip's fenced time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FencedPeriod {
    /// The site that lost the role.
    pub from_site: Option<SiteId>,
    /// The site that got it (`None`: still nobody).
    pub to_site: Option<SiteId>,
    /// Start.
    pub start: DateTime<Utc>,
    /// End (`None`: still fenced).
    pub end: Option<DateTime<Utc>>,
    /// Length in seconds (up to now if still fenced).
    pub seconds: f64,
}

/// Runs of the same job on two different sites at the same time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overlap {
    /// The job.
    pub job: String,
    /// The two sites.
    pub sites: (SiteId, SiteId),
    /// Start of the overlap.
    pub start: DateTime<Utc>,
    /// End of the overlap.
    pub end: DateTime<Utc>,
}

/// A KPI against its target, as a DR test report states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What is measured.
    pub name: String,
    /// Measured value, in seconds (`None`: not measured in this plan).
    pub value_seconds: Option<f64>,
    /// Target, in words.
    pub target: String,
    /// Pass, fail, or `None` when not measured.
    pub pass: Option<bool>,
}

/// A plan step as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportStep {
    /// When.
    pub at: DateTime<Utc>,
    /// The plan's id.
    pub plan: String,
    /// State before.
    pub from: String,
    /// The event.
    pub event: String,
    /// State after.
    pub to: String,
    /// The operator of a manual gate.
    pub operator: Option<String>,
}

impl Check {
    /// "PASS", "FAIL", or "not measured".
    pub fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "not measured",
        }
    }
}

/// The KPIs of the seed's §7, computed from the journal and the run registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// When the incident was detected (the last `incident_detected`).
    pub incident_at: Option<DateTime<Utc>>,
    /// Incident detected -> traffic on the secondary.
    pub rto_seconds: Option<f64>,
    /// Incident detected -> the last backup before it (when a backup time is known).
    pub rpo_seconds: Option<f64>,
    /// Primary restored -> traffic on the primary.
    pub failback_seconds: Option<f64>,
    /// Every period with no site active.
    pub fenced: Vec<FencedPeriod>,
    /// Total time during which runs of one job overlapped on two sites.
    pub double_execution_seconds: f64,
    /// The overlaps themselves.
    pub overlaps: Vec<Overlap>,
    /// How many drains were forced.
    pub forced_drains: u64,
    /// The plan steps, in order.
    pub steps: Vec<ReportStep>,
    /// Each KPI against its target.
    pub checks: Vec<Check>,
}

/// Computes the report from `journal` (whole), `runs` and, when known, the time of the last
/// backup before the incident. Runs still going count up to `now` (or their last heartbeat when
/// silent for longer than `lost_after`).
pub fn report(
    journal: &[JournalEntry],
    runs: &[RunRecord],
    last_backup: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    lost_after: Duration,
) -> Report {
    let mut sorted: Vec<&RunRecord> = runs.iter().collect();
    sorted.sort_by_key(|r| r.started_at);
    let mut sweep = RunSweep::default();
    for r in sorted {
        sweep.add(r, now, lost_after);
    }
    report_swept(journal, sweep, last_backup, now)
}

/// [`report`], the runs already swept (in the order they started) by `sweep`.
fn report_swept(
    journal: &[JournalEntry],
    sweep: RunSweep,
    last_backup: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Report {
    let secs = |d: Duration| {
        d.num_microseconds()
            .map_or(d.num_seconds() as f64, |us| us as f64 / 1e6)
    };
    let mut steps = Vec::new();
    let mut at_event: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    let mut incident_at = None;
    let mut fenced: Vec<FencedPeriod> = Vec::new();
    let mut forced_drains = 0;
    for e in journal {
        match &e.event {
            JournalEvent::PlanStep {
                plan,
                from,
                event,
                to,
                operator,
            } => {
                if event == EventKind::IncidentDetected.name() {
                    incident_at = Some(e.at);
                    at_event.clear();
                }
                at_event.insert(event_key(event), e.at);
                steps.push(ReportStep {
                    at: e.at,
                    plan: plan.clone(),
                    from: from.clone(),
                    event: event.clone(),
                    to: to.clone(),
                    operator: operator.clone(),
                });
            }
            JournalEvent::SiteChanged { old, new } => match (&old.site, &new.site) {
                (Some(_), None) => fenced.push(FencedPeriod {
                    from_site: old.site.clone(),
                    to_site: None,
                    start: e.at,
                    end: None,
                    seconds: 0.0,
                }),
                (None, Some(to)) => {
                    if let Some(p) = fenced.last_mut().filter(|p| p.end.is_none()) {
                        p.end = Some(e.at);
                        p.to_site = Some(to.clone());
                    }
                }
                (None, None) | (Some(_), Some(_)) => {}
            },
            JournalEvent::DrainForced { .. } => forced_drains += 1,
            JournalEvent::Checkpoint { .. } | JournalEvent::GateChecked { .. } => {}
        }
    }
    for p in &mut fenced {
        p.seconds = secs(p.end.unwrap_or(now) - p.start);
    }
    let span = |a: EventKind, b: EventKind| {
        Some(secs(*at_event.get(b.name())? - *at_event.get(a.name())?))
    };
    let rto = span(EventKind::IncidentDetected, EventKind::TrafficOnSecondary);
    let failback = span(EventKind::PrimaryRestored, EventKind::TrafficOnPrimary);
    let rpo = match (incident_at, last_backup) {
        (Some(i), Some(b)) if b <= i => Some(secs(i - b)),
        _ => None,
    };
    let overlaps = sweep.finish();
    let double = union_seconds(overlaps.iter().map(|o| (o.start, o.end)).collect());
    let check = |name: &str, v: Option<f64>, target: &str, limit: f64| Check {
        name: name.into(),
        value_seconds: v,
        target: target.into(),
        pass: v.map(|v| v <= limit),
    };
    let checks = vec![
        check("double-execution window", Some(double), "0 s", 0.0),
        check("failback duration", failback, "< 30 min", 30.0 * 60.0),
        check(
            "RTO (incident -> traffic on secondary)",
            rto,
            "<= 60 min (seed's phase 1)",
            60.0 * 60.0,
        ),
        check(
            "RPO (last backup before the incident)",
            rpo,
            "<= 60 s (backup every minute)",
            60.0,
        ),
    ];
    Report {
        incident_at,
        rto_seconds: rto,
        rpo_seconds: rpo,
        failback_seconds: failback,
        fenced,
        double_execution_seconds: double,
        overlaps,
        forced_drains,
        steps,
        checks,
    }
}

fn event_key(event: &str) -> &'static str {
    EventKind::ALL
        .into_iter()
        .map(EventKind::name)
        .find(|n| *n == event)
        .unwrap_or("unknown")
}

/// The windows in which one job ran on two sites at once, found in one pass over the runs in
/// the order they started, keeping per job and site only where its runs so far end: memory
/// O(jobs × sites + overlaps), whatever the number of runs. A run still going counts up to
/// `now`, or its last heartbeat when silent for longer than `lost_after`.
#[derive(Debug, Default)]
struct RunSweep {
    jobs: BTreeMap<String, JobSweep>,
    done: Vec<Overlap>,
}

/// Per site, the latest end of a job's runs so far; and the overlap being extended.
type JobSweep = (BTreeMap<SiteId, DateTime<Utc>>, Option<Overlap>);

impl RunSweep {
    /// Adds `run`, which started no earlier than every run added before it.
    fn add(&mut self, run: &RunRecord, now: DateTime<Utc>, lost_after: Duration) {
        let start = run.started_at;
        let end = crate::run::reported_end(run, now, lost_after).unwrap_or(now);
        if start >= end {
            return;
        }
        let (ends, open) = self.jobs.entry(run.start.job.clone()).or_default();
        // Another site's latest end past this start: the run that reaches it started earlier,
        // so it covers all of [start, that end].
        for (site, until) in ends.iter() {
            if *site == run.start.site || *until <= start {
                continue;
            }
            let piece_end = end.min(*until);
            match open {
                Some(o) if start < o.end => o.end = o.end.max(piece_end),
                _ => {
                    self.done.extend(open.take());
                    *open = Some(Overlap {
                        job: run.start.job.clone(),
                        sites: (site.clone(), run.start.site.clone()),
                        start,
                        end: piece_end,
                    });
                }
            }
        }
        let e = ends.entry(run.start.site.clone()).or_insert(end);
        *e = (*e).max(end);
    }

    /// The overlaps, by job, then time.
    fn finish(mut self) -> Vec<Overlap> {
        self.done
            .extend(self.jobs.into_values().filter_map(|(_, open)| open));
        self.done
            .sort_by(|a, b| (&a.job, a.start).cmp(&(&b.job, b.start)));
        self.done
    }
}

/// A stretch of work as the job itself recorded it in the application's database: the ground
/// truth of what ran where, independent of pra's run registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkUnit {
    /// The job.
    pub job: String,
    /// The site it ran on.
    pub site: SiteId,
    /// When the work started.
    pub start: DateTime<Utc>,
    /// When it was last seen working.
    pub end: DateTime<Utc>,
}

/// The double-execution window measured from the jobs' own writes: the total time during which
/// the same job was working on two sites, and the overlaps themselves.
pub fn ground_truth(units: &[WorkUnit]) -> (f64, Vec<Overlap>) {
    let overlaps = unit_overlaps(units);
    let total = union_seconds(overlaps.iter().map(|o| (o.start, o.end)).collect());
    (total, overlaps)
}

/// The windows in which one job worked on two sites at once, in O(n log n): each site's units
/// are merged into disjoint stretches, then one sweep over the stretches' ends finds where two
/// sites overlap. (A pairwise comparison costs O(n²) as soon as one unit is long — a run still
/// going, or lost — which a year of history always has.)
fn unit_overlaps(units: &[WorkUnit]) -> Vec<Overlap> {
    let mut by_job: BTreeMap<&str, BTreeMap<&SiteId, Vec<Stretch>>> = BTreeMap::new();
    for u in units.iter().filter(|u| u.start < u.end) {
        by_job
            .entry(u.job.as_str())
            .or_default()
            .entry(&u.site)
            .or_default()
            .push((u.start, u.end));
    }
    let mut out = Vec::new();
    for (job, sites) in by_job {
        // Ends sort before starts at the same instant: touching stretches do not overlap.
        let mut edges: Vec<(DateTime<Utc>, bool, &SiteId)> = Vec::new();
        for (site, intervals) in sites {
            for (start, end) in merge(intervals) {
                edges.push((start, true, site));
                edges.push((end, false, site));
            }
        }
        edges.sort();
        let mut busy: Vec<&SiteId> = Vec::new();
        let mut open: Option<(DateTime<Utc>, SiteId, SiteId)> = None;
        for (at, starts, site) in edges {
            if starts {
                busy.push(site);
            } else {
                busy.retain(|s| *s != site);
            }
            match (&open, busy.len() >= 2) {
                (None, true) => open = Some((at, busy[0].clone(), busy[1].clone())),
                (Some(_), false) => {
                    if let Some((start, a, b)) = open.take()
                        && start < at
                    {
                        out.push(Overlap {
                            job: job.to_string(),
                            sites: (a, b),
                            start,
                            end: at,
                        });
                    }
                }
                (None, false) | (Some(_), true) => {}
            }
        }
    }
    out
}

/// A stretch of time, start and end.
type Stretch = (DateTime<Utc>, DateTime<Utc>);

/// `intervals` merged into disjoint, sorted stretches.
fn merge(mut intervals: Vec<Stretch>) -> Vec<Stretch> {
    intervals.sort();
    let mut out: Vec<Stretch> = Vec::with_capacity(intervals.len());
    for (s, e) in intervals {
        match out.last_mut() {
            Some((_, ce)) if s <= *ce => *ce = (*ce).max(e),
            Some(_) | None => out.push((s, e)),
        }
    }
    out
}

/// The total length of the union of `intervals`, in seconds.
fn union_seconds(intervals: Vec<Stretch>) -> f64 {
    let total = merge(intervals)
        .into_iter()
        .fold(Duration::zero(), |t, (s, e)| t + (e - s));
    total
        .num_microseconds()
        .map_or(total.num_seconds() as f64, |us| us as f64 / 1e6)
}

impl Report {
    /// The report as a plain-text table.
    pub fn table(&self) -> String {
        let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), human);
        let mut s = String::new();
        s.push_str(&format!(
            "{:<42} {:>12}  {:<30} {}\n",
            "KPI", "measured", "target", "verdict"
        ));
        for c in &self.checks {
            let verdict = c.verdict();
            s.push_str(&format!(
                "{:<42} {:>12}  {:<30} {}\n",
                c.name,
                fmt(c.value_seconds),
                c.target,
                verdict
            ));
        }
        for p in &self.fenced {
            s.push_str(&format!(
                "{:<42} {:>12}  {}\n",
                format!(
                    "fenced (no site active) {} -> {}",
                    p.from_site.as_ref().map_or("NONE", SiteId::as_str),
                    p.to_site.as_ref().map_or("...", SiteId::as_str)
                ),
                human(p.seconds),
                p.start.format("%H:%M:%S%.3f")
            ));
        }
        s.push_str(&format!(
            "{:<42} {:>12}\n",
            "forced drains", self.forced_drains
        ));
        s
    }
}

/// Which runs a report reads: its time is that of the window, not of the history (its memory
/// that of the number of jobs: the runs are swept as they are read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// From the last incident or the start of the history window (`history` before now),
    /// whichever is later: older runs may already be pruned ([`crate::store::PRUNE_EVERY`]).
    Recent {
        /// The store's history window (`history_days`).
        history: std::time::Duration,
    },
    /// The runs started at or after this time.
    Since(DateTime<Utc>),
}

impl Default for Window {
    fn default() -> Self {
        Window::Recent {
            history: crate::defaults::HISTORY,
        }
    }
}

/// The report of the last plan, gathered from `store` (its journal and the runs of `window` in
/// its run registry) and the backups in `backup_dir` (the last one taken before the incident
/// gives the RPO). A store that keeps no run registry gives a report without runs. Runs still
/// going count up to the clock's now, or their last heartbeat when silent for longer than
/// `lost_after`.
pub fn build(
    store: &dyn Store,
    backup_dir: &Path,
    lost_after: Duration,
    clock: &dyn Clock,
    window: Window,
) -> Result<Report> {
    let journal = store.journal()?;
    let incident = journal.iter().rev().find_map(|e| match &e.event {
        JournalEvent::PlanStep { event, .. } if event == EventKind::IncidentDetected.name() => {
            Some(e.at)
        }
        JournalEvent::PlanStep { .. }
        | JournalEvent::SiteChanged { .. }
        | JournalEvent::DrainForced { .. }
        | JournalEvent::GateChecked { .. }
        | JournalEvent::Checkpoint { .. } => None,
    });
    let since = match window {
        Window::Since(t) => t,
        Window::Recent { history } => {
            let start = crate::store::history_start(clock.now(), history);
            incident.map_or(start, |i| i.max(start))
        }
    };
    let now = clock.now();
    let mut sweep = RunSweep::default();
    if let Some(registry) = store.registry() {
        registry.each_run_that_may_overlap(since, &mut |run| {
            sweep.add(&run, now, lost_after);
            Ok(())
        })?;
    }
    // An unreadable backup directory leaves the RPO unmeasured rather than failing the report.
    let last_backup = incident.and_then(|i| {
        crate::backup::scan(backup_dir)
            .ok()?
            .into_iter()
            .map(|(id, _)| id.time)
            .find(|t| *t <= i)
    });
    Ok(report_swept(&journal, sweep, last_backup, now))
}

/// Seconds as `1h02m03s`, `2m03s` or `1.234s`.
pub fn human(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.3}s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m{:02}s",
            (secs / 3600.0) as u64,
            ((secs % 3600.0) / 60.0) as u64,
            (secs % 60.0) as u64
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;

    use super::*;
    use crate::backup::BackupName;
    use crate::clock::ManualClock;
    use crate::fencing::{Actor, FencingToken, SiteChange};
    use crate::plan::{DrainPolicy, Event, Runner};
    use crate::site::Topology;
    use crate::store::SqliteStore;

    #[test]
    fn build_reads_the_journal_and_the_last_backup_before_the_incident() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 2, 0, 0).unwrap();
        let clock = Arc::new(ManualClock::new(t0));
        let store = SqliteStore::open(&dir.path().join("state.db"), clock.clone()).unwrap();
        let ops = Actor::new("ops", "test").unwrap();
        let rbx = SiteId::new("rbx").unwrap();
        let change = SiteChange::Activate {
            site: rbx,
            expect: FencingToken(0),
        };
        store.change(change, &ops).unwrap();
        // Backups 90 s and 30 s before the incident, and one after it (not the RPO's).
        let backups = dir.path().join("backup");
        std::fs::create_dir_all(&backups).unwrap();
        for offset in [-90, -30, 10] {
            let name = BackupName {
                time: t0 + Duration::seconds(120 + offset),
                seq: 0,
            };
            std::fs::write(backups.join(name.file_name()), b"").unwrap();
        }
        clock.advance(Duration::seconds(120));
        let topology = Topology::parse("rbx,sbg").unwrap();
        let runner = Runner::new(&store, &topology, &*clock, DrainPolicy::default());
        runner.apply(Event::IncidentDetected, &ops).unwrap();
        clock.advance(Duration::seconds(5));

        let r = build(
            &store,
            &backups,
            Duration::seconds(60),
            &*clock,
            Window::default(),
        )
        .unwrap();
        assert_eq!(r.incident_at, Some(t0 + Duration::seconds(120)));
        assert_eq!(r.rpo_seconds, Some(30.0));
        assert_eq!(r.steps.len(), 1);
        assert_eq!(
            r,
            report(
                &store.journal().unwrap(),
                &[],
                Some(t0 + Duration::seconds(90)),
                clock.now(),
                Duration::seconds(60)
            )
        );
    }

    /// The default window leaves out runs older than the history window (they may be pruned
    /// already, and reading them would cost the history); `--since` reaches back on purpose.
    #[test]
    fn the_report_reads_the_runs_of_its_window_only() {
        use crate::store::{Admission, RunStart};
        let dir = tempfile::tempdir().unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 2, 0, 0).unwrap();
        let clock = Arc::new(ManualClock::new(t0));
        let store = SqliteStore::open(&dir.path().join("state.db"), clock.clone()).unwrap();
        let ops = Actor::new("ops", "test").unwrap();
        let registry = store.registry().unwrap();
        // Job x runs on rbx, the site flips to sbg, and x runs there meanwhile: an overlap.
        let mut ids = Vec::new();
        for (site, expect) in [("rbx", 0), ("sbg", 2)] {
            let site = SiteId::new(site).unwrap();
            if expect > 0 {
                store
                    .change(
                        SiteChange::Deactivate {
                            expect: FencingToken(expect - 1),
                        },
                        &ops,
                    )
                    .unwrap();
            }
            store
                .change(
                    SiteChange::Activate {
                        site: site.clone(),
                        expect: FencingToken(expect),
                    },
                    &ops,
                )
                .unwrap();
            let start = RunStart {
                job: "x".into(),
                site,
                token: FencingToken(expect + 1),
                host: "h".into(),
                pid: 1,
                containment: None,
                schedule: None,
            };
            match registry.run_start(&start).unwrap() {
                Admission::Admitted { id, .. } => ids.push(id),
                other => panic!("{other:?}"),
            }
            clock.advance(Duration::seconds(10));
        }
        for id in ids {
            assert!(registry.run_finish(id, Some(0), "exited 0").unwrap());
        }
        let at = |days: i64, window: Window| {
            clock.set(t0 + Duration::days(days));
            build(&store, dir.path(), Duration::seconds(60), &*clock, window)
                .unwrap()
                .overlaps
                .len()
        };
        assert_eq!(at(1, Window::default()), 1);
        assert_eq!(at(40, Window::default()), 0);
        assert_eq!(at(40, Window::Since(t0)), 1);
        let week = std::time::Duration::from_secs(7 * 86_400);
        assert_eq!(at(6, Window::Recent { history: week }), 1);
        assert_eq!(at(8, Window::Recent { history: week }), 0);
    }

    proptest::proptest! {
        /// The report's one-pass sweep over the runs finds the same double execution as the
        /// ground truth's merge-and-sweep over the same stretches: per job, the same union.
        #[test]
        fn the_run_sweep_agrees_with_the_ground_truth(
            runs in proptest::collection::vec((0usize..3, 0usize..2, 0i64..500, 1i64..80), 0..60)
        ) {
            let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
            let sites = [SiteId::new("rbx").unwrap(), SiteId::new("sbg").unwrap()];
            let records: Vec<RunRecord> = runs
                .iter()
                .enumerate()
                .map(|(i, &(job, site, start, len))| RunRecord {
                    id: crate::store::RunId(i as i64),
                    start: crate::store::RunStart {
                        job: format!("j{job}"),
                        site: sites[site].clone(),
                        token: FencingToken(1),
                        host: "h".into(),
                        pid: 1,
                        containment: None,
                        schedule: None,
                    },
                    started_at: t0 + Duration::seconds(start),
                    heartbeat_at: t0 + Duration::seconds(start + len),
                    beats: 0,
                    finished_at: Some(t0 + Duration::seconds(start + len)),
                    exit_code: Some(0),
                    outcome: Some("exited 0".into()),
                })
                .collect();
            let units: Vec<WorkUnit> = records
                .iter()
                .map(|r| WorkUnit {
                    job: r.start.job.clone(),
                    site: r.start.site.clone(),
                    start: r.started_at,
                    end: r.finished_at.unwrap(),
                })
                .collect();
            let now = t0 + Duration::seconds(1000);
            let swept = report(&[], &records, None, now, Duration::seconds(60));
            let (double, truth) = ground_truth(&units);
            proptest::prop_assert!((swept.double_execution_seconds - double).abs() < 1e-6);
            for job in ["j0", "j1", "j2"] {
                let of = |v: &[Overlap]| {
                    union_seconds(v.iter().filter(|o| o.job == job).map(|o| (o.start, o.end)).collect())
                };
                proptest::prop_assert!((of(&swept.overlaps) - of(&truth)).abs() < 1e-6, "{}", job);
            }
        }
    }
}
