//! The application log: `logs/app.log` by default, appended, plus standard error with `-v`.
//! It is created 0600 in directories created 0700, like every file the tool writes.
//! A log file that can't be opened is a warning, not a failure: cleanup matters more.

use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

pub(crate) fn init(app_log: &Path, verbose: bool) {
    let filter = || {
        EnvFilter::try_from_env(janitor_config::env::LOG).unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let file = janitor_engine::open_private_append(app_log).ok();
    if file.is_none() {
        eprintln!(
            "celery-janitor: warning: cannot open log file {}; logging to stderr only",
            app_log.display()
        );
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(false);
    let result = match (file, verbose) {
        (Some(f), true) => builder
            .with_writer(Mutex::new(f).and(std::io::stderr))
            .try_init(),
        (Some(f), false) => builder.with_writer(Mutex::new(f)).try_init(),
        (None, _) => builder.with_writer(std::io::stderr).try_init(),
    };
    let _ = result;
}
