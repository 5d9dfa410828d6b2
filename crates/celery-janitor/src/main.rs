//! The `celery-janitor` binary: the CLI of the library crate, run as this process.

fn main() -> std::process::ExitCode {
    let args = std::env::args_os().collect();
    let code = celery_janitor::main_with_args(args, celery_janitor::Host::Process);
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
