//! `--help` of the binary and of every subcommand, pinned: flag names, value names, defaults
//! and the `[env: …]` hints are part of the contract.

use crate::world::{common_filters, insta_settings, run_bin, Run};

/// The subcommands `--help` lists (clap's own `help` aside).
pub(crate) fn subcommands() -> Vec<String> {
    let top = help(&[]);
    let commands = top
        .stdout
        .split_once("Commands:\n")
        .expect("--help lists the commands")
        .1;
    let names: Vec<String> = commands
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 6, "{names:?}");
    names
}

/// `celery-janitor [COMMAND] --help`.
pub(crate) fn help(command: &[&str]) -> Run {
    let mut args = command.to_vec();
    args.push("--help");
    let run = run_bin(&args, &std::env::temp_dir());
    assert_eq!(run.code, 0, "{}", run.render());
    run
}

#[test]
fn help_of_the_binary_and_of_every_subcommand() {
    let settings = insta_settings(&common_filters());
    let _guard = settings.bind_to_scope();
    insta::assert_snapshot!("help", help(&[]).render());
    for name in subcommands() {
        insta::assert_snapshot!(format!("help_{name}"), help(&[&name]).render());
    }
}
