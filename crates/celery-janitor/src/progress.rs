//! A terminal progress bar for long scans: shown only on a TTY, never with `--json` or `-q`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use janitor_engine::Progress;

pub(crate) struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    pub(crate) fn new(enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        });
        Bar { bar }
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str, total: Option<u64>) {
        let Some(b) = &self.bar else { return };
        b.reset();
        match total {
            Some(t) => {
                b.set_length(t);
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {msg:<28} [{bar:30}] {pos}/{len} ({eta})",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
            }
            None => {
                b.unset_length();
                b.set_style(
                    ProgressStyle::with_template("{spinner} {msg:<28} {pos} ({per_sec})")
                        .expect("valid template"),
                );
            }
        }
        b.set_message(name.to_owned());
    }

    fn advance(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
