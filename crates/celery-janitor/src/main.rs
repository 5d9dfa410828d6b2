//! The `celery-janitor` binary: parses the command line, resolves settings, runs one command
//! and turns its outcome into a named exit code. All logic lives in the library crates.

mod cli;
mod commands;
mod exit;
mod logging;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            let code = exit::Code::of(&err);
            // Every layer scrubs what it knows; this is the last net for a driver message that
            // echoed a configured URL.
            eprintln!(
                "celery-janitor: error: {}",
                commands::scrub(&exit::one_line(&err))
            );
            if let Some(hint) = exit::hint(&err) {
                eprintln!("  hint: {hint}");
            }
            code
        }
    };
    code.into()
}
