//! pra-py: the `pra._pra` extension module. The Python package `pra` (python/pra/) re-exports it.

use pyo3::prelude::*;

/// The `pra._pra` module.
#[pymodule]
fn _pra(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", pra_core::VERSION)?;
    Ok(())
}
