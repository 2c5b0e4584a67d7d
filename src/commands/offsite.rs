//! The `--remote` side of `pra backup`, `pra backups`, `pra verify`, `pra restore` and `pra
//! prune`: the configured offsite target, through pra-core's offsite rules.

use pra_core::backup::BackupEntry;
use pra_core::backup::offsite::{self, Offsite, RemoteEntry};
use pra_core::backup::restore::{self, RestorePoint};
use pra_core::backup::retention::Policy;
use pra_core::{Error, SystemClock};

use super::Out;
use crate::config::Config;
use crate::exit;

/// Opens the configured target; an error when none is configured.
fn target(
    cfg: &Config,
) -> Result<(Box<dyn offsite::RemoteTarget>, &crate::config::Offsite), Error> {
    let o = cfg.offsite.as_ref().ok_or_else(|| {
        Error::InvalidArgument("no offsite target: set backup_target (or PRA_BACKUP_TARGET)".into())
    })?;
    let pending = cfg.backup_dir.join(".offsite").join("uploads");
    Ok((offsite::open(&o.target, &o.s3, Some(&pending))?, o))
}

/// The staging directory downloads are verified in before anything uses them.
fn staging(cfg: &Config) -> std::path::PathBuf {
    cfg.backup_dir.join(".offsite")
}

/// Checks, before a backup is taken for upload, that the key can be used and this is the
/// active site.
pub fn preflight(cfg: &Config) -> Result<(), Error> {
    let (_, o) = target(cfg)?;
    o.encryption.validate()?;
    offsite::active_token(cfg.open_store()?.as_ref(), &cfg.this_site()?).map(drop)
}

/// Uploads `entry` under this site's fencing token (refused on a standby site).
pub fn upload(cfg: &Config, out: &Out, entry: &BackupEntry) -> Result<u8, Error> {
    let (t, o) = target(cfg)?;
    // Checked before the store is even asked: a configured key that cannot be used is an error.
    o.encryption.validate()?;
    let store = cfg.open_store()?;
    let site = cfg.this_site()?;
    let off = Offsite {
        target: t.as_ref(),
        encryption: &o.encryption,
    };
    let r = off.upload(store.as_ref(), &site, entry, &SystemClock)?;
    out.print(&r, || {
        format!(
            "uploaded {} to {}/{}  {} bytes  token {}{}",
            r.name,
            o.target,
            r.manifest.key,
            r.manifest.object_size,
            r.manifest.token,
            if r.manifest.encrypted {
                format!("  encrypted to {}", r.manifest.recipients.join(", "))
            } else {
                "  NOT encrypted".into()
            }
        )
    })?;
    Ok(exit::OK)
}

/// The target's backups, best first.
pub fn listing(cfg: &Config) -> Result<Vec<RemoteEntry>, Error> {
    let (t, o) = target(cfg)?;
    Offsite {
        target: t.as_ref(),
        encryption: &o.encryption,
    }
    .list()
}

/// `pra backups --remote`.
pub fn list(cfg: &Config, out: &Out) -> Result<u8, Error> {
    let list = listing(cfg)?;
    let o = cfg.offsite.as_ref().expect("listing checked it");
    out.print(&list, || {
        if list.is_empty() {
            return format!("no backups at {}", o.target);
        }
        list.iter().map(line).collect()
    })?;
    Ok(exit::OK)
}

fn line(e: &RemoteEntry) -> String {
    let m = &e.manifest;
    format!(
        "{:<36} token {:<6} {:<8} {}  {:>12}  {}  {}\n",
        e.name,
        m.token.0,
        m.site,
        m.backup.created_at.format("%Y-%m-%d %H:%M:%S"),
        m.object_size,
        if m.encrypted {
            format!("encrypted ({})", m.recipients.join(", "))
        } else {
            "plaintext".into()
        },
        match &e.verification {
            None => "not verified at the target".to_string(),
            Some(v) if v.ok => format!("verified {}", v.at.format("%Y-%m-%d %H:%M:%S")),
            Some(v) => format!(
                "FAILED verification {}: {}",
                v.at.format("%Y-%m-%d %H:%M:%S"),
                v.detail
            ),
        }
    )
}

/// `pra verify --remote [--sample N]`: exit code 1 (corrupt) if any failed.
pub fn verify(cfg: &Config, out: &Out, sample: Option<usize>) -> Result<u8, Error> {
    let (t, o) = target(cfg)?;
    let off = Offsite {
        target: t.as_ref(),
        encryption: &o.encryption,
    };
    let results = off.verify(&staging(cfg), sample, &SystemClock)?;
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, v)| !v.ok)
        .map(|(e, v)| format!("{}: {}", e.manifest.key, v.detail))
        .collect();
    out.print(&results, || {
        results
            .iter()
            .map(|(e, v)| {
                format!(
                    "{:<36} {}\n",
                    e.manifest.key,
                    if v.ok {
                        "ok".to_string()
                    } else {
                        format!("FAILED: {}", v.detail)
                    }
                )
            })
            .collect()
    })?;
    if failed.is_empty() {
        Ok(exit::OK)
    } else {
        Err(Error::Corrupt {
            what: format!("offsite backups at {}", o.target),
            detail: failed.join("; "),
        })
    }
}

/// `pra restore --remote`.
pub fn restore(
    cfg: &Config,
    out: &Out,
    point: &RestorePoint,
    opts: restore::Options,
) -> Result<u8, Error> {
    let (t, o) = target(cfg)?;
    let off = Offsite {
        target: t.as_ref(),
        encryption: &o.encryption,
    };
    let r = off.restore(&cfg.db, &staging(cfg), point, opts, &SystemClock)?;
    out.print(&r, || super::backup::restored(&r, Some(&o.target), &cfg.db))?;
    Ok(exit::OK)
}

/// `pra prune --remote`.
pub fn prune(
    cfg: &Config,
    policy: &Policy,
    dry_run: bool,
) -> Result<Vec<pra_core::backup::retention::Decision>, Error> {
    let (t, o) = target(cfg)?;
    Offsite {
        target: t.as_ref(),
        encryption: &o.encryption,
    }
    .prune(policy, dry_run)
}
