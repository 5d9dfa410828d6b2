//! The CLI contract, kept by tests: the real `celery-janitor` binary's `--help`, human reports,
//! `--json` output and failures (exit codes and messages) are pinned as insta snapshots
//! (`contract/snapshots/`), all run against one fixed keyspace of real captured Celery state in a
//! `redis-server` of the test's own and owner rows in a PostgreSQL database of its own; and
//! docs/cli.md is held against the code and that output (environment variables, config keys, JSON
//! shapes; the exit-code table in `src/exit.rs`).
//!
//! Update snapshots after an intended change with
//! `INSTA_UPDATE=always cargo test -p celery-janitor --test contract` (or `cargo insta review`),
//! then read the diff of `contract/snapshots/` before committing it. `scripts/test` runs with
//! `INSTA_UPDATE=no`: there a changed or missing snapshot fails.

mod docs;
mod errors;
mod help;
mod library;
mod reports;
mod world;

/// Every file in `snapshots/` is one a test asserts: a snapshot left behind by a renamed step or
/// subcommand fails here instead of lingering.
#[test]
fn no_snapshot_is_left_over() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contract/snapshots");
    let mut expected: Vec<String> = vec!["help".to_owned()];
    expected.extend(help::subcommands().iter().map(|c| format!("help_{c}")));
    for (name, _) in reports::STEPS {
        expected.push(format!("human_{name}"));
        expected.push(format!("json_{name}"));
    }
    expected.extend(errors::CASES.iter().map(|c| format!("error_{c}")));
    expected.sort();
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .map(|name| {
            name.strip_suffix(".snap")
                .unwrap_or_else(|| panic!("{name}: not a snapshot (a .snap.new to review?)"))
                .to_owned()
        })
        .collect();
    found.sort();
    assert_eq!(
        found, expected,
        "snapshots/ holds other files than the tests assert"
    );
}
