//! docs/cli.md held against the code: the command table and global flags against `--help`, the
//! environment-variable table against `janitor_config::env::ALL`, the TOML example against the
//! keys the config parser accepts, the JSON examples against the key structure of the real
//! `--json` output (see `reports.rs`), and the `[env: …]` hints of `--help` against the registry.
//! (The exit-code table is checked in `src/exit.rs`, where the codes are.)

use std::collections::{BTreeMap, BTreeSet};

use janitor_testkit::docs::{code_blocks, code_spans, table, CodeBlock, Doc, Shape};
use serde_json::Value;

use crate::reports::JsonRuns;

#[test]
fn the_environment_table_is_the_env_registry() {
    let doc = Doc::cli();
    let documented: Vec<String> = table(doc.section("## Environment variables"))
        .iter()
        .flat_map(|row| code_spans(&row[0]))
        .collect();
    assert_eq!(
        documented,
        janitor_config::env::ALL,
        "docs/cli.md's environment variables differ from janitor_config::env::ALL"
    );
}

/// The TOML example, with its commented-out keys (`# broker_url = …`) taken in.
fn toml_example() -> String {
    let doc = Doc::cli();
    let blocks: Vec<CodeBlock> = code_blocks(doc.section("## Configuration"))
        .into_iter()
        .filter(|b| b.lang == "toml")
        .collect();
    assert_eq!(blocks.len(), 1, "one TOML example in ## Configuration");
    blocks[0]
        .code
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_key_line(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_key_line(text: &str) -> bool {
    text.split_once(" = ").is_some_and(|(key, _)| {
        !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    })
}

#[test]
fn the_toml_example_has_every_config_key_and_no_other() {
    let text = toml_example();
    // Every key of the example is one the parser accepts (it rejects unknown keys) …
    janitor_config::parse_file(&text)
        .unwrap_or_else(|e| panic!("docs/cli.md's TOML example does not parse: {e}\n{text}"));
    // … and every key it accepts is in the example.
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[') {
            section = name.trim_matches(|c| c == '[' || c == ']').to_owned();
            documented.entry(section.clone()).or_default();
        } else if let Some((key, _)) = line.split_once(" = ").filter(|_| is_key_line(line)) {
            documented
                .entry(section.clone())
                .or_default()
                .insert(key.to_owned());
        }
    }
    let accepted: BTreeMap<String, BTreeSet<String>> = janitor_config::file_keys()
        .into_iter()
        .map(|(s, keys)| (s.to_owned(), keys.iter().map(|k| k.to_string()).collect()))
        .collect();
    assert_eq!(
        documented, accepted,
        "docs/cli.md's TOML example differs from the keys the config file accepts"
    );
}

/// The command each JSON example of docs/cli.md documents, from the line above it
/// (`` `status --json`: ``), with the example.
fn json_examples() -> Vec<(String, Value)> {
    let doc = Doc::cli();
    code_blocks(&doc.text)
        .into_iter()
        .filter(|b| b.lang == "json")
        .map(|b| {
            let command = b
                .intro
                .strip_prefix('`')
                .and_then(|s| s.split_once(" --json`"))
                .map(|(c, _)| c.to_owned())
                .unwrap_or_else(|| {
                    panic!("a JSON example must follow a line naming `COMMAND --json`: {b:?}")
                });
            let value = serde_json::from_str(&b.code).unwrap_or_else(|e| {
                panic!(
                    "the `{command} --json` example is not JSON ({e}):\n{}",
                    b.code
                )
            });
            (command, value)
        })
        .collect()
}

/// Objects whose keys are data (table names), not field names.
const DATA_KEYED: [&str; 2] = ["lost_rows.by_table", "lost_rows.skipped_tables"];

/// Objects that are `null` when there is nothing to say (`revoke`: no revoke was sent;
/// `owner`: an archived entry of no owner row; the `revoke` command's parts that `--undo` or a
/// held lock leave out).
const NULLABLE: [&str; 8] = [
    "revoke",
    "orphans.revoke",
    "items.owner",
    "removal.revoke",
    "broadcast",
    "removal",
    "removal_skipped",
    "ttl_days",
];

/// The commands with `--json`, in the order of their examples.
const JSON_COMMANDS: [&str; 9] = [
    "status",
    "tasks",
    "cleanup-orphaned",
    "full-cleanup",
    "restore",
    "purge-queue",
    "archive",
    "runs",
    "revoke",
];

/// The commands whose `--json` is an array of the documented object.
const ARRAYS: [&str; 2] = ["tasks", "runs"];

#[test]
fn every_json_command_has_one_example() {
    let documented: Vec<String> = json_examples().into_iter().map(|(c, _)| c).collect();
    assert_eq!(documented, JSON_COMMANDS);
}

/// Each JSON example has exactly the key structure of every real output of its command in the
/// sequence, dry run or not (`tasks --json`: of each element of its array).
pub(crate) fn assert_json_examples_match(outputs: &JsonRuns) {
    let mut problems = Vec::new();
    for (command, example) in json_examples() {
        let documented = if ARRAYS.contains(&command.as_str()) {
            Shape::Array(Some(Box::new(Shape::of(&example, &DATA_KEYED))))
        } else {
            Shape::of(&example, &DATA_KEYED)
        };
        let runs: Vec<_> = outputs.iter().filter(|r| r.command == command).collect();
        assert!(
            !runs.is_empty(),
            "the sequence never runs `{command} --json`"
        );
        for run in runs {
            let real = Shape::of(&run.stdout, &DATA_KEYED);
            for d in documented.differences(&real, &NULLABLE) {
                problems.push(format!("`{command} --json` ({}): {d}", run.name));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/cli.md's JSON examples differ from the output:\n{}",
        problems.join("\n")
    );
}

#[test]
fn help_names_only_registered_environment_variables() {
    let mut runs = vec![crate::help::help(&[])];
    for name in crate::help::subcommands() {
        runs.push(crate::help::help(&[&name]));
    }
    let mut named = BTreeSet::new();
    for run in &runs {
        // clap wraps long help lines, sometimes inside a hint (`[env:\n    NAME]`).
        let text = run.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        for part in text.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            assert!(
                janitor_config::env::ALL.contains(&name.as_str()),
                "`{}` names {name}, which janitor_config::env does not list",
                run.args
            );
            named.insert(name);
        }
    }
    for name in [
        janitor_config::env::CONFIG,
        janitor_config::env::GRACE_SECONDS,
        janitor_config::env::MAX_AGE_HOURS,
    ] {
        assert!(named.contains(name), "no --help names {name}: {named:?}");
    }
}

/// The long flags a `--help` lists under `Options:` (`-q, --quiet` → `--quiet`).
fn help_flags(stdout: &str) -> BTreeSet<String> {
    stdout
        .split_once("Options:\n")
        .expect("--help lists options")
        .1
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| {
            l.split([' ', ','])
                .find(|t| t.starts_with("--"))
                .map(str::to_owned)
        })
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

/// The long flags named in a piece of docs text (`[--run RUN_ID \| --all]` → both).
fn named_flags(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|t| t.starts_with("--") && t.len() > 2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_command_table_and_global_flags_are_the_help() {
    let doc = Doc::cli();
    let commands = doc.section("## Commands");
    let global_line = commands
        .split_once("Global flags:")
        .expect("## Commands names the global flags")
        .1
        .split_once("\n\n")
        .unwrap()
        .0;
    let global = help_flags(&crate::help::help(&[]).stdout);
    assert_eq!(
        named_flags(global_line),
        global,
        "docs/cli.md's global flags differ from --help"
    );
    let mut documented = Vec::new();
    for row in table(commands) {
        let usage = code_spans(&row[0]).join(" ");
        let name = usage.split_whitespace().next().unwrap().to_owned();
        let own: BTreeSet<String> = help_flags(&crate::help::help(&[&name]).stdout)
            .difference(&global)
            .cloned()
            .collect();
        assert_eq!(
            named_flags(&usage),
            own,
            "docs/cli.md's `{name}` row differs from `{name} --help`"
        );
        documented.push(name);
    }
    assert_eq!(documented, crate::help::subcommands());
}
