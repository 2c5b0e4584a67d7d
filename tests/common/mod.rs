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
    assert!(cmd.status().unwrap().success());
    t.elapsed()
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
