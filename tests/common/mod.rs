//! Helpers shared by the crash and reliability tests: a replayable random source and a way to
//! SIGKILL a process at a chosen moment.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How many kills each crash test makes (PRA_CRASH_ITERATIONS, default 50).
pub fn iterations() -> usize {
    std::env::var("PRA_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
}

/// A small xorshift generator. Its seed is printed so that a failure can be replayed with
/// PRA_CRASH_SEED.
pub struct Rng(u64);

impl Rng {
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("PRA_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{test}: PRA_CRASH_SEED={seed}");
        Rng(seed)
    }

    /// A number in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    /// A delay between 0 and 1.2 times `full`, so that some runs finish before the kill.
    pub fn delay(&mut self, full: Duration) -> Duration {
        Duration::from_micros(self.below(full.as_micros() as u64 * 12 / 10))
    }
}

/// Runs `cmd` to completion once (it must succeed) and returns how long it took.
pub fn timed(mut cmd: Command) -> Duration {
    let t = Instant::now();
    let out = cmd.stderr(Stdio::piped()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// Held by each kill test for its whole run: the kill delays are drawn from a duration measured
/// at the start, which means nothing if a neighbour test then loads the machine (a flip of a
/// few milliseconds took ten times longer beside a 20 MB backup, and most kills came too late).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The median of `n` complete runs of the commands `make` builds (each must succeed). One run
/// alone is a poor measure: the first often pays for a cold page cache, and a kill delay drawn
/// from a too-long `full` lets most runs finish before the kill (CI once killed 8 of 50).
pub fn median_of(n: usize, mut make: impl FnMut() -> Command) -> Duration {
    let mut times: Vec<Duration> = (0..n.max(1)).map(|_| timed(make())).collect();
    times.sort();
    times[times.len() / 2]
}

/// Starts `cmd`, SIGKILLs it after `delay` if it still runs, waits for it; true if it was
/// killed before it finished.
pub fn kill_after(mut cmd: Command, delay: Duration) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let killed = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    killed
}
