//! `pra status`: the status document the app serves on GET /status, and whether it is failing.

use pra_core::{Error, SystemClock};

use super::Out;
use crate::config::Config;
use crate::exit;

/// Prints the status document; exits [`exit::STATUS_FAILING`] when the database is unavailable,
/// there is no verified backup or the store cannot be read (the document says which).
pub fn status(cfg: &Config, out: &Out) -> Result<u8, Error> {
    let (s, failing) = document(cfg)?;
    out.print(&s, || {
        let mut t = format!(
            "count: {}\nlast backup: {} ({})\nbackups: {}  state: {}\nactive site: {} (token {})\n",
            s.count.map_or("unavailable".into(), |c| c.to_string()),
            s.last_backup_file.as_deref().unwrap_or("none"),
            s.backup_age_seconds
                .map_or("-".into(), |a| format!("{a}s old")),
            s.backup_count,
            s.backup_state.name(),
            s.active_site.as_deref().unwrap_or("unknown"),
            s.token.map_or("-".into(), |t| t.to_string())
        );
        for p in &s.problems {
            t.push_str(&format!("problem: {p}\n"));
        }
        t
    })?;
    Ok(if failing {
        exit::STATUS_FAILING
    } else {
        exit::OK
    })
}

/// The status document and whether it is failing (the database unavailable, no verified
/// backup, the store unreadable): what `pra status` prints and `pra serve` answers on /status.
pub fn document(cfg: &Config) -> Result<(pra_core::status::Status, bool), Error> {
    let (store, store_error) = match cfg.open_store() {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e)),
    };
    let opts = pra_core::status::Options {
        table: cfg.table.clone(),
        backup_interval: cfg.backup_interval,
        missed_intervals: cfg.missed_intervals,
        ..Default::default()
    };
    let mut s = pra_core::status::status(
        &cfg.db,
        &cfg.backup_dir,
        &opts,
        store.as_deref(),
        &SystemClock,
    )?;
    if let Some(e) = &store_error {
        s.problems.push(format!("store: {e}"));
    }
    // A store that opened but could not be read left `active_site` empty ("none" when no site
    // is active).
    let store_unreadable = store_error.is_some() || s.active_site.is_none();
    let failing =
        !s.database_ok || s.backup_state == pra_core::status::BackupState::None || store_unreadable;
    Ok((s, failing))
}
