//! Progress bars on a terminal (indicatif) for what pra-core reports through
//! [`pra_core::progress`]: a bar of bytes for backup and restore copies, of backups for prune, a
//! spinner for what has no total (a drain, SQLite's online backup). Only when stderr is a
//! terminal: cron mails, journald and pipes get nothing.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// The bars of this process, one phase at a time: the bar and what its phase does.
struct Bars {
    current: Mutex<Option<(ProgressBar, String)>>,
}

impl pra_core::progress::Progress for Bars {
    fn start(&self, what: &str, total: Option<u64>) {
        let bar = match total {
            Some(total) => {
                let template = if what.ends_with("copying") {
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
                } else {
                    "{msg} [{bar:30}] {pos}/{len}"
                };
                let bar = ProgressBar::new(total);
                if let Ok(style) = ProgressStyle::with_template(template) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar
            }
            None => {
                let bar = ProgressBar::new_spinner();
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            }
        };
        bar.set_message(what.to_string());
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((old, _)) = current.replace((bar, what.to_string())) {
            old.finish_and_clear();
        }
    }

    fn set(&self, done: u64) {
        if let Some((bar, _)) = &*self.current.lock().unwrap_or_else(|p| p.into_inner()) {
            bar.set_position(done);
        }
    }

    fn message(&self, msg: &str) {
        if let Some((bar, what)) = &*self.current.lock().unwrap_or_else(|p| p.into_inner()) {
            bar.set_message(format!("{what}: {msg}"));
        }
    }

    fn finish(&self) {
        if let Some((bar, _)) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            bar.finish_and_clear();
        }
    }
}

/// Registers the bars when stderr is a terminal.
pub fn init() {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        pra_core::progress::register(Box::new(Bars {
            current: Mutex::new(None),
        }));
    }
}
