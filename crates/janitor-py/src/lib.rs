//! `celery_janitor._native`: the celery-janitor CLI compiled into a Python extension module, so
//! the Python package runs the same Rust core as the binary (maturin can't ship a binary and an
//! extension in one wheel). Two entry points: `main(argv)`, the whole CLI, for the console script
//! and `python -m celery_janitor`; `run_json(argv)`, one `--json` command whose output comes back
//! as a string, for the Python API. A failure is raised as `JanitorError`.
//!
//! Importing the module does nothing but define it: no connection, thread or runtime. Each call
//! builds its own runtime and drops it before returning, so nothing native outlives a call (and
//! nothing is inherited by a fork). The GIL is released while a command runs; the calling thread
//! wakes every 100 ms to let Python see Ctrl-C, which asks the command to stop at its next safe
//! point (a cleanup between batches), as the binary does.

mod guard;

use std::ffi::OsString;
use std::sync::mpsc;
use std::time::Duration;

use celery_janitor::{Cancel, Failure, Host};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};

/// `JanitorError(message, code=1, hint=None, kind="failed")`: the one exception of the package.
/// Written in Python so that it has a real signature, a `str()` that is the message, and pickles
/// (its `args` are its constructor's arguments); its class-level defaults make the attributes
/// visible on the class too (for stub checks).
const JANITOR_ERROR: &std::ffi::CStr = cr#"
class JanitorError(Exception):
    """A celery-janitor command failed.

    ``kind`` names the failure: usage, config, bad_cursor, redis_unreachable,
    database_unreachable, busy, interrupted or failed. ``code`` is the exit code the CLI
    would have ended with, ``hint`` what to do about it (or None).
    """

    __module__ = "celery_janitor._native"
    message = ""
    code = 1
    hint = None
    kind = "failed"

    def __init__(self, message, code=1, hint=None, kind="failed"):
        super().__init__(message, code, hint, kind)
        self.message = message
        self.code = code
        self.hint = hint
        self.kind = kind

    def __str__(self):
        return self.message
"#;

/// The `JanitorError` class of this interpreter's `_native` module.
fn janitor_error(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    let module = py.import("celery_janitor._native")?;
    Ok(module.getattr("JanitorError")?.cast_into::<PyType>()?)
}

/// The one place a [`Failure`] becomes a Python exception.
pub(crate) fn to_py_err(py: Python<'_>, failure: Failure) -> PyErr {
    let Failure {
        code,
        message,
        hint,
        kind,
    } = failure;
    match janitor_error(py).and_then(|class| class.call1((message, code, hint, kind))) {
        Ok(instance) => PyErr::from_value(instance),
        Err(err) => err,
    }
}

fn os_args(argv: Vec<String>) -> Vec<OsString> {
    argv.into_iter().map(OsString::from).collect()
}

/// Runs `work` on a thread of its own with the GIL released, waking every 100 ms to check for
/// Python signals; a pending one (Ctrl-C's KeyboardInterrupt) cancels the work, which then stops
/// at its next safe point. Returns the work's result and the signal's exception, if any.
fn run_interruptibly<T: Send + 'static>(
    py: Python<'_>,
    work: impl FnOnce(Cancel) -> T + Send + 'static,
) -> PyResult<(T, Option<PyErr>)> {
    let cancel = Cancel::new();
    let (done, result) = mpsc::channel();
    let handle = {
        let cancel = cancel.clone();
        std::thread::Builder::new()
            .name("celery-janitor".to_owned())
            .spawn(move || {
                let _ = done.send(work(cancel));
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start a thread: {e}")))?
    };
    let mut signal = None;
    let mut result = Some(result);
    let value = loop {
        // The receiver is not Sync: it goes into the GIL-free closure and comes back out.
        let receiver = result.take().expect("put back every turn");
        let (receiver, received) = py.detach(move || {
            let received = receiver.recv_timeout(Duration::from_millis(100));
            (receiver, received)
        });
        result = Some(receiver);
        match received {
            Ok(value) => break value,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if signal.is_none() {
                    if let Err(err) = py.check_signals() {
                        cancel.cancel();
                        signal = Some(err);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = handle.join();
                return Err(PyRuntimeError::new_err(
                    "the celery-janitor command panicked",
                ));
            }
        }
    };
    let _ = py.detach(|| handle.join());
    Ok((value, signal))
}

/// Runs the celery-janitor CLI on `argv` (the program name first) and returns its exit code.
/// Prints as the binary does; Ctrl-C stops it as it stops the binary (exit code 130).
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<String>) -> PyResult<i32> {
    let args = os_args(argv);
    let (code, _signal) = run_interruptibly(py, move |cancel| {
        celery_janitor::main_with_cancel(args, Host::Embedded, Some(cancel))
    })?;
    Ok(code)
}

/// Runs one celery-janitor command given `--json` (argv: the program name first) and returns
/// its JSON output. Raises `JanitorError` when the command fails, and KeyboardInterrupt after
/// stopping it on Ctrl-C.
#[pyfunction]
fn run_json(py: Python<'_>, argv: Vec<String>) -> PyResult<String> {
    let args = os_args(argv);
    let (result, signal) = run_interruptibly(py, move |cancel| {
        celery_janitor::run_json_with_cancel(args, Some(cancel))
    })?;
    if let Some(signal) = signal {
        return Err(signal);
    }
    result.map_err(|failure| to_py_err(py, failure))
}

/// [`run_json`] for a Celery app: `app_defaults` (a dict of its `app.conf` values, see
/// `Guard`) fills in what the config is silent about and must agree with what it says.
#[pyfunction]
#[pyo3(signature = (argv, app_defaults=None))]
fn run_json_for_app(
    py: Python<'_>,
    argv: Vec<String>,
    app_defaults: Option<Bound<'_, PyDict>>,
) -> PyResult<String> {
    let app = guard::app_defaults_arg(app_defaults.as_ref())?;
    let args = os_args(argv);
    let (result, signal) = run_interruptibly(py, move |cancel| {
        celery_janitor::run_json_for_app(args, app, Some(cancel))
    })?;
    if let Some(signal) = signal {
        return Err(signal);
    }
    result.map_err(|failure| to_py_err(py, failure))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let namespace = PyDict::new(py);
    namespace.set_item("__name__", "celery_janitor._native")?;
    py.run(JANITOR_ERROR, Some(&namespace), None)?;
    let error = namespace
        .get_item("JanitorError")?
        .ok_or_else(|| PyRuntimeError::new_err("JanitorError was not defined"))?;
    m.add("JanitorError", error)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(run_json, m)?)?;
    m.add_function(wrap_pyfunction!(run_json_for_app, m)?)?;
    m.add_class::<guard::Guard>()?;
    Ok(())
}
