//! pra-py: the `pra._pra` extension module; the Python package `pra` (python/pra/) re-exports it.
//!
//! Thin: every function converts its arguments ([`convert`]), runs pra-core inside
//! [`errors::blocking`] (GIL released), and converts the answer. Errors go through the one
//! `From<PraErr> for PyErr` ([`errors`]), which maps each core error kind to its exception class
//! (all subclasses of `pra.PraError`). [`store`]: the record, guards and runs; [`backup`]:
//! backups, retention, restore and status.

use pyo3::prelude::*;

mod backup;
mod convert;
mod dbfence;
mod errors;
mod store;

/// The `pra._pra` module.
#[pymodule]
fn _pra(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", pra_core::VERSION)?;
    // pra-core's defaults, for the test that keeps the Python signatures' literals equal to them.
    let defaults = pyo3::types::PyDict::new(m.py());
    defaults.set_item("table", pra_core::defaults::TABLE)?;
    defaults.set_item(
        "backup_interval",
        pra_core::defaults::BACKUP_INTERVAL.as_secs(),
    )?;
    defaults.set_item("timeout", pra_core::defaults::STORE_TIMEOUT.as_secs_f64())?;
    defaults.set_item("lost_after", pra_core::defaults::LOST_AFTER.as_secs_f64())?;
    m.setattr("_DEFAULTS", defaults)?;
    errors::register(m)?;
    store::register(m)?;
    backup::register(m)?;
    dbfence::register(m)?;
    Ok(())
}
