//! Time as the caller provides it: [`SystemClock`] in production, [`ManualClock`] in tests, so
//! that nothing in pra ever has to sleep to observe time passing.

use std::sync::Mutex;

use chrono::{DateTime, Duration, SubsecRound, Utc};

/// A source of the current time. Every timestamp pra records comes from one of these.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time, truncated to microseconds (the precision every store keeps).
    fn now(&self) -> DateTime<Utc>;

    /// Waits `d`: really for [`SystemClock`], by moving the time on for [`ManualClock`].
    fn sleep(&self, d: std::time::Duration);

    /// Time elapsed on this host's monotonic clock since an arbitrary fixed point. Only
    /// differences of two readings of the same clock mean anything; safety decisions (is a run
    /// lost?) are taken on these, never on wall-clock times written by another host.
    fn monotonic(&self) -> std::time::Duration;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6)
    }

    fn sleep(&self, d: std::time::Duration) {
        std::thread::sleep(d);
    }

    fn monotonic(&self) -> std::time::Duration {
        monotonic_now()
    }
}

/// CLOCK_MONOTONIC: does not jump with the wall clock (NTP, a restored VM's stale time), and
/// does not count time the host spent suspended, so an observer on this host never
/// over-estimates how long another process stayed silent.
fn monotonic_now() -> std::time::Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// A clock that only moves when told to. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    mono: Mutex<std::time::Duration>,
}

impl ManualClock {
    /// A clock standing at `start` (truncated to microseconds).
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: Mutex::new(start.trunc_subsecs(6)),
            mono: Mutex::new(std::time::Duration::ZERO),
        }
    }

    /// Moves the clock forward (or backward, for a negative `by`). The monotonic reading moves
    /// forward by `by` when it is positive, and never backward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now = (*now + by).trunc_subsecs(6);
        if let Ok(d) = by.to_std() {
            *self.mono.lock().unwrap_or_else(|p| p.into_inner()) += d;
        }
    }

    /// Sets the wall clock to `at` (a step, as NTP or a skewed host makes it); the monotonic
    /// reading does not move.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) = at.trunc_subsecs(6);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sleep(&self, d: std::time::Duration) {
        self.advance(Duration::from_std(d).unwrap_or(Duration::MAX));
    }

    fn monotonic(&self) -> std::time::Duration {
        *self.mono.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::seconds(90));
        assert_eq!(clock.now(), start + Duration::seconds(90));
        clock.set(start);
        assert_eq!(clock.now(), start);
    }

    #[test]
    fn system_clock_keeps_microseconds_only() {
        let now = SystemClock.now();
        assert_eq!(now.timestamp_subsec_nanos() % 1000, 0);
    }
}
