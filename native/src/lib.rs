//! PyO3 glue for the native hot path. Only bindings live here; the work is in the modules.
use pyo3::prelude::*;

#[pymodule]
fn _native(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
