//! A job's declared schedule — an interval or a cron expression — and when it should last have
//! run: what tells a missed run from a legitimate standby skip.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Local, Utc};

use crate::error::{Error, Result};

/// How often a job is meant to run. Written `every 5m` (also `5m`, `300s`, `2h`, `1d`) or
/// `cron */5 * * * *` (five fields, cron's own syntax, evaluated in the local time zone of the
/// host that judges it, as cron does: set `TZ` alike on both sites).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Every so many seconds (at least 1).
    Every(u64),
    /// A cron expression (boxed: a parsed one is a few hundred bytes).
    Cron(Box<CronExpr>),
}

/// A parsed cron expression, with the text it was parsed from.
#[derive(Debug, Clone)]
pub struct CronExpr {
    text: String,
    cron: croner::Cron,
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for CronExpr {}

impl Schedule {
    /// When the `n`-th most recent run (n ≥ 1) should have started, seen at `now`: a job with no
    /// run since then has missed `n` runs. For an interval, `now - n × interval`.
    pub fn nth_previous(&self, now: DateTime<Utc>, n: u32) -> DateTime<Utc> {
        match self {
            Schedule::Every(secs) => {
                let back = secs.saturating_mul(u64::from(n.max(1)));
                i64::try_from(back)
                    .ok()
                    .and_then(Duration::try_seconds)
                    .and_then(|d| now.checked_sub_signed(d))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC)
            }
            Schedule::Cron(c) => {
                let mut at = now.with_timezone(&Local);
                for _ in 0..n.max(1) {
                    match c.cron.find_previous_occurrence(&at, false) {
                        Ok(t) => at = t,
                        // No earlier occurrence (a date that never comes back): never late.
                        Err(_) => return DateTime::<Utc>::MIN_UTC,
                    }
                }
                at.with_timezone(&Utc)
            }
        }
    }

    /// The usual gap between two runs, in seconds, seen at `now` (a cron expression's gap
    /// between its two most recent occurrences): for display and metrics only.
    pub fn interval_seconds(&self, now: DateTime<Utc>) -> u64 {
        match self {
            Schedule::Every(secs) => *secs,
            Schedule::Cron(_) => {
                let last = self.nth_previous(now, 1);
                let before = self.nth_previous(now, 2);
                u64::try_from((last - before).num_seconds()).unwrap_or(0)
            }
        }
    }
}

/// `5m`, `300s`, `2h`, `1d`, `90` (seconds).
fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    let mult = match unit.trim() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&s| s > 0)
}

impl FromStr for Schedule {
    type Err = Error;

    fn from_str(s: &str) -> Result<Schedule> {
        let s = s.trim();
        let bad = |why: String| Error::InvalidArgument(format!("invalid schedule {s:?}: {why}"));
        if let Some(expr) = s.strip_prefix("cron ") {
            let expr = expr.trim();
            if expr.split_whitespace().count() != 5 {
                return Err(bad(
                    "a cron expression has five fields: minute hour day-of-month month day-of-week"
                        .into(),
                ));
            }
            let cron = croner::Cron::from_str(expr).map_err(|e| bad(e.to_string()))?;
            // One occurrence at least, or the schedule could never be judged.
            cron.find_next_occurrence(&Local::now(), false)
                .map_err(|e| bad(format!("it never fires ({e})")))?;
            return Ok(Schedule::Cron(Box::new(CronExpr {
                text: expr.split_whitespace().collect::<Vec<_>>().join(" "),
                cron,
            })));
        }
        let every = s.strip_prefix("every ").unwrap_or(s);
        parse_duration(every).map(Schedule::Every).ok_or_else(|| {
            bad(
                "expected an interval (every 5m, 300s, 2h, 1d) or cron followed by five fields"
                    .into(),
            )
        })
    }
}

impl fmt::Display for Schedule {
    /// The form [`Schedule::from_str`] reads back: `every 300s`, `cron */5 * * * *`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(secs) => write!(f, "every {secs}s"),
            Schedule::Cron(c) => write!(f, "cron {}", c.text),
        }
    }
}

impl serde::Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_in_the_usual_units_and_print_back() {
        for (text, secs) in [
            ("every 5m", 300),
            ("5m", 300),
            ("300s", 300),
            ("90", 90),
            ("2h", 7200),
            ("1d", 86_400),
            ("every 10 minutes", 600),
        ] {
            let s: Schedule = text.parse().unwrap();
            assert_eq!(s, Schedule::Every(secs), "{text}");
            assert_eq!(s.to_string().parse::<Schedule>().unwrap(), s);
        }
        for bad in [
            "",
            "0s",
            "every",
            "5 fortnights",
            "-5m",
            "cron * * *",
            "cron 61 * * * *",
        ] {
            let e = bad.parse::<Schedule>().unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn the_nth_previous_run_of_an_interval_is_n_intervals_back() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .to_utc();
        let s = Schedule::Every(300);
        assert_eq!(s.nth_previous(now, 2), now - Duration::seconds(600));
        assert_eq!(s.nth_previous(now, 0), now - Duration::seconds(300));
        assert_eq!(
            Schedule::Every(u64::MAX).nth_previous(now, 3),
            DateTime::<Utc>::MIN_UTC
        );
    }

    #[test]
    fn a_cron_expression_counts_its_occurrences_back() {
        let s: Schedule = "cron */5 * * * *".parse().unwrap();
        assert_eq!(s.to_string(), "cron */5 * * * *");
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:07:30Z")
            .unwrap()
            .to_utc();
        // Minutes divisible by 5 are the same instants in every zone with whole-quarter-hour
        // offsets, so the test does not depend on TZ.
        assert_eq!(
            s.nth_previous(now, 1),
            DateTime::parse_from_rfc3339("2026-01-01T12:05:00Z").unwrap()
        );
        assert_eq!(
            s.nth_previous(now, 3),
            DateTime::parse_from_rfc3339("2026-01-01T11:55:00Z").unwrap()
        );
        assert_eq!(s.interval_seconds(now), 300);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), s);
    }
}
