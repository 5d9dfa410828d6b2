//! The CLI contract, kept by tests: the real `celery-janitor` binary's `--help`, human reports
//! and `--json` output are pinned as insta snapshots (`contract/snapshots/`), all run against one
//! fixed keyspace of real captured Celery state in a `redis-server` of the test's own and owner
//! rows in a PostgreSQL database of its own; and docs/cli.md is held against the code and that
//! output (environment variables, config keys, JSON shapes; the exit codes in `src/exit.rs`).
//!
//! Update snapshots after an intended change with
//! `INSTA_UPDATE=always cargo test -p celery-janitor --test contract` (or `cargo insta review`),
//! then read the diff of `contract/snapshots/` before committing it. `scripts/test` runs with
//! `INSTA_UPDATE=no`: there a changed or missing snapshot fails.

mod docs;
mod help;
mod reports;
mod world;
