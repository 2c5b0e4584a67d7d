//! Conversions between pra-core's values and Python's: JSON documents to Python objects (time
//! keys to aware datetimes), and seconds given as floats to durations.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::InternalError;

/// serde_json value -> Python object (dict, list, str, int, float, bool, None); the values of
/// time keys (`at`, `*_at`) that hold RFC 3339 strings become timezone-aware datetimes.
pub fn to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    to_py_keyed(py, v, "")
}

fn is_time_key(key: &str) -> bool {
    key == "at" || key.ends_with("_at")
}

fn to_py_keyed(py: Python<'_>, v: &serde_json::Value, key: &str) -> PyResult<Py<PyAny>> {
    if let (true, serde_json::Value::String(s)) = (is_time_key(key), v)
        && let Ok(t) = DateTime::parse_from_rfc3339(s)
    {
        return t.with_timezone(&Utc).into_py_any(py);
    }
    Ok(match v {
        serde_json::Value::Null => py.None(),
        serde_json::Value::Bool(b) => b.into_py_any(py)?,
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_py_any(py)?,
            (None, Some(u)) => u.into_py_any(py)?,
            (None, None) => n.as_f64().unwrap_or(f64::NAN).into_py_any(py)?,
        },
        serde_json::Value::String(s) => s.into_py_any(py)?,
        serde_json::Value::Array(a) => {
            let l = PyList::empty(py);
            for x in a {
                l.append(to_py_keyed(py, x, key)?)?;
            }
            l.into_any().unbind()
        }
        serde_json::Value::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, to_py_keyed(py, x, k)?)?;
            }
            d.into_any().unbind()
        }
    })
}

pub fn json_of<T: serde::Serialize>(py: Python<'_>, v: &T) -> PyResult<Py<PyAny>> {
    let value = serde_json::to_value(v).map_err(|e| InternalError::new_err(e.to_string()))?;
    to_py(py, &value)
}

/// `v` seconds as a duration, or `InvalidArgument`: "`what` must be a finite number of seconds
/// `rule`, not `v`".
pub fn seconds(v: f64, what: &str, rule: &str) -> pra_core::Result<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        pra_core::Error::InvalidArgument(format!(
            "{what} must be a finite number of seconds {rule}, not {v}"
        ))
    })
}

/// The name serde gives a unit variant (`BackupState::Ok` -> "ok"): the one spelling of JSON.
pub fn serde_name<T: serde::Serialize>(v: &T) -> PyResult<String> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        Ok(other) => Err(InternalError::new_err(format!("not a name: {other}"))),
        Err(e) => Err(InternalError::new_err(e.to_string())),
    }
}
